//! Counters and gauges about the controller's work, under Karpenter's metric names where the meaning is
//! the same; the in-cluster binary serves them on `/metrics`, the simulator may read them.
//!
//! Plain data behind a mutex, in sorted maps: recording never reaches a decision, and a snapshot is
//! ordered, so nothing here can make a run differ.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Counter or gauge, as Prometheus types them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// One metric the controller may report.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    /// The full name; counters end in `_total` as OpenMetrics requires.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricKind,
}

const fn counter(name: &'static str, help: &'static str) -> MetricDef {
    MetricDef {
        name,
        help,
        kind: MetricKind::Counter,
    }
}

const fn gauge(name: &'static str, help: &'static str) -> MetricDef {
    MetricDef {
        name,
        help,
        kind: MetricKind::Gauge,
    }
}

pub const NODECLAIMS_CREATED: MetricDef = counter(
    "karpenter_nodeclaims_created_total",
    "NodeClaims created, by reason (provisioning, disruption, interruption) and nodepool.",
);
pub const NODECLAIMS_LAUNCHED: MetricDef = counter(
    "karpenter_nodeclaims_launched_total",
    "NodeClaims whose instance was launched, by nodepool.",
);
pub const NODECLAIMS_REGISTERED: MetricDef = counter(
    "karpenter_nodeclaims_registered_total",
    "NodeClaims whose Node registered, by nodepool.",
);
pub const NODECLAIMS_INITIALIZED: MetricDef = counter(
    "karpenter_nodeclaims_initialized_total",
    "NodeClaims whose Node became ready and initialized, by nodepool.",
);
pub const NODECLAIMS_TERMINATED: MetricDef = counter(
    "karpenter_nodeclaims_terminated_total",
    "NodeClaims whose instance was terminated, by nodepool.",
);
pub const NODECLAIMS_DISRUPTED: MetricDef = counter(
    "karpenter_nodeclaims_disrupted_total",
    "NodeClaims disrupted, by reason (underutilized, empty, drifted, expired, interruption, unhealthy) and nodepool.",
);
pub const NODECLAIMS_UNHEALTHY_DISRUPTED: MetricDef = counter(
    "karpenter_nodeclaims_unhealthy_disrupted_total",
    "NodeClaims node repair replaced, by the condition that made the node unhealthy, nodepool, capacity_type and image_id.",
);
pub const DISRUPTION_DECISIONS: MetricDef = counter(
    "karpenter_voluntary_disruption_decisions_total",
    "Voluntary disruption decisions executed, by decision (delete, replace) and reason.",
);
pub const CONSOLIDATION_MOVES: MetricDef = counter(
    "karpenter_consolidation_moves_total",
    "Consolidation moves that moved pods and were scored, by decision (approved, rejected), nodepool and policy.",
);
pub const CONSOLIDATION_SCORE: MetricDef = gauge(
    "dovetail_consolidation_last_score",
    "The last score of a consolidation move (savings share / disruption share), by nodepool and decision.",
);
pub const PODS_DRAINED: MetricDef = counter(
    "karpenter_pods_drained_total",
    "Pods evicted or deleted while draining a node, by reason (the claim's DisruptionReason; empty when none).",
);
pub const EVICTION_REQUESTS: MetricDef = counter(
    "karpenter_pods_eviction_requests_total",
    "Eviction API requests made while draining, by code (200 evicted, 404 gone, 429 refused by a budget).",
);
pub const INTERRUPTION_RECEIVED: MetricDef = counter(
    "karpenter_interruption_received_messages_total",
    "Messages read from the interruption queue, by message_type.",
);
pub const INTERRUPTION_DELETED: MetricDef = counter(
    "karpenter_interruption_deleted_messages_total",
    "Messages deleted from the interruption queue.",
);
pub const PODS_STATE: MetricDef = gauge(
    "karpenter_pods_state",
    "1 per pod, labelled by name, namespace, node and phase (Pending when unbound).",
);
pub const NODEPOOLS_USAGE: MetricDef = gauge(
    "karpenter_nodepools_usage",
    "Resources the NodePool's NodeClaims hold, by nodepool and resource_type.",
);
pub const NODEPOOLS_LIMIT: MetricDef = gauge(
    "karpenter_nodepools_limit",
    "The NodePool's spec.limits, by nodepool and resource_type.",
);
pub const CLUSTER_NODES: MetricDef = gauge(
    "karpenter_cluster_state_node_count",
    "Nodes the controller's cluster state holds.",
);
pub const CLUSTER_SYNCED: MetricDef = gauge(
    "karpenter_cluster_state_synced",
    "1 once the cluster state has been listed and is followed by watches.",
);
pub const CLOUDPROVIDER_ERRORS: MetricDef = counter(
    "karpenter_cloudprovider_errors_total",
    "Failed calls to AWS, by method and error code.",
);
pub const LEADER: MetricDef = gauge(
    "leader_election_master_status",
    "1 while this replica holds the leader Lease, by name.",
);

pub const NODECLAIM_CONDITION_COUNT: MetricDef = gauge(
    "operator_nodeclaim_status_condition_count",
    "1 per condition of each NodeClaim, by namespace, name, type, status and reason.",
);
pub const NODECLAIM_CONDITION_SECONDS: MetricDef = gauge(
    "operator_nodeclaim_status_condition_current_status_seconds",
    "Seconds each condition of each NodeClaim has been in its status (refreshed every 15 s).",
);
pub const NODECLAIM_CONDITION_TRANSITIONS: MetricDef = counter(
    "operator_nodeclaim_status_condition_transitions_total",
    "Condition transitions of NodeClaims seen, by type, status and reason.",
);
pub const NODEPOOL_CONDITION_COUNT: MetricDef = gauge(
    "operator_nodepool_status_condition_count",
    "1 per condition of each NodePool, by namespace, name, type, status and reason.",
);
pub const NODEPOOL_CONDITION_SECONDS: MetricDef = gauge(
    "operator_nodepool_status_condition_current_status_seconds",
    "Seconds each condition of each NodePool has been in its status (refreshed every 15 s).",
);
pub const NODEPOOL_CONDITION_TRANSITIONS: MetricDef = counter(
    "operator_nodepool_status_condition_transitions_total",
    "Condition transitions of NodePools seen, by type, status and reason.",
);
pub const EC2NODECLASS_CONDITION_COUNT: MetricDef = gauge(
    "operator_ec2nodeclass_status_condition_count",
    "1 per condition of each EC2NodeClass, by namespace, name, type, status and reason.",
);
pub const EC2NODECLASS_CONDITION_SECONDS: MetricDef = gauge(
    "operator_ec2nodeclass_status_condition_current_status_seconds",
    "Seconds each condition of each EC2NodeClass has been in its status (refreshed every 15 s).",
);
pub const EC2NODECLASS_CONDITION_TRANSITIONS: MetricDef = counter(
    "operator_ec2nodeclass_status_condition_transitions_total",
    "Condition transitions of EC2NodeClasses seen, by type, status and reason.",
);
pub const NODE_CONDITION_COUNT: MetricDef = gauge(
    "operator_node_status_condition_count",
    "1 per condition of each Node, by namespace, name, type, status and reason.",
);
pub const NODE_CONDITION_SECONDS: MetricDef = gauge(
    "operator_node_status_condition_current_status_seconds",
    "Seconds each condition of each Node has been in its status (refreshed every 15 s).",
);
pub const NODE_CONDITION_TRANSITIONS: MetricDef = counter(
    "operator_node_status_condition_transitions_total",
    "Condition transitions of Nodes seen, by type, status and reason.",
);
pub const CAPACITYBUFFER_CONDITION_COUNT: MetricDef = gauge(
    "operator_capacitybuffer_status_condition_count",
    "1 per condition of each CapacityBuffer, by namespace, name, type, status and reason.",
);
pub const CAPACITYBUFFER_CONDITION_SECONDS: MetricDef = gauge(
    "operator_capacitybuffer_status_condition_current_status_seconds",
    "Seconds each condition of each CapacityBuffer has been in its status (refreshed every 15 s).",
);
pub const CAPACITYBUFFER_CONDITION_TRANSITIONS: MetricDef = counter(
    "operator_capacitybuffer_status_condition_transitions_total",
    "Condition transitions of CapacityBuffers seen, by type, status and reason.",
);
pub const CONDITION_COUNT: MetricDef = gauge(
    "operator_status_condition_count",
    "The older form of operator_<kind>_status_condition_count (not for Nodes), with group and kind labels.",
);
pub const CONDITION_SECONDS: MetricDef = gauge(
    "operator_status_condition_current_status_seconds",
    "The older form of operator_<kind>_status_condition_current_status_seconds, with group and kind labels.",
);
pub const CONDITION_TRANSITIONS: MetricDef = counter(
    "operator_status_condition_transitions_total",
    "The older form of operator_<kind>_status_condition_transitions_total, with group and kind labels.",
);

/// Every metric the controller reports, in exposition order.
pub const DEFINITIONS: &[MetricDef] = &[
    NODECLAIMS_CREATED,
    NODECLAIMS_LAUNCHED,
    NODECLAIMS_REGISTERED,
    NODECLAIMS_INITIALIZED,
    NODECLAIMS_TERMINATED,
    NODECLAIMS_DISRUPTED,
    NODECLAIMS_UNHEALTHY_DISRUPTED,
    DISRUPTION_DECISIONS,
    CONSOLIDATION_MOVES,
    CONSOLIDATION_SCORE,
    PODS_DRAINED,
    EVICTION_REQUESTS,
    INTERRUPTION_RECEIVED,
    INTERRUPTION_DELETED,
    PODS_STATE,
    NODEPOOLS_USAGE,
    NODEPOOLS_LIMIT,
    CLUSTER_NODES,
    CLUSTER_SYNCED,
    CLOUDPROVIDER_ERRORS,
    LEADER,
    NODECLAIM_CONDITION_COUNT,
    NODECLAIM_CONDITION_SECONDS,
    NODECLAIM_CONDITION_TRANSITIONS,
    NODEPOOL_CONDITION_COUNT,
    NODEPOOL_CONDITION_SECONDS,
    NODEPOOL_CONDITION_TRANSITIONS,
    EC2NODECLASS_CONDITION_COUNT,
    EC2NODECLASS_CONDITION_SECONDS,
    EC2NODECLASS_CONDITION_TRANSITIONS,
    NODE_CONDITION_COUNT,
    NODE_CONDITION_SECONDS,
    NODE_CONDITION_TRANSITIONS,
    CAPACITYBUFFER_CONDITION_COUNT,
    CAPACITYBUFFER_CONDITION_SECONDS,
    CAPACITYBUFFER_CONDITION_TRANSITIONS,
    CONDITION_COUNT,
    CONDITION_SECONDS,
    CONDITION_TRANSITIONS,
];

/// Label pairs, sorted by name.
pub type Labels = Vec<(&'static str, String)>;

/// The controller's metric values.
#[derive(Debug, Default)]
pub struct Metrics {
    values: Mutex<BTreeMap<&'static str, BTreeMap<Labels, f64>>>,
}

/// Label pairs as a series key, sorted by name.
pub(crate) fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    let mut out: Labels = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
    out.sort();
    out
}

impl Metrics {
    fn with<R>(
        &self,
        f: impl FnOnce(&mut BTreeMap<&'static str, BTreeMap<Labels, f64>>) -> R,
    ) -> R {
        let mut guard = self.values.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    /// Add one to a counter.
    /// A consolidation move was scored (`disruption::balance`).
    pub fn consolidation_scored(&self, pool: &str, balanced: bool, approved: bool, score: f64) {
        let decision = if approved { "approved" } else { "rejected" };
        let policy = if balanced {
            "Balanced"
        } else {
            "WhenEmptyOrUnderutilized"
        };
        self.inc(
            CONSOLIDATION_MOVES,
            &[
                ("decision", decision),
                ("nodepool", pool),
                ("policy", policy),
            ],
        );
        // Infinite scores (nothing disrupted) are not exposition-friendly; cap them.
        self.set(
            CONSOLIDATION_SCORE,
            &[("decision", decision), ("nodepool", pool)],
            score.min(1e9),
        );
    }

    pub fn inc(&self, def: MetricDef, pairs: &[(&'static str, &str)]) {
        debug_assert_eq!(def.kind, MetricKind::Counter, "{}", def.name);
        self.with(|v| {
            *v.entry(def.name)
                .or_default()
                .entry(labels(pairs))
                .or_default() += 1.0
        });
    }

    /// Set one series of a gauge.
    pub fn set(&self, def: MetricDef, pairs: &[(&'static str, &str)], value: f64) {
        self.with(|v| {
            v.entry(def.name).or_default().insert(labels(pairs), value);
        });
    }

    /// Replace every series of a gauge (series not given are gone, as for pods that left).
    pub fn replace(&self, def: MetricDef, series: BTreeMap<Labels, f64>) {
        self.with(|v| {
            v.insert(def.name, series);
        });
    }

    /// The value of one series, if recorded.
    pub fn get(&self, def: MetricDef, pairs: &[(&'static str, &str)]) -> Option<f64> {
        self.with(|v| v.get(def.name).and_then(|s| s.get(&labels(pairs))).copied())
    }

    /// Every series of one metric, sorted by labels.
    pub fn series(&self, def: MetricDef) -> Vec<(Labels, f64)> {
        self.with(|v| {
            v.get(def.name)
                .map(|s| s.iter().map(|(l, x)| (l.clone(), *x)).collect())
                .unwrap_or_default()
        })
    }
}

/// Equal when every series has the same value (runs compare their outcomes).
impl PartialEq for Metrics {
    fn eq(&self, other: &Metrics) -> bool {
        if std::ptr::eq(self, other) {
            return true;
        }
        let mine = self.with(|v| v.clone());
        other.with(|v| *v == mine)
    }
}

/// How often the cluster-state gauges (pods, node count, pool usage) are rebuilt.
pub const STATE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// Rebuild the gauges that describe the cluster state: one series per pod, node count, pool usage and
/// limits.
pub(crate) fn publish_state(m: &Metrics, state: &crate::state::ClusterState) {
    {
        let mut pods = BTreeMap::new();
        for (key, pod) in &state.pods {
            let spec_node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Pending");
            pods.insert(
                labels(&[
                    ("name", &key.name),
                    ("namespace", &key.namespace),
                    ("node", spec_node.unwrap_or("")),
                    ("phase", phase),
                ]),
                1.0,
            );
        }
        m.replace(PODS_STATE, pods);
        m.set(CLUSTER_NODES, &[], state.nodes.len() as f64);
        let mut usage = BTreeMap::new();
        let mut limits = BTreeMap::new();
        for (name, pool) in &state.nodepools {
            for (resource, amount) in &state.pool_usage(name).0 {
                usage.insert(
                    labels(&[("nodepool", name), ("resource_type", resource)]),
                    amount.0 as f64 / 1000.0,
                );
            }
            let parsed = pool
                .spec
                .limits
                .as_ref()
                .and_then(|l| crate::resources::Resources::parse(l).ok())
                .unwrap_or_default();
            for (resource, amount) in &parsed.0 {
                limits.insert(
                    labels(&[("nodepool", name), ("resource_type", resource)]),
                    amount.0 as f64 / 1000.0,
                );
            }
        }
        m.replace(NODEPOOLS_USAGE, usage);
        m.replace(NODEPOOLS_LIMIT, limits);
    }
}

/// Count a NodeClaim event under its NodePool, with more labels.
pub(crate) fn count_claim(
    m: &Metrics,
    def: MetricDef,
    claim: &crate::crds::NodeClaim,
    more: &[(&'static str, &str)],
) {
    let pool = claim
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(crate::crds::labels::NODEPOOL))
        .map_or("", String::as_str);
    let mut labels = vec![("nodepool", pool)];
    labels.extend_from_slice(more);
    m.inc(def, &labels);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_add_per_label_set_and_gauges_replace() {
        let m = Metrics::default();
        m.inc(
            NODECLAIMS_CREATED,
            &[("nodepool", "a"), ("reason", "provisioning")],
        );
        m.inc(
            NODECLAIMS_CREATED,
            &[("reason", "provisioning"), ("nodepool", "a")],
        );
        m.inc(
            NODECLAIMS_CREATED,
            &[("nodepool", "b"), ("reason", "provisioning")],
        );
        assert_eq!(
            m.get(
                NODECLAIMS_CREATED,
                &[("nodepool", "a"), ("reason", "provisioning")]
            ),
            Some(2.0)
        );
        assert_eq!(m.series(NODECLAIMS_CREATED).len(), 2);
        m.set(PODS_STATE, &[("name", "p1")], 1.0);
        let mut only = BTreeMap::new();
        only.insert(labels(&[("name", "p2")]), 1.0);
        m.replace(PODS_STATE, only);
        assert_eq!(m.get(PODS_STATE, &[("name", "p1")]), None);
        assert_eq!(m.get(PODS_STATE, &[("name", "p2")]), Some(1.0));
    }

    #[test]
    fn counter_names_follow_openmetrics() {
        for d in DEFINITIONS {
            assert_eq!(
                d.kind == MetricKind::Counter,
                d.name.ends_with("_total"),
                "{}",
                d.name
            );
        }
    }
}
