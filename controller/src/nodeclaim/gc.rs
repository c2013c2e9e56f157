//! Garbage collection and liveness: claims whose instance died or never came (Karpenter's liveness
//! TTLs), instances no claim owns (a launch leaked by a crash), and Nodes left behind by either.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::cloudprovider::{CloudProvider, Instance, InstanceState};
use crate::context::Context;
use crate::crds::nodeclaim::conditions;
use crate::crds::{NodeClaim, labels};
use crate::error::ControllerError;
use crate::kube::{Kind, ObjectKey};
use crate::state::ClusterState;

/// How often instances are compared with NodeClaims.
pub const GC_INTERVAL: Duration = Duration::from_secs(30);
/// An instance this young with no claim may be a launch whose claim update is still on its way.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);
/// Karpenter's liveness: a claim not launched in 5 minutes, or not registered 15 minutes after creation,
/// is deleted and its pods planned again.
pub const LAUNCH_TTL: Duration = Duration::from_secs(5 * 60);
pub const REGISTRATION_TTL: Duration = Duration::from_secs(15 * 60);

/// The provider's id of a claim's instance, if it launched one.
pub(crate) fn claim_instance(provider: &dyn CloudProvider, claim: &NodeClaim) -> Option<String> {
    claim
        .status
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(|p| provider.instance_id(p))
}

/// The garbage collector: claims whose instance died, vanished or never came; instances and Nodes no
/// claim owns. It keeps no state of its own.
#[derive(Debug, Default)]
pub(crate) struct GarbageCollector;

impl GarbageCollector {
    /// One garbage-collection pass. Untagged instances and other clusters' never appear in the listing, so
    /// they are never touched.
    pub(crate) async fn reconcile(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
        provider: &mut dyn CloudProvider,
    ) -> Result<(), ControllerError> {
        let instances = provider.list(ctx).await?;
        let now = ctx.now();
        let wall = ctx.clock.now();
        let claims: Vec<NodeClaim> = state.nodeclaims.values().cloned().collect();
        for claim in &claims {
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = claim.metadata.name.clone().unwrap_or_default();
            let age = claim
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| crate::clock::since(wall, t.0))
                .unwrap_or_default();
            let launched = claim.condition_true(conditions::LAUNCHED);
            let registered = claim.condition_true(conditions::REGISTERED);
            // A claim held back by a launch pause waits by our choice, not because it is stuck.
            let paused = provider.launch_paused(claim, now);
            let why = if !launched && !paused && age >= LAUNCH_TTL {
                Some(format!("not launched after {}s", LAUNCH_TTL.as_secs()))
            } else if launched && !registered && age >= REGISTRATION_TTL {
                Some(format!(
                    "not registered after {}s",
                    REGISTRATION_TTL.as_secs()
                ))
            } else if let Some(id) = claim_instance(provider, claim) {
                match instances.get(&id) {
                    Some(i)
                        if matches!(
                            i.state,
                            InstanceState::Terminated | InstanceState::ShuttingDown
                        ) =>
                    {
                        let reason = i
                            .state_reason
                            .clone()
                            .unwrap_or_else(|| "no reason given".into());
                        if !registered {
                            provider
                                .launch_died(ctx, state, claim, &id, &reason, now)
                                .await;
                        }
                        state.instance_gone.insert(name.clone());
                        Some(format!("instance {id} is {} ({reason})", i.state.as_str()))
                    }
                    // Just launched instances may not be listed yet (eventual consistency).
                    None if claim
                        .condition_time(conditions::LAUNCHED)
                        .is_none_or(|t| crate::clock::since(wall, t) >= ORPHAN_GRACE) =>
                    {
                        state.instance_gone.insert(name.clone());
                        Some(format!("instance {id} no longer exists"))
                    }
                    _ => None,
                }
            } else {
                None
            };
            if let Some(why) = why {
                ctx.journal
                    .record("gc", format!("delete nodeclaim/{name}: {why}"));
                // `kubectl describe nodeclaim` shows why it went.
                crate::events::emit(
                    ctx,
                    Kind::NodeClaim,
                    &ObjectKey::cluster(&name),
                    claim.metadata.uid.clone(),
                    crate::events::EventType::Warning,
                    "GarbageCollected",
                    &format!("Deleting this NodeClaim: {why}"),
                )
                .await;
                ctx.kube
                    .delete(Kind::NodeClaim, &ObjectKey::cluster(&name))
                    .await?;
            }
        }
        // Instances whose claim is gone: a launch whose claim update was lost (a restart), or a claim
        // deleted behind our back. Terminate them once they are past the grace period.
        let mut orphans = Vec::new();
        for (id, i) in &instances {
            if !matches!(i.state, InstanceState::Pending | InstanceState::Running) {
                continue;
            }
            let owner = i.nodeclaim.as_ref();
            let recorded = state
                .nodeclaims
                .values()
                .any(|c| claim_instance(provider, c).as_deref() == Some(id.as_str()));
            // A claim without a provider id may still be recording this launch (or adopt it after a
            // restart); a claim that recorded another instance does not own this one: it leaked.
            let owner_claim = owner.and_then(|n| state.nodeclaims.get(n));
            let in_flight = owner_claim.is_some_and(|c| claim_instance(provider, c).is_none());
            if !recorded && !in_flight && crate::clock::since(wall, i.launch_time) >= ORPHAN_GRACE {
                orphans.push(id.clone());
                let why = match (owner, owner_claim.and_then(|c| claim_instance(provider, c))) {
                    (None, _) => "no nodeclaim tag".to_string(),
                    (Some(n), Some(other)) => format!("nodeclaim/{n} runs on {other}"),
                    (Some(n), None) => format!("nodeclaim/{n} not found"),
                };
                ctx.journal.record(
                    "gc",
                    format!("terminate orphan {id} ({why}): no NodeClaim owns it"),
                );
            }
        }
        if !orphans.is_empty() {
            provider.delete_orphans(orphans).await?;
        }
        collect_lost_nodes(ctx, state, provider, &instances).await
    }
}

/// Nodes of a NodePool whose instance is gone and that no NodeClaim owns (a leaked launch's node after
/// its instance was terminated): delete them so their pods are rescheduled and the count is honest.
async fn collect_lost_nodes(
    ctx: &Context,
    state: &ClusterState,
    cloud: &dyn CloudProvider,
    instances: &BTreeMap<String, Instance>,
) -> Result<(), ControllerError> {
    let wall = ctx.clock.now();
    let mut lost = Vec::new();
    // Node names and provider ids some claim records, to ask once per node instead of scanning claims.
    let owned: std::collections::BTreeSet<&str> = state
        .nodeclaims
        .values()
        .filter_map(|c| c.status.as_ref())
        .flat_map(|s| [s.node_name.as_deref(), s.provider_id.as_deref()])
        .flatten()
        .collect();
    for (name, node) in &state.nodes {
        let provider = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
        let managed = node
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(labels::NODEPOOL));
        if !managed
            || node.metadata.deletion_timestamp.is_some()
            || owned.contains(name.as_str())
            || provider.is_some_and(|p| owned.contains(p))
        {
            continue;
        }
        let Some(id) = provider.and_then(|p| cloud.instance_id(p)) else {
            continue;
        };
        let gone = match instances.get(&id) {
            Some(i) => matches!(
                i.state,
                InstanceState::Terminated | InstanceState::ShuttingDown
            ),
            // Not listed: gone, unless the node is too young for the listing to have caught up.
            None => node
                .metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|t| crate::clock::since(wall, t.0) >= ORPHAN_GRACE),
        };
        if gone {
            lost.push((name.clone(), id));
        }
    }
    for (name, id) in lost {
        ctx.journal.record(
            "gc",
            format!("delete node/{name}: instance {id} is gone and no NodeClaim owns the node"),
        );
        ctx.delete_if_present(Kind::Node, &ObjectKey::cluster(&name))
            .await?;
    }
    Ok(())
}
