//! `/metrics` (Prometheus text) and `/healthz`, `/readyz`, each on its own port as Karpenter serves them.

use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use dovetail::metrics::{self as m, MetricKind, Metrics};

/// Reads the controller's metrics at each scrape.
#[derive(Debug)]
struct ControllerCollector(Arc<Metrics>);

impl Collector for ControllerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for def in m::DEFINITIONS {
            let series = self.0.series(*def);
            if series.is_empty() {
                continue;
            }
            // The text encoder appends `_total` to counters itself.
            let (name, kind) = match def.kind {
                MetricKind::Counter => (
                    def.name.strip_suffix("_total").unwrap_or(def.name),
                    MetricType::Counter,
                ),
                MetricKind::Gauge => (def.name, MetricType::Gauge),
            };
            let mut metric = encoder.encode_descriptor(name, def.help, None, kind)?;
            // A metric without labels is written bare (`name 3`), not with empty braces.
            if let [(labels, value)] = series.as_slice()
                && labels.is_empty()
            {
                encode_value(def.kind, *value, metric)?;
                continue;
            }
            for (labels, value) in &series {
                encode_value(def.kind, *value, metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// One sample: counters are whole counts, gauges may be fractional (cores of a pool's usage).
fn encode_value(
    kind: MetricKind,
    value: f64,
    encoder: MetricEncoder,
) -> Result<(), std::fmt::Error> {
    match kind {
        MetricKind::Counter => ConstCounter::new(value as u64).encode(encoder),
        MetricKind::Gauge => ConstGauge::new(value).encode(encoder),
    }
}

/// The scrape registry: the controller's metrics plus whatever the adapters record.
pub fn registry(metrics: Arc<Metrics>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ControllerCollector(metrics)));
    registry
}

/// The exposition text of a registry.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

pub fn metrics_router(registry: Arc<Registry>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let registry = registry.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(&registry),
                )
            }
        }),
    )
}

/// Ready unless this replica leads and has lost its view of the cluster: a follower is ready to take over.
pub fn ready(metrics: &Metrics) -> bool {
    let leading = metrics.series(m::LEADER).iter().any(|(_, v)| *v > 0.0);
    let synced = metrics.get(m::CLUSTER_SYNCED, &[]) == Some(1.0);
    !leading || synced
}

pub fn health_router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    if ready(&metrics) {
                        (StatusCode::OK, "ok").into_response()
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "leading, but the cluster state is not synced",
                        )
                            .into_response()
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_karpenter_names_and_types() {
        let metrics = Arc::new(Metrics::default());
        metrics.inc(
            m::NODECLAIMS_CREATED,
            &[("nodepool", "default"), ("reason", "provisioning")],
        );
        metrics.set(m::CLUSTER_NODES, &[], 3.0);
        let text = render(&registry(metrics));
        assert!(
            text.contains("# TYPE karpenter_nodeclaims_created counter"),
            "{text}"
        );
        assert!(
            text.contains(
                "karpenter_nodeclaims_created_total{nodepool=\"default\",reason=\"provisioning\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("karpenter_cluster_state_node_count 3"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_leader_without_its_watches_is_not_ready() {
        let metrics = Metrics::default();
        assert!(
            ready(&metrics),
            "a replica that has not started leading is ready"
        );
        metrics.set(m::LEADER, &[("name", "l")], 1.0);
        assert!(!ready(&metrics));
        metrics.set(m::CLUSTER_SYNCED, &[], 1.0);
        assert!(ready(&metrics));
    }
}
