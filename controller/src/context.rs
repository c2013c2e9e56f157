//! What every controller is handed: the seams, the journal, metrics, the seeded RNG and the settings, with
//! the small API helpers they all use.

use std::sync::Arc;
use std::time::Duration;

use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::clock::Clock;
use crate::crds::labels;
use crate::error::ControllerError;
use crate::journal::Journal;
use crate::kube::{Kind, Kube, KubeError, ObjectKey};

/// Tunables, with Karpenter's defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster_name: String,
    /// The API server endpoint nodes join, its CA bundle (base64 PEM) and the service CIDR: written into
    /// node user data (unknown ones are left out).
    pub cluster_endpoint: Option<String>,
    pub cluster_ca_bundle: Option<String>,
    pub cluster_cidr: Option<String>,
    /// Close a provisioning batch after this long without a new pending pod (Karpenter: 1 s).
    pub batch_idle: Duration,
    /// ... or this long after it opened (Karpenter: 10 s).
    pub batch_max: Duration,
    /// How often NodeClaims are checked for progress (launch, registration, initialization).
    pub lifecycle_interval: Duration,
    /// How often instance types, offerings and prices are read again.
    pub catalog_refresh: Duration,
    /// The SQS queue (URL) EventBridge sends interruption events to (Karpenter: INTERRUPTION_QUEUE);
    /// None turns interruption handling off.
    pub interruption_queue: Option<String>,
    /// Dovetail's anti-churn rule for consolidation that moves pods: the share of the pool's cost saved
    /// divided by the share of its pods moved must reach this (None: off, Karpenter's behaviour).
    pub consolidation_balance: Option<f64>,
    /// The `Balanced` consolidation policy's k: a move in such a pool must score at least 1/k (Karpenter
    /// fixes k = 2; here it is a setting).
    pub balanced_k: u32,
    /// `MIN_VALUES_POLICY=BestEffort`: launch with fewer instance types than a `minValues` asks when no more
    /// fit, relaxing the claim's minValues and annotating it `karpenter.sh/nodeclaim-min-values-relaxed`
    /// (false: Strict, Karpenter's default — such pods wait).
    pub min_values_best_effort: bool,
    /// Karpenter's feature gates (`FEATURE_GATES`).
    pub feature_gates: FeatureGates,
    /// Act only while holding this Lease (None: a single replica acts alone).
    pub leader_election: Option<LeaderElection>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_name: "dovetail".to_string(),
            cluster_endpoint: None,
            cluster_ca_bundle: None,
            cluster_cidr: None,
            batch_idle: Duration::from_secs(1),
            batch_max: Duration::from_secs(10),
            lifecycle_interval: Duration::from_secs(1),
            catalog_refresh: Duration::from_secs(300),
            interruption_queue: None,
            consolidation_balance: Some(0.25),
            balanced_k: 2,
            min_values_best_effort: false,
            feature_gates: FeatureGates::default(),
            leader_election: None,
        }
    }
}

/// Karpenter's feature gates (`FEATURE_GATES`), with Karpenter's defaults except where said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureGates {
    /// Replace a spot node with a cheaper spot node (`SpotToSpotConsolidation`; off in Karpenter, on
    /// here): a single node only when at least 15 cheaper types can take its pods, and the replacement
    /// may launch only the 15 cheapest, so it does not race to the most interrupted type.
    pub spot_to_spot_consolidation: bool,
    /// Replace nodes the cloud provider's repair policies call unhealthy (`NodeRepair`, off by default
    /// as in Karpenter): see `node::health`.
    pub node_repair: bool,
    /// Keep `spec.replicas` nodes in static NodePools (`StaticCapacity`, off by default as in Karpenter):
    /// see `nodepool::static_capacity`.
    pub static_capacity: bool,
    /// Launch into the capacity reservations node classes select, as `reserved` capacity
    /// (`ReservedCapacity`, on by default as in Karpenter): see `aws::reservation`.
    pub reserved_capacity: bool,
    /// Apply NodeOverlays' price and capacity adjustments (`NodeOverlay`, off by default as in
    /// Karpenter): see `nodepool::overlay`.
    pub node_overlay: bool,
    /// Keep CapacityBuffers' headroom (`CapacityBuffer`, off by default as in Karpenter): see
    /// `provisioning::buffers`.
    pub capacity_buffer: bool,
}

impl Default for FeatureGates {
    fn default() -> Self {
        FeatureGates {
            spot_to_spot_consolidation: true,
            node_repair: false,
            static_capacity: false,
            reserved_capacity: true,
            node_overlay: false,
            capacity_buffer: false,
        }
    }
}

/// Karpenter's `FEATURE_GATES` syntax (`SpotToSpotConsolidation=true,NodeRepair=false`): gates not named
/// keep their defaults; an unknown gate or a value other than true/false is an error naming it.
pub fn parse_feature_gates(s: &str) -> Result<FeatureGates, String> {
    let mut gates = FeatureGates::default();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}`: write Name=true or Name=false"))?;
        let value: bool = value
            .trim()
            .parse()
            .map_err(|_| format!("`{part}`: the value must be true or false"))?;
        match name.trim() {
            "SpotToSpotConsolidation" => gates.spot_to_spot_consolidation = value,
            "NodeRepair" => gates.node_repair = value,
            "StaticCapacity" => gates.static_capacity = value,
            "ReservedCapacity" => gates.reserved_capacity = value,
            "NodeOverlay" => gates.node_overlay = value,
            "CapacityBuffer" => gates.capacity_buffer = value,
            other => return Err(format!("unknown feature gate `{other}`")),
        }
    }
    Ok(gates)
}

impl Settings {
    /// Set one setting by the binary's environment variable name, as a scenario's `settings:` block
    /// writes it. Err says why the value is wrong, or that the name is not a setting.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let duration = |v: &str| crate::duration::parse(v);
        match name {
            "CLUSTER_NAME" => self.cluster_name = value.to_string(),
            "BATCH_IDLE_DURATION" => self.batch_idle = duration(value)?,
            "BATCH_MAX_DURATION" => self.batch_max = duration(value)?,
            "FEATURE_GATES" => self.feature_gates = parse_feature_gates(value)?,
            "CONSOLIDATION_BALANCE" => {
                let v: f64 = value
                    .parse()
                    .map_err(|_| format!("`{value}` is not a number (0 turns the rule off)"))?;
                if !(v >= 0.0 && v.is_finite()) {
                    return Err(format!("`{value}`: must be 0 or more"));
                }
                self.consolidation_balance = (v > 0.0).then_some(v);
            }
            "BALANCED_K" => {
                self.balanced_k = value
                    .parse()
                    .ok()
                    .filter(|k| *k >= 1)
                    .ok_or_else(|| format!("`{value}` is not a whole number of 1 or more"))?;
            }
            "MIN_VALUES_POLICY" => {
                self.min_values_best_effort = match value {
                    "Strict" => false,
                    "BestEffort" => true,
                    _ => return Err(format!("`{value}`: Strict or BestEffort")),
                }
            }
            _ => return Err("not a setting Dovetail reads".into()),
        }
        Ok(())
    }
}

/// What every controller is handed: the clock and Kubernetes seams, the journal, metrics, the seeded RNG and
/// the settings. The cloud is not here: only the AWS provider holds it.
pub struct Context {
    pub clock: Arc<dyn Clock>,
    pub kube: Arc<dyn Kube>,
    pub journal: Arc<dyn Journal>,
    /// Counters and gauges about the controller's work (served on /metrics in a cluster).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub rng: ChaCha8Rng,
    pub settings: Settings,
}

impl Context {
    /// Monotonic time for timers: the clock's time since the Unix epoch.
    pub(crate) fn now(&self) -> Duration {
        Duration::try_from(self.clock.now().as_duration()).unwrap_or(Duration::ZERO)
    }

    /// Delete an object; one already gone counts as deleted.
    pub(crate) async fn delete_if_present(
        &self,
        kind: Kind,
        key: &ObjectKey,
    ) -> Result<(), ControllerError> {
        match self.kube.delete(kind, key).await {
            Ok(()) | Err(KubeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Drop Dovetail's termination finalizer from a cluster-scoped object, keeping any others.
    pub(crate) async fn release(
        &self,
        kind: Kind,
        name: &str,
        finalizers: Option<Vec<String>>,
    ) -> Result<(), ControllerError> {
        let kept: Vec<String> = finalizers
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != labels::TERMINATION_FINALIZER)
            .collect();
        self.kube
            .patch(
                kind,
                &ObjectKey::cluster(name),
                json!({"metadata": {"finalizers": kept}}),
            )
            .await?;
        Ok(())
    }
}

/// Where the Lease lives and how it is held (Karpenter's and client-go's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderElection {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaderElection {
    pub fn new(namespace: &str, identity: &str) -> LeaderElection {
        LeaderElection {
            namespace: namespace.to_string(),
            name: "dovetail-leader-election".to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_gates_keep_their_defaults_unless_named() -> Result<(), String> {
        let d = parse_feature_gates("")?;
        assert!(d.spot_to_spot_consolidation && !d.node_repair && d.reserved_capacity);
        assert!(!d.node_overlay && parse_feature_gates("NodeOverlay=true")?.node_overlay);
        let g = parse_feature_gates("NodeRepair=true, ReservedCapacity=false")?;
        assert!(g.node_repair && g.spot_to_spot_consolidation && !g.reserved_capacity);
        let g = parse_feature_gates("SpotToSpotConsolidation=false,CapacityBuffer=true")?;
        assert!(!g.spot_to_spot_consolidation && !g.node_repair && g.capacity_buffer);
        assert!(!d.capacity_buffer);
        assert!(parse_feature_gates("NodeRepair=yes").is_err_and(|e| e.contains("true or false")));
        assert!(
            parse_feature_gates("Warp=true")
                .is_err_and(|e| e.contains("unknown feature gate `Warp`"))
        );
        let mut s = Settings::default();
        s.set("FEATURE_GATES", "NodeRepair=true")?;
        assert!(s.feature_gates.node_repair);
        Ok(())
    }
}
