//! Karpenter's status-condition metrics (`operator_<kind>_status_condition_*` and the older
//! `operator_status_condition_*`) for NodeClaims, NodePools, EC2NodeClasses, Nodes and CapacityBuffers,
//! rebuilt from the cluster state with the other state gauges.

use std::collections::BTreeMap;

use jiff::Timestamp;

use crate::metrics::{self as m, Labels, MetricDef, Metrics};
use crate::state::ClusterState;

/// One kind's metrics and labels, as Karpenter registers its status controller for it.
struct KindMetrics {
    group: &'static str,
    kind: &'static str,
    count: MetricDef,
    seconds: MetricDef,
    transitions: MetricDef,
    /// Whether the older `operator_status_condition_*` series are kept too (not for Nodes).
    older: bool,
    /// Object labels copied onto the series: (Prometheus name, label key).
    extra: &'static [(&'static str, &'static str)],
}

/// The node class and pool labels Karpenter adds to the NodeClaim and Node series.
const CLAIM_LABELS: &[(&str, &str)] = &[
    (
        "karpenter_k8s_aws_ec2nodeclass",
        "karpenter.k8s.aws/ec2nodeclass",
    ),
    ("karpenter_sh_nodepool", crate::crds::labels::NODEPOOL),
];
const NODE_LABELS: &[(&str, &str)] = &[
    (
        "karpenter_k8s_aws_ec2nodeclass",
        "karpenter.k8s.aws/ec2nodeclass",
    ),
    ("karpenter_sh_nodepool", crate::crds::labels::NODEPOOL),
    ("karpenter_sh_initialized", "karpenter.sh/initialized"),
];

const NODECLAIM: KindMetrics = KindMetrics {
    group: "karpenter.sh",
    kind: "NodeClaim",
    count: m::NODECLAIM_CONDITION_COUNT,
    seconds: m::NODECLAIM_CONDITION_SECONDS,
    transitions: m::NODECLAIM_CONDITION_TRANSITIONS,
    older: true,
    extra: CLAIM_LABELS,
};
const NODEPOOL: KindMetrics = KindMetrics {
    group: "karpenter.sh",
    kind: "NodePool",
    count: m::NODEPOOL_CONDITION_COUNT,
    seconds: m::NODEPOOL_CONDITION_SECONDS,
    transitions: m::NODEPOOL_CONDITION_TRANSITIONS,
    older: true,
    extra: &[],
};
const EC2NODECLASS: KindMetrics = KindMetrics {
    group: "karpenter.k8s.aws",
    kind: "EC2NodeClass",
    count: m::EC2NODECLASS_CONDITION_COUNT,
    seconds: m::EC2NODECLASS_CONDITION_SECONDS,
    transitions: m::EC2NODECLASS_CONDITION_TRANSITIONS,
    older: true,
    extra: &[],
};
const NODE: KindMetrics = KindMetrics {
    group: "",
    kind: "Node",
    count: m::NODE_CONDITION_COUNT,
    seconds: m::NODE_CONDITION_SECONDS,
    transitions: m::NODE_CONDITION_TRANSITIONS,
    older: false,
    extra: NODE_LABELS,
};
const CAPACITYBUFFER: KindMetrics = KindMetrics {
    group: "autoscaling.x-k8s.io",
    kind: "CapacityBuffer",
    count: m::CAPACITYBUFFER_CONDITION_COUNT,
    seconds: m::CAPACITYBUFFER_CONDITION_SECONDS,
    transitions: m::CAPACITYBUFFER_CONDITION_TRANSITIONS,
    older: true,
    extra: &[],
};
const KINDS: [&KindMetrics; 5] = [&NODECLAIM, &NODEPOOL, &EC2NODECLASS, &NODE, &CAPACITYBUFFER];

/// One condition as the metrics need it.
struct Cond {
    type_: String,
    status: String,
    reason: String,
    since: Option<Timestamp>,
}

/// One object with conditions.
struct Object<'a> {
    kind: &'static KindMetrics,
    namespace: String,
    name: String,
    labels: Option<&'a BTreeMap<String, String>>,
    conditions: Vec<Cond>,
}

fn crd_conditions(conditions: &[crate::crds::Condition]) -> Vec<Cond> {
    conditions
        .iter()
        .map(|c| Cond {
            type_: c.type_.clone(),
            status: c.status.clone(),
            reason: c.reason.clone().unwrap_or_default(),
            since: c
                .last_transition_time
                .as_deref()
                .and_then(|t| t.parse().ok()),
        })
        .collect()
}

fn objects(state: &ClusterState) -> Vec<Object<'_>> {
    let mut out = Vec::new();
    let crd = |kind, namespace: &str, name: &str, labels, conditions: Option<&Vec<_>>| Object {
        kind,
        namespace: namespace.to_string(),
        name: name.to_string(),
        labels,
        conditions: conditions.map(|c| crd_conditions(c)).unwrap_or_default(),
    };
    for (name, c) in &state.nodeclaims {
        let conditions = c.status.as_ref().map(|s| &s.conditions);
        out.push(crd(
            &NODECLAIM,
            "",
            name,
            c.metadata.labels.as_ref(),
            conditions,
        ));
    }
    for (name, p) in &state.nodepools {
        let conditions = p.status.as_ref().map(|s| &s.conditions);
        out.push(crd(
            &NODEPOOL,
            "",
            name,
            p.metadata.labels.as_ref(),
            conditions,
        ));
    }
    for (name, c) in &state.nodeclasses {
        let conditions = c.status.as_ref().map(|s| &s.conditions);
        out.push(crd(
            &EC2NODECLASS,
            "",
            name,
            c.metadata.labels.as_ref(),
            conditions,
        ));
    }
    for (key, b) in &state.capacitybuffers {
        let conditions = b.status.as_ref().map(|s| &s.conditions);
        out.push(crd(
            &CAPACITYBUFFER,
            &key.namespace,
            &key.name,
            b.metadata.labels.as_ref(),
            conditions,
        ));
    }
    for (name, n) in &state.nodes {
        let conditions = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .map(|c| Cond {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone().unwrap_or_default(),
                since: c.last_transition_time.as_ref().map(|t| t.0),
            })
            .collect();
        out.push(Object {
            kind: &NODE,
            namespace: String::new(),
            name: name.clone(),
            labels: n.metadata.labels.as_ref(),
            conditions,
        });
    }
    out
}

/// What the last pass saw, so transitions can be counted: object -> condition type -> status.
#[derive(Debug, Default)]
pub(crate) struct ConditionMetrics {
    observed: BTreeMap<(&'static str, String, String), BTreeMap<String, String>>,
}

impl ConditionMetrics {
    /// Rebuild the count and current-status gauges (an object gone takes its series with it) and count
    /// every condition whose status changed since the last pass, or that is new — as Karpenter's status
    /// controller does, a condition seen for the first time counts as a transition.
    pub(crate) fn publish(&mut self, metrics: &Metrics, state: &ClusterState, now: Timestamp) {
        let mut gauges: BTreeMap<&'static str, (MetricDef, BTreeMap<Labels, f64>)> =
            BTreeMap::new();
        for k in KINDS {
            gauges.insert(k.count.name, (k.count, BTreeMap::new()));
            gauges.insert(k.seconds.name, (k.seconds, BTreeMap::new()));
        }
        gauges.insert(
            m::CONDITION_COUNT.name,
            (m::CONDITION_COUNT, BTreeMap::new()),
        );
        gauges.insert(
            m::CONDITION_SECONDS.name,
            (m::CONDITION_SECONDS, BTreeMap::new()),
        );
        let mut observed = BTreeMap::new();
        for o in objects(state) {
            let k = o.kind;
            let extra: Vec<(&'static str, &str)> = k
                .extra
                .iter()
                .map(|(prom, key)| {
                    let v = o
                        .labels
                        .and_then(|l| l.get(*key))
                        .map_or("", String::as_str);
                    (*prom, v)
                })
                .collect();
            let before = self
                .observed
                .get(&(k.kind, o.namespace.clone(), o.name.clone()));
            let mut seen = BTreeMap::new();
            for c in &o.conditions {
                let seconds = c
                    .since
                    .map_or(0.0, |t| now.duration_since(t).as_secs_f64().max(0.0));
                let mut series = vec![
                    ("namespace", o.namespace.as_str()),
                    ("name", o.name.as_str()),
                    ("type", c.type_.as_str()),
                    ("status", c.status.as_str()),
                    ("reason", c.reason.as_str()),
                ];
                series.extend(extra.iter().copied());
                let mut older = vec![
                    ("namespace", o.namespace.as_str()),
                    ("name", o.name.as_str()),
                    ("group", k.group),
                    ("kind", k.kind),
                    ("type", c.type_.as_str()),
                    ("status", c.status.as_str()),
                    ("reason", c.reason.as_str()),
                ];
                let mut put = |def: MetricDef, pairs: &[(&'static str, &str)], v: f64| {
                    if let Some((_, s)) = gauges.get_mut(def.name) {
                        s.insert(m::labels(pairs), v);
                    }
                };
                put(k.count, &series, 1.0);
                put(k.seconds, &series, seconds);
                if k.older {
                    put(m::CONDITION_COUNT, &older, 1.0);
                    put(m::CONDITION_SECONDS, &older, seconds);
                }
                if before.and_then(|b| b.get(&c.type_)) != Some(&c.status) {
                    // Transitions are counted per kind and type, not per object.
                    series.drain(..2);
                    metrics.inc(k.transitions, &series);
                    if k.older {
                        older.drain(..2);
                        metrics.inc(m::CONDITION_TRANSITIONS, &older);
                    }
                }
                seen.insert(c.type_.clone(), c.status.clone());
            }
            observed.insert((k.kind, o.namespace, o.name), seen);
        }
        self.observed = observed;
        for (_, (def, series)) in gauges {
            metrics.replace(def, series);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube::{Kind, WatchEvent};
    use serde_json::json;

    fn pool(ready: &str, reason: &str) -> serde_json::Value {
        json!({
            "apiVersion": "karpenter.sh/v1", "kind": "NodePool",
            "metadata": {"name": "default"},
            "spec": {"template": {"spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}, "requirements": []}}},
            "status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason, "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
        })
    }

    #[test]
    fn series_follow_the_conditions_and_transitions_are_counted_once()
    -> Result<(), Box<dyn std::error::Error>> {
        let metrics = Metrics::default();
        let mut state = ClusterState::default();
        let mut cm = ConditionMetrics::default();
        let now: Timestamp = "2026-01-01T00:01:30Z".parse()?;
        state.apply_event(
            Kind::NodePool,
            WatchEvent::Added(pool("False", "NodeClassNotReady")),
        )?;
        cm.publish(&metrics, &state, now);
        cm.publish(&metrics, &state, now);
        let series = [
            ("name", "default"),
            ("namespace", ""),
            ("reason", "NodeClassNotReady"),
            ("status", "False"),
            ("type", "Ready"),
        ];
        assert_eq!(metrics.get(m::NODEPOOL_CONDITION_COUNT, &series), Some(1.0));
        assert_eq!(
            metrics.get(m::NODEPOOL_CONDITION_SECONDS, &series),
            Some(90.0)
        );
        let mut older = series.to_vec();
        older.extend([("group", "karpenter.sh"), ("kind", "NodePool")]);
        assert_eq!(metrics.get(m::CONDITION_COUNT, &older), Some(1.0));
        let transition = [
            ("reason", "NodeClassNotReady"),
            ("status", "False"),
            ("type", "Ready"),
        ];
        assert_eq!(
            metrics.get(m::NODEPOOL_CONDITION_TRANSITIONS, &transition),
            Some(1.0),
            "seen twice, counted once"
        );

        // Ready: the False series is gone, the True one is there, and the transition counted.
        state.apply_event(Kind::NodePool, WatchEvent::Modified(pool("True", "Ready")))?;
        cm.publish(&metrics, &state, now);
        assert_eq!(metrics.get(m::NODEPOOL_CONDITION_COUNT, &series), None);
        let ready = [
            ("name", "default"),
            ("namespace", ""),
            ("reason", "Ready"),
            ("status", "True"),
            ("type", "Ready"),
        ];
        assert_eq!(metrics.get(m::NODEPOOL_CONDITION_COUNT, &ready), Some(1.0));
        assert_eq!(
            metrics.get(
                m::NODEPOOL_CONDITION_TRANSITIONS,
                &[("reason", "Ready"), ("status", "True"), ("type", "Ready")]
            ),
            Some(1.0)
        );

        // Deleted: no series left.
        state.apply_event(Kind::NodePool, WatchEvent::Deleted(pool("True", "Ready")))?;
        cm.publish(&metrics, &state, now);
        assert!(metrics.series(m::NODEPOOL_CONDITION_COUNT).is_empty());
        assert!(metrics.series(m::CONDITION_COUNT).is_empty());
        Ok(())
    }
}
