//! Node repair (the `NodeRepair` gate): a node whose condition the cloud provider's repair policies call
//! unhealthy, held longer than the policy tolerates, is replaced forcefully — its NodeClaim annotated so
//! the drain ends at once, then deleted — unless more than 20% of its NodePool (of the cluster, for a
//! claim without a pool) is unhealthy, when repair would only make an outage worse.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use crate::cloudprovider::{CloudProvider, RepairPolicy};
use crate::context::Context;
use crate::crds::labels;
use crate::error::ControllerError;
use crate::events::EventType;
use crate::kube::{Kind, ObjectKey};
use crate::state::ClusterState;

/// Up to this share of a pool's nodes may be unhealthy and still be repaired, rounded up (Karpenter's
/// rule, as PodDisruptionBudget percentages round): one of three nodes may be repaired.
pub const ALLOWED_UNHEALTHY_PERCENT: usize = 20;
/// A blocked repair is reported again (Event and journal) no sooner than this (Karpenter's dedupe).
const BLOCKED_REPORT_EVERY: Duration = Duration::from_secs(15 * 60);

/// Why a node is unhealthy: the policy it breaks and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unhealthy {
    pub policy: RepairPolicy,
    pub since: Timestamp,
}

impl Unhealthy {
    /// When the policy's toleration runs out.
    pub fn due(&self) -> Timestamp {
        jiff::SignedDuration::try_from(self.policy.toleration)
            .ok()
            .and_then(|d| self.since.checked_add(d).ok())
            .unwrap_or(self.since)
    }
}

/// The node's conditions the policies call unhealthy, the one whose toleration runs out first (a condition
/// without `lastTransitionTime` counts from `first_seen`, when Dovetail first saw it so).
pub fn unhealthy_condition(
    node: &Node,
    policies: &[RepairPolicy],
    mut first_seen: impl FnMut(&str) -> Timestamp,
) -> Option<Unhealthy> {
    let conditions = node.status.as_ref()?.conditions.as_ref()?;
    policies
        .iter()
        .filter_map(|p| {
            let c = conditions.iter().find(|c| c.type_ == p.condition)?;
            (c.status == p.status).then(|| Unhealthy {
                policy: *p,
                since: c
                    .last_transition_time
                    .as_ref()
                    .map_or_else(|| first_seen(p.condition), |t| t.0),
            })
        })
        .min_by_key(Unhealthy::due)
}

/// Whether `unhealthy` of `total` nodes still allows repair: at most 20% of them, rounded up.
pub fn repair_allowed(unhealthy: usize, total: usize) -> bool {
    unhealthy <= (total * ALLOWED_UNHEALTHY_PERCENT).div_ceil(100)
}

/// A condition type as the `condition` label of `karpenter_nodeclaims_unhealthy_disrupted_total` spells it
/// (`AcceleratedHardwareReady` → `accelerated_hardware_ready`).
pub fn snake_case(s: &str) -> String {
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// The node repair controller: when it first saw conditions that carry no transition time, and when each
/// blocked repair may be reported again.
#[derive(Debug, Default)]
pub(crate) struct NodeHealth {
    first_seen: BTreeMap<(String, String), Timestamp>,
    report_blocked_after: BTreeMap<String, Duration>,
}

impl NodeHealth {
    /// Repair the nodes that are due, or say why not. Does nothing with the `NodeRepair` gate off.
    pub(crate) async fn reconcile(
        &mut self,
        ctx: &Context,
        state: &ClusterState,
        provider: &dyn CloudProvider,
    ) -> Result<(), ControllerError> {
        let policies = provider.repair_policies();
        if !ctx.settings.feature_gates.node_repair || policies.is_empty() {
            return Ok(());
        }
        let now = ctx.clock.now();
        // Every node counts towards its pool's (and the cluster's) health, leaving or not, as Karpenter
        // lists them.
        let mut unhealthy: Vec<(&str, &Node, Unhealthy)> = Vec::new();
        let mut pools: BTreeMap<Option<&str>, (usize, usize)> = BTreeMap::new();
        let mut cluster = (0, 0);
        for (name, node) in &state.nodes {
            let found = unhealthy_condition(node, policies, |cond| {
                *self
                    .first_seen
                    .entry((name.clone(), cond.to_string()))
                    .or_insert(now)
            });
            let pool = node
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::NODEPOOL))
                .map(String::as_str);
            let counts = pools.entry(pool).or_default();
            counts.0 += 1;
            cluster.0 += 1;
            if let Some(u) = found {
                counts.1 += 1;
                cluster.1 += 1;
                unhealthy.push((name, node, u));
            }
        }
        let seen = &state.nodes;
        self.first_seen.retain(|(n, _), _| seen.contains_key(n));
        self.report_blocked_after
            .retain(|n, _| seen.contains_key(n));
        for (name, node, why) in unhealthy {
            if now < why.due() {
                continue;
            }
            let Some(claim) = state.claim_of_node(node) else {
                continue; // not Dovetail's node
            };
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let pool = claim
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::NODEPOOL))
                .map(String::as_str);
            let (total, bad) = match pool {
                Some(p) => pools.get(&Some(p)).copied().unwrap_or((0, 0)),
                None => cluster,
            };
            if !repair_allowed(bad, total) {
                self.report_blocked(ctx, name, node, pool, bad, total).await;
                continue;
            }
            self.repair(ctx, claim, name, &why, now).await?;
        }
        Ok(())
    }

    async fn report_blocked(
        &mut self,
        ctx: &Context,
        name: &str,
        node: &Node,
        pool: Option<&str>,
        bad: usize,
        total: usize,
    ) {
        let now = ctx.now();
        if self
            .report_blocked_after
            .get(name)
            .is_some_and(|at| now < *at)
        {
            return;
        }
        self.report_blocked_after
            .insert(name.to_string(), now + BLOCKED_REPORT_EVERY);
        let message = match pool {
            Some(p) => format!(
                "more than {ALLOWED_UNHEALTHY_PERCENT}% of the nodes of nodepool/{p} are unhealthy ({bad} of {total}); not repairing"
            ),
            None => format!(
                "more than {ALLOWED_UNHEALTHY_PERCENT}% of the cluster's nodes are unhealthy ({bad} of {total}); not repairing"
            ),
        };
        ctx.journal
            .record("repair", format!("node/{name} unhealthy: {message}"));
        crate::events::emit(
            ctx,
            Kind::Node,
            &ObjectKey::cluster(name),
            node.metadata.uid.clone(),
            EventType::Warning,
            "NodeRepairBlocked",
            &message,
        )
        .await;
    }

    /// Karpenter's forceful repair: the claim's termination timestamp set to now (so the drain deletes
    /// rather than evicts, past budgets and `do-not-disrupt`), then the claim deleted.
    async fn repair(
        &mut self,
        ctx: &Context,
        claim: &crate::crds::NodeClaim,
        node_name: &str,
        why: &Unhealthy,
        now: Timestamp,
    ) -> Result<(), ControllerError> {
        let claim_name = claim.metadata.name.clone().unwrap_or_default();
        let key = ObjectKey::cluster(&claim_name);
        let existing = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::TERMINATION_TIMESTAMP))
            .and_then(|t| t.parse::<Timestamp>().ok());
        // An earlier deadline stands; a later one (from a terminationGracePeriod) gives way.
        if existing.is_none_or(|t| t > now) {
            let stamp = now.round(jiff::Unit::Second).unwrap_or(now).to_string();
            ctx.kube
                .patch(
                    Kind::NodeClaim,
                    &key,
                    json!({"metadata": {"annotations": {labels::TERMINATION_TIMESTAMP: stamp}}}),
                )
                .await?;
        }
        ctx.delete_if_present(Kind::NodeClaim, &key).await?;
        let held = crate::clock::since(now, why.since);
        ctx.journal.record(
            "repair",
            format!(
                "node/{node_name} {}={} for {}m (tolerated {}m): replacing nodeclaim/{claim_name} forcefully",
                why.policy.condition,
                why.policy.status,
                held.as_secs() / 60,
                why.policy.toleration.as_secs() / 60,
            ),
        );
        let capacity_type = claim
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::CAPACITY_TYPE))
            .cloned()
            .unwrap_or_default();
        crate::metrics::count_claim(
            &ctx.metrics,
            crate::metrics::NODECLAIMS_DISRUPTED,
            claim,
            &[("reason", "unhealthy")],
        );
        let image = claim
            .status
            .as_ref()
            .and_then(|s| s.image_id.clone())
            .unwrap_or_default();
        crate::metrics::count_claim(
            &ctx.metrics,
            crate::metrics::NODECLAIMS_UNHEALTHY_DISRUPTED,
            claim,
            &[
                ("condition", &snake_case(why.policy.condition)),
                ("capacity_type", &capacity_type),
                ("image_id", &image),
            ],
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: [RepairPolicy; 3] = [
        RepairPolicy {
            condition: "Ready",
            status: "False",
            toleration: Duration::from_secs(30 * 60),
        },
        RepairPolicy {
            condition: "Ready",
            status: "Unknown",
            toleration: Duration::from_secs(30 * 60),
        },
        RepairPolicy {
            condition: "AcceleratedHardwareReady",
            status: "False",
            toleration: Duration::from_secs(10 * 60),
        },
    ];

    fn node(conditions: serde_json::Value) -> Result<Node, String> {
        serde_json::from_value(
            json!({"metadata": {"name": "n"}, "status": {"conditions": conditions}}),
        )
        .map_err(|e| e.to_string())
    }

    fn at(s: &str) -> Result<Timestamp, String> {
        s.parse().map_err(|e: jiff::Error| e.to_string())
    }

    #[test]
    fn the_condition_due_first_is_the_one_reported() -> Result<(), String> {
        let later = at("2030-01-01T00:00:00Z")?;
        let never = |_: &str| later;
        let n = node(json!([
            {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "AcceleratedHardwareReady", "status": "False", "lastTransitionTime": "2026-01-01T00:15:00Z"},
        ]))?;
        // Ready=False is due at 00:30, the accelerator at 00:25: the accelerator goes first.
        let u = unhealthy_condition(&n, &POLICIES, never).ok_or("unhealthy")?;
        assert_eq!(u.policy.condition, "AcceleratedHardwareReady");
        assert_eq!(u.due(), at("2026-01-01T00:25:00Z")?);
        // A status no policy names is healthy; so is a condition no policy names.
        let n = node(json!([
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "DiskPressure", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "AcceleratedHardwareReady", "status": "Unknown", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        ]))?;
        assert_eq!(unhealthy_condition(&n, &POLICIES, never), None);
        Ok(())
    }

    #[test]
    fn a_condition_without_a_transition_time_counts_from_when_it_was_seen() -> Result<(), String> {
        let n = node(json!([{"type": "Ready", "status": "Unknown"}]))?;
        let seen = at("2026-01-01T01:00:00Z")?;
        let u = unhealthy_condition(&n, &POLICIES, |_| seen).ok_or("unhealthy")?;
        assert_eq!(u.due(), at("2026-01-01T01:30:00Z")?);
        Ok(())
    }

    #[test]
    fn twenty_percent_rounded_up_may_be_repaired() {
        // Karpenter's cases: 1 of 3 (33%) may be repaired, 3 of 10 may not.
        assert!(repair_allowed(1, 3));
        assert!(!repair_allowed(2, 3));
        assert!(repair_allowed(2, 10));
        assert!(!repair_allowed(3, 10));
        assert!(repair_allowed(1, 1));
        assert!(!repair_allowed(1, 0));
    }

    #[test]
    fn condition_labels_are_snake_case() {
        assert_eq!(
            snake_case("AcceleratedHardwareReady"),
            "accelerated_hardware_ready"
        );
        assert_eq!(snake_case("Ready"), "ready");
    }
}
