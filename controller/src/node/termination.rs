//! The termination controller: a deleted Node with Dovetail's finalizer is tainted
//! `karpenter.sh/disrupted`, drained through the eviction API in Karpenter's order (see `drain`), then its
//! claim deleted, its instance terminated and the finalizer released.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::drain::{DrainStep, PodAction, plan_drain};
use crate::cloudprovider::CloudProvider;
use crate::context::Context;
use crate::crds::labels;
use crate::error::ControllerError;
use crate::events::EventType;
use crate::kube::{Kind, KubeError, ObjectKey};
use crate::state::ClusterState;

/// The taint the kubelet's node controller puts on a node whose kubelet stopped answering.
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// Refused evictions are retried after 1, 2, 4, 8, then every 10 seconds.
const EVICTION_RETRY_MAX: Duration = Duration::from_secs(10);

/// Refused evictions and when each may be tried again.
#[derive(Debug, Default)]
pub struct EvictionRetries(BTreeMap<ObjectKey, (Duration, u32)>);

impl EvictionRetries {
    fn due(&self, key: &ObjectKey, now: Duration) -> bool {
        self.0.get(key).is_none_or(|(at, _)| now >= *at)
    }

    /// Note a refusal; returns how many times this pod has been refused.
    fn refused(&mut self, key: &ObjectKey, now: Duration) -> u32 {
        let entry = self.0.entry(key.clone()).or_insert((now, 0));
        entry.1 += 1;
        let pause = Duration::from_secs(1u64 << (entry.1 - 1).min(4)).min(EVICTION_RETRY_MAX);
        entry.0 = now + pause;
        entry.1
    }
}

const DRAINED: &str = "Drained";

fn has_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == key))
}

fn has_finalizer(node: &Node) -> bool {
    node.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == labels::TERMINATION_FINALIZER)
}

/// The termination controller: which refused evictions wait, and until when.
#[derive(Debug, Default)]
pub(crate) struct Terminator {
    eviction_retries: EvictionRetries,
}

impl Terminator {
    /// Nodes being deleted that carry Dovetail's finalizer: taint, drain, terminate, release.
    pub(crate) async fn reconcile(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
        provider: &mut dyn CloudProvider,
    ) -> Result<(), ControllerError> {
        let names: Vec<String> = state
            .nodes
            .iter()
            .filter(|(_, n)| n.metadata.deletion_timestamp.is_some() && has_finalizer(n))
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            match self.terminate_node(ctx, state, provider, &name).await {
                Ok(()) => {}
                Err(ControllerError::Kube(
                    KubeError::Conflict { .. } | KubeError::NotFound { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        let pods = &state.pods;
        self.eviction_retries.0.retain(|k, _| pods.contains_key(k));
        Ok(())
    }

    async fn terminate_node(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
        provider: &mut dyn CloudProvider,
        name: &str,
    ) -> Result<(), ControllerError> {
        let Some(node) = state.nodes.get(name).cloned() else {
            return Ok(());
        };
        let Some(claim) = state.claim_of_node(&node).cloned() else {
            // Karpenter's rule: with the claim gone there is nothing left to drain for; GC handles the
            // instance if one is still running.
            ctx.journal.record(
                "termination",
                format!("node/{name} has no NodeClaim; releasing it"),
            );
            return ctx
                .release(Kind::Node, name, node.metadata.finalizers.clone())
                .await;
        };
        let claim_name = claim.metadata.name.clone().unwrap_or_default();
        if !has_taint(&node, labels::DISRUPTED_TAINT) {
            taint_disrupted(ctx, state, &node).await?;
            crate::nodeclaim::write_conditions(
                ctx,
                state,
                &claim_name,
                &[(DRAINED, false, "Draining", String::new())],
                &[],
            )
            .await?;
        }
        let now = ctx.clock.now();
        let deleted_at = node
            .metadata
            .deletion_timestamp
            .as_ref()
            .map_or(now, |t| t.0);
        let grace = claim
            .spec
            .termination_grace_period
            .as_deref()
            .and_then(|g| crate::duration::parse_or_never(g).ok().flatten());
        let from_grace = grace.and_then(|g| {
            jiff::SignedDuration::try_from(g)
                .ok()
                .and_then(|g| deleted_at.checked_add(g).ok())
        });
        // The claim's termination timestamp (node repair sets it to when it repaired) ends the drain too.
        let stamped = claim
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(labels::TERMINATION_TIMESTAMP))
            .and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let (deadline, deadline_by) = match (from_grace, stamped) {
            (Some(g), Some(t)) if g <= t => (Some(g), "terminationGracePeriod"),
            (_, Some(t)) => (Some(t), "termination timestamp"),
            (g, None) => (g, "terminationGracePeriod"),
        };
        // A node whose kubelet is gone cannot shut its pods down; Kubernetes removes them itself.
        let kubelet_gone =
            has_taint(&node, UNREACHABLE_TAINT) || state.instance_gone.contains(&claim_name);
        let step = if kubelet_gone {
            DrainStep {
                drained: true,
                ..DrainStep::default()
            }
        } else {
            let pods: Vec<(ObjectKey, &Pod)> = state
                .pods
                .iter()
                .filter(|(_, p)| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name))
                .map(|(k, p)| (k.clone(), p))
                .collect();
            plan_drain(&pods, now, deadline)
        };
        // Karpenter labels drained pods with why the node goes.
        let reason = claim
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "DisruptionReason"))
            .and_then(|c| c.reason.clone())
            .unwrap_or_default();
        self.carry_out_drain(ctx, &node, &step, &reason, deadline_by)
            .await?;
        if !step.drained {
            return Ok(());
        }
        let waited = crate::clock::since(now, deleted_at);
        let forced = if step.remaining > 0 && !kubelet_gone {
            format!(
                "; its termination time came with {} pods left",
                step.remaining
            )
        } else {
            String::new()
        };
        ctx.journal.record(
            "termination",
            format!(
                "node/{name} drained after {}s{forced}; terminating nodeclaim/{claim_name}",
                waited.as_secs()
            ),
        );
        // Karpenter's termination conditions: drained, no volumes left attached (Dovetail attaches none
        // yet, so at once), and the instance on its way out.
        crate::nodeclaim::write_conditions(
            ctx,
            state,
            &claim_name,
            &[
                (DRAINED, true, DRAINED, String::new()),
                ("VolumesDetached", true, "VolumesDetached", String::new()),
                (
                    "InstanceTerminating",
                    true,
                    "InstanceTerminating",
                    String::new(),
                ),
            ],
            &[],
        )
        .await?;
        if claim.metadata.deletion_timestamp.is_none() {
            ctx.delete_if_present(Kind::NodeClaim, &ObjectKey::cluster(&claim_name))
                .await?;
        }
        if let Some(id) = crate::nodeclaim::gc::claim_instance(provider, &claim)
            && provider.delete(&id).await?
        {
            crate::metrics::count_claim(
                &ctx.metrics,
                crate::metrics::NODECLAIMS_TERMINATED,
                &claim,
                &[],
            );
            ctx.journal
                .record("termination", format!("terminate {id} for node/{name}"))
        }
        // The claim's own finalizer need not ask the cloud again.
        state.instance_gone.insert(claim_name);
        ctx.release(Kind::Node, name, node.metadata.finalizers.clone())
            .await
    }

    /// Evict and delete as the step says; refused evictions wait their retry time. `deadline_by` names
    /// what set the deadline that turns evictions into deletions.
    async fn carry_out_drain(
        &mut self,
        ctx: &Context,
        node: &Node,
        step: &DrainStep,
        reason: &str,
        deadline_by: &str,
    ) -> Result<(), ControllerError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let now = ctx.now();
        let mut evicted: Vec<String> = Vec::new();
        // Refusals grouped by reason: one budget usually refuses many pods for the same reason.
        let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut deleted: Vec<String> = Vec::new();
        for action in &step.actions {
            match action {
                PodAction::Evict(key) => {
                    if !self.eviction_retries.due(key, now) {
                        continue;
                    }
                    let answer = ctx.kube.evict(key).await;
                    let code = match &answer {
                        Ok(()) => "200",
                        Err(KubeError::NotFound { .. }) => "404",
                        Err(KubeError::EvictionRefused { .. }) => "429",
                        Err(_) => "500",
                    };
                    ctx.metrics
                        .inc(crate::metrics::EVICTION_REQUESTS, &[("code", code)]);
                    match answer {
                        Ok(()) | Err(KubeError::NotFound { .. }) => evicted.push(key.to_string()),
                        Err(KubeError::EvictionRefused { reason, .. }) => {
                            if self.eviction_retries.refused(key, now) == 1 {
                                refused.entry(reason).or_default().push(key.to_string());
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                PodAction::Delete(key) => match ctx.kube.delete(Kind::Pod, key).await {
                    Ok(()) | Err(KubeError::NotFound { .. }) => deleted.push(key.to_string()),
                    Err(e) => return Err(e.into()),
                },
            }
        }
        for _ in evicted.iter().chain(&deleted) {
            ctx.metrics
                .inc(crate::metrics::PODS_DRAINED, &[("reason", reason)]);
        }
        let list = |v: &[String]| match v {
            [one] => format!("pod/{one}"),
            [first, rest @ ..] => format!("pod/{first} +{} more", rest.len()),
            [] => String::new(),
        };
        if !evicted.is_empty() {
            ctx.journal.record(
                "termination",
                format!(
                    "node/{name} evicted {} pods ({})",
                    evicted.len(),
                    list(&evicted)
                ),
            );
        }
        if !deleted.is_empty() {
            ctx.journal.record(
                "termination",
                format!(
                    "node/{name} {deadline_by}: deleted {} pods ({})",
                    deleted.len(),
                    list(&deleted)
                ),
            );
        }
        for (reason, pods) in &refused {
            let message = format!(
                "eviction refused for {} pods ({}): {reason}; retrying",
                pods.len(),
                list(pods)
            );
            ctx.journal
                .record("termination", format!("node/{name} {message}"));
            let uid = node.metadata.uid.clone();
            crate::events::emit(
                ctx,
                Kind::Node,
                &ObjectKey::cluster(&name),
                uid,
                EventType::Warning,
                "FailedDraining",
                &message,
            )
            .await;
        }
        Ok(())
    }
}

/// Keep new pods off a node that is going: `karpenter.sh/disrupted:NoSchedule`.
async fn taint_disrupted(
    ctx: &Context,
    state: &mut ClusterState,
    node: &Node,
) -> Result<(), ControllerError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    super::write_disrupted_taint(ctx, state, node, true).await?;
    ctx.journal.record(
        "termination",
        format!(
            "node/{name} tainted {}:NoSchedule; draining",
            labels::DISRUPTED_TAINT
        ),
    );
    let uid = node.metadata.uid.clone();
    crate::events::emit(
        ctx,
        Kind::Node,
        &ObjectKey::cluster(&name),
        uid,
        EventType::Normal,
        "DisruptionTerminating",
        "Draining the node through the eviction API before its instance is terminated",
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_evictions_back_off_up_to_ten_seconds() {
        let mut r = EvictionRetries::default();
        let k = ObjectKey::namespaced("a", "b");
        let now = Duration::from_secs(100);
        assert!(r.due(&k, now));
        let mut pauses = Vec::new();
        let mut at = now;
        for _ in 0..6 {
            r.refused(&k, at);
            let next = r.0[&k].0;
            pauses.push((next - at).as_secs());
            assert!(!r.due(&k, at));
            at = next;
            assert!(r.due(&k, at));
        }
        assert_eq!(pauses, [1, 2, 4, 8, 10, 10]);
    }
}
