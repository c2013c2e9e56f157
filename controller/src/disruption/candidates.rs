//! Which nodes disruption may touch: initialized, not already going, nothing on them that refuses to move
//! (`karpenter.sh/do-not-disrupt`, a budget with no disruption left), with their price, pods and drift.

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::cloudprovider::CapacityType;
use crate::crds::nodeclaim::conditions;
use crate::crds::{NodeClaim, labels};
use crate::error::ControllerError;
use crate::kube::{Kind, ObjectKey, decode};
use crate::node::drain::{Disposition, DrainGroup, disposition, do_not_disrupt};
use crate::scheduling::topology::LabelSelector;
use crate::state::node_ready;

use super::View;
use crate::nodepool::budgets::{self, PoolCounts, Reason};

/// A node disruption could act on.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub node: String,
    pub claim: String,
    pub pool: String,
    pub instance_type: String,
    pub capacity_type: CapacityType,
    pub price: f64,
    /// Pods that would have to move (DaemonSet pods and pods that stay are not counted).
    pub pods: Vec<ObjectKey>,
    /// Why the node no longer matches its NodePool or EC2NodeClass, if it does not: the `Drifted`
    /// condition's reason and a message.
    pub drifted: Option<(&'static str, String)>,
    /// The DaemonSets whose pod for this node waits unschedulable (it does not fit there).
    pub daemon_unfit: Vec<String>,
    /// The pool allows consolidation and the node has been stable for `consolidateAfter`.
    pub consolidatable: bool,
    /// The node belongs to a static pool (`spec.replicas`): only drift replaces it, by a claim of the
    /// pool's own.
    pub static_pool: bool,
    /// The pool's policy is `WhenEmpty`.
    pub only_when_empty: bool,
    /// The pool's policy is `Balanced`: a move must score at least 1/k (`balance`).
    pub balanced: bool,
    /// What moving this node's pods costs (`balance::node_cost`).
    pub disruption: f64,
}

/// A node disruption may not touch, or that consolidation looked at and left, with why (told once as a
/// trace line and an Event on the Node and its NodeClaim, as Karpenter's `DisruptionBlocked` and
/// `Unconsolidatable` Events).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub node: String,
    pub claim: String,
    pub kind: RefusalKind,
    pub message: String,
}

/// What a refusal is about: it names the Event and the trace line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefusalKind {
    /// A pod or annotation holds the node back from any voluntary disruption.
    Blocked,
    /// Consolidation looked at the node and left it.
    Unconsolidatable,
    /// A DaemonSet's pod does not fit and the node cannot be replaced yet.
    DaemonSetUnfit,
}

impl RefusalKind {
    /// The Event reason, Karpenter's where it has one.
    pub fn event_reason(self) -> &'static str {
        match self {
            RefusalKind::Blocked => "DisruptionBlocked",
            RefusalKind::Unconsolidatable => "Unconsolidatable",
            RefusalKind::DaemonSetUnfit => "DaemonSetUnfit",
        }
    }

    /// How the trace line starts.
    pub fn verb(self) -> &'static str {
        match self {
            RefusalKind::Blocked => "blocked",
            RefusalKind::Unconsolidatable => "not consolidated",
            RefusalKind::DaemonSetUnfit => "not replaced",
        }
    }
}

/// What drift compares a claim with, per pool: its template hash and parsed requirements.
struct PoolFacts {
    hash: String,
    requirements: Option<crate::scheduling::Requirements>,
}

/// The capacity type on a claim's labels; on-demand when absent, as Karpenter defaults.
fn capacity_type_of(claim_labels: &BTreeMap<String, String>) -> CapacityType {
    claim_labels
        .get(labels::CAPACITY_TYPE)
        .and_then(|c| CapacityType::parse(c))
        .unwrap_or(CapacityType::OnDemand)
}

/// Whether a pod's `karpenter.sh/do-not-disrupt` keeps its node from voluntary disruption now: `"true"`
/// always, a duration (`"30m"`) until that long after the pod started (Karpenter's timed form).
pub(crate) fn protected(pod: &k8s_openapi::api::core::v1::Pod, now: jiff::Timestamp) -> bool {
    if do_not_disrupt(pod) {
        return true;
    }
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::DO_NOT_DISRUPT))
    else {
        return false;
    };
    let Ok(d) = crate::duration::parse(value) else {
        // Anything else is not a value Karpenter gives meaning to; it protects nothing.
        return false;
    };
    let started = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(|t| t.0);
    started.is_none_or(|s| crate::clock::since(now, s) < d)
}

/// Whether a pod bound to a node would have to move if the node went (not a DaemonSet's or the node's own,
/// not already leaving).
pub(crate) fn moves(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && matches!(
            disposition(pod),
            Disposition::Drain(g) if !matches!(g, DrainGroup::Daemon | DrainGroup::CriticalDaemon)
        )
}

/// Per node, the DaemonSets (`namespace/name`) whose pod for it waits unschedulable: created for the node
/// (pinned by a `matchFields` node affinity on its name) but never bound, because it does not fit.
pub(crate) fn unfit_daemons(
    pods: &BTreeMap<ObjectKey, k8s_openapi::api::core::v1::Pod>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, pod) in pods {
        let Some(owner) = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.kind == "DaemonSet")
        else {
            continue;
        };
        let spec = pod.spec.as_ref();
        let waiting = spec.is_some_and(|s| s.node_name.is_none())
            && pod.metadata.deletion_timestamp.is_none()
            && crate::state::marked_unschedulable(pod);
        if !waiting {
            continue;
        }
        let target = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|n| {
                n.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .and_then(|r| r.node_selector_terms.first())
            .and_then(|t| t.match_fields.as_ref())
            .and_then(|f| f.iter().find(|f| f.key == "metadata.name"))
            .and_then(|f| f.values.as_ref()?.first().cloned());
        if let Some(node) = target {
            out.entry(node)
                .or_default()
                .push(format!("{}/{}", key.namespace, owner.name));
        }
    }
    out
}

impl View<'_> {
    /// Pods no eviction may touch now, with the PodDisruptionBudget (that allows no disruption) that
    /// selects them.
    pub(crate) async fn budget_blocked_pods(
        &self,
    ) -> Result<BTreeMap<ObjectKey, String>, ControllerError> {
        let list = self.ctx.kube.list(Kind::PodDisruptionBudget).await?;
        let mut out = BTreeMap::new();
        for item in list.items {
            let Ok(pdb) = decode::<PodDisruptionBudget>(Kind::PodDisruptionBudget, item) else {
                continue;
            };
            let allowed = pdb.status.as_ref().map_or(0, |s| s.disruptions_allowed);
            if allowed > 0 {
                continue;
            }
            let ns = pdb.metadata.namespace.clone().unwrap_or_default();
            let name = pdb.metadata.name.clone().unwrap_or_default();
            let Ok(selector) = LabelSelector::parse(
                pdb.spec.as_ref().and_then(|s| s.selector.as_ref()),
                "spec.selector",
            ) else {
                continue;
            };
            for (key, pod) in &self.state.pods {
                if key.namespace == ns
                    && selector.matches(&pod.metadata.labels.clone().unwrap_or_default())
                {
                    out.entry(key.clone())
                        .or_insert_with(|| format!("{ns}/{name}"));
                }
            }
        }
        Ok(out)
    }

    /// What a claim's node costs per hour, from the type, zone and capacity type on its labels (0 when
    /// it has not launched yet).
    pub(crate) fn claim_price(&self, claim_labels: &BTreeMap<String, String>) -> f64 {
        let (Some(t), Some(z)) = (
            claim_labels.get(labels::INSTANCE_TYPE),
            claim_labels.get(labels::ZONE),
        ) else {
            return 0.0;
        };
        let pool = claim_labels
            .get(labels::NODEPOOL)
            .map_or("", String::as_str);
        self.provider
            .instance_types()
            .iter()
            .find(|it| &it.name == t)
            .and_then(|it| {
                self.overlaid(pool, it)
                    .price(z, capacity_type_of(claim_labels))
            })
            .unwrap_or(0.0)
    }

    /// Why a claim has drifted from its pool (whose template hash and requirements are given, computed
    /// once per pass) or node class, if it has.
    fn drift(&self, claim: &NodeClaim, pool: &PoolFacts) -> Option<(&'static str, String)> {
        let recorded = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::POOL_HASH));
        if recorded.is_some_and(|h| *h != pool.hash) {
            return Some(("NodePoolDrifted", "NodePool template changed".into()));
        }
        let no_labels = BTreeMap::new();
        let claim_labels = claim.metadata.labels.as_ref().unwrap_or(&no_labels);
        if let Some(reqs) = &pool.requirements {
            for key in [labels::INSTANCE_TYPE, labels::ZONE, labels::CAPACITY_TYPE] {
                if let (Some(r), Some(v)) = (reqs.get(key), claim_labels.get(key))
                    && !r.has(v)
                {
                    return Some((
                        "RequirementsDrifted",
                        format!("{key}={v} no longer allowed by the NodePool"),
                    ));
                }
            }
        }
        self.provider.is_drifted(claim)
    }

    /// Every node disruption may act on now, cheapest to disrupt first (fewest pods, then dearest); nodes
    /// held back by a pod or annotation go to `refused`.
    pub(crate) fn candidates(
        &self,
        blocked: &BTreeMap<ObjectKey, String>,
        refused: &mut Vec<Refusal>,
    ) -> Vec<Candidate> {
        let now = self.ctx.now();
        let mut by_node: BTreeMap<&str, Vec<(&ObjectKey, &k8s_openapi::api::core::v1::Pod)>> =
            BTreeMap::new();
        for (key, pod) in &self.state.pods {
            if let Some(n) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                by_node.entry(n).or_default().push((key, pod));
            }
        }
        let pools: BTreeMap<&str, PoolFacts> = self
            .state
            .nodepools
            .iter()
            .map(|(name, p)| {
                let facts = PoolFacts {
                    hash: crate::nodepool::pool_hash(p),
                    requirements: crate::scheduling::Requirements::from_node_selector(
                        &p.spec.template.spec.requirements,
                    )
                    .ok(),
                };
                (name.as_str(), facts)
            })
            .collect();
        let unfit = unfit_daemons(&self.state.pods);
        let no_labels = BTreeMap::new();
        let mut out = Vec::new();
        'claims: for claim in self.state.nodeclaims.values() {
            if claim.metadata.deletion_timestamp.is_some()
                || !claim.condition_true(conditions::INITIALIZED)
            {
                continue;
            }
            let Some(node_name) = claim.status.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let Some(node) = self.state.nodes.get(&node_name) else {
                continue;
            };
            let tainted = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_ref())
                .is_some_and(|ts| ts.iter().any(|t| t.key == labels::DISRUPTED_TAINT));
            let node_says_no = node
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(labels::DO_NOT_DISRUPT))
                .is_some_and(|v| v == "true");
            let claim_name = claim.metadata.name.clone().unwrap_or_default();
            let mut refuse = |message: String| {
                refused.push(Refusal {
                    node: node_name.clone(),
                    claim: claim_name.clone(),
                    kind: RefusalKind::Blocked,
                    message,
                })
            };
            if node.metadata.deletion_timestamp.is_some() || tainted || !node_ready(node) {
                continue;
            }
            if node_says_no {
                refuse(format!(
                    "the node has the {} annotation",
                    labels::DO_NOT_DISRUPT
                ));
                continue;
            }
            let claim_labels = claim.metadata.labels.as_ref().unwrap_or(&no_labels);
            let Some((pool, facts)) = claim_labels
                .get(labels::NODEPOOL)
                .and_then(|p| Some((self.state.nodepools.get(p)?, pools.get(p.as_str())?)))
            else {
                continue;
            };
            let mut pods = Vec::new();
            for (key, pod) in by_node.get(node_name.as_str()).into_iter().flatten() {
                match disposition(pod) {
                    Disposition::Ignored
                    | Disposition::Drain(DrainGroup::Daemon | DrainGroup::CriticalDaemon) => {}
                    Disposition::Drain(_) => {
                        if pod.metadata.deletion_timestamp.is_some() {
                            continue;
                        }
                        if protected(pod, self.ctx.clock.now()) {
                            refuse(format!(
                                "pod {key} has the {} annotation",
                                labels::DO_NOT_DISRUPT
                            ));
                            continue 'claims;
                        }
                        if let Some(pdb) = blocked.get(*key) {
                            refuse(format!(
                                "PodDisruptionBudget {pdb} allows no eviction of its pods here now"
                            ));
                            continue 'claims;
                        }
                        pods.push((*key).clone());
                    }
                }
            }
            let disruption = pool.spec.disruption.as_ref();
            let policy = disruption.and_then(|d| d.consolidation_policy.as_deref());
            let after = disruption
                .and_then(|d| d.consolidate_after.as_deref())
                .map_or(
                    Ok(Some(std::time::Duration::ZERO)),
                    crate::duration::parse_or_never,
                );
            let stable_since = self
                .state
                .pod_changes
                .get(&node_name)
                .copied()
                .unwrap_or_default()
                .max(
                    claim
                        .condition_time(conditions::INITIALIZED)
                        .map(|t| std::time::Duration::try_from(t.as_duration()).unwrap_or_default())
                        .unwrap_or_default(),
                );
            // A static pool's nodes are its replica count's to keep: never consolidated, only replaced
            // when drifted (as in Karpenter).
            let static_pool = pool.spec.replicas.is_some();
            let consolidatable = !static_pool
                && match after {
                    Ok(Some(d)) => now >= stable_since + d,
                    _ => false,
                };
            let instance_type = claim_labels
                .get(labels::INSTANCE_TYPE)
                .cloned()
                .unwrap_or_default();
            out.push(Candidate {
                price: self.claim_price(claim_labels),
                node: node_name.clone(),
                claim: claim.metadata.name.clone().unwrap_or_default(),
                pool: pool.metadata.name.clone().unwrap_or_default(),
                instance_type,
                capacity_type: capacity_type_of(claim_labels),
                drifted: self.drift(claim, facts),
                daemon_unfit: if static_pool {
                    Vec::new()
                } else {
                    unfit.get(node_name.as_str()).cloned().unwrap_or_default()
                },
                static_pool,
                consolidatable,
                only_when_empty: policy == Some(crate::crds::nodepool::policy::WHEN_EMPTY),
                balanced: policy == Some(crate::crds::nodepool::policy::BALANCED),
                disruption: super::balance::node_cost(
                    pods.iter().filter_map(|k| self.state.pods.get(k)),
                ),
                pods,
            });
        }
        out.sort_by(|a, b| {
            a.pods
                .len()
                .cmp(&b.pods.len())
                .then(b.price.total_cmp(&a.price))
                .then(a.node.cmp(&b.node))
        });
        out
    }

    /// How many more nodes of each pool may be disrupted for `reason` now. A pool whose budgets are
    /// invalid allows none, and says why.
    pub(crate) fn budget_left(&self, reason: Reason) -> BTreeMap<String, u32> {
        let mut counts: BTreeMap<String, PoolCounts> = BTreeMap::new();
        for claim in self.state.nodeclaims.values() {
            let Some(pool) = claim
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::NODEPOOL))
            else {
                continue;
            };
            let c = counts.entry(pool.clone()).or_default();
            c.total += 1;
            let node = claim
                .status
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .and_then(|n| self.state.nodes.get(n));
            let going = claim.metadata.deletion_timestamp.is_some()
                || node.is_some_and(|n| {
                    n.metadata.deletion_timestamp.is_some()
                        || !node_ready(n)
                        || n.spec
                            .as_ref()
                            .and_then(|s| s.taints.as_ref())
                            .is_some_and(|ts| ts.iter().any(|t| t.key == labels::DISRUPTED_TAINT))
                });
            if going {
                c.disrupting += 1;
            }
        }
        let now = self.ctx.clock.now();
        let mut out = BTreeMap::new();
        for (name, pool) in &self.state.nodepools {
            let budgets_spec = pool
                .spec
                .disruption
                .as_ref()
                .map(|d| d.budgets.clone())
                .unwrap_or_default();
            let c = counts.get(name).copied().unwrap_or_default();
            let left = match budgets::allowed(&budgets_spec, reason, c, now) {
                Ok(n) => n,
                Err(e) => {
                    self.ctx.journal.record(
                        "disruption",
                        format!("nodepool/{name}: {e}; disrupting nothing"),
                    );
                    0
                }
            };
            out.insert(name.clone(), left);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn pod(value: Option<&str>, started: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                annotations: value
                    .map(|v| [(labels::DO_NOT_DISRUPT.to_string(), v.to_string())].into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                start_time: Some(Time(started.parse().unwrap())),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn do_not_disrupt_true_or_for_a_while() {
        let now: jiff::Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        assert!(protected(&pod(Some("true"), "2026-01-01T00:00:00Z"), now));
        assert!(!protected(&pod(None, "2026-01-01T00:00:00Z"), now));
        // Started 60 minutes ago: a 2h window still holds, a 30m one has run out.
        assert!(protected(&pod(Some("2h"), "2026-01-01T00:00:00Z"), now));
        assert!(!protected(&pod(Some("30m"), "2026-01-01T00:00:00Z"), now));
        assert!(!protected(&pod(Some("false"), "2026-01-01T00:00:00Z"), now));
    }
}
