//! The NodeClaim lifecycle: launch through the cloud provider, then Registered, Initialized; and, once
//! deleted, the instance terminated and the finalizer released.

use std::time::Duration;

use serde_json::json;

use crate::cloudprovider::{CloudProvider, Instance, Launch};
use crate::context::Context;
use crate::crds::nodeclaim::conditions;
use crate::crds::{NodeClaim, labels};
use crate::error::ControllerError;
use crate::events::EventType;
use crate::kube::{Kind, KubeError, ObjectKey};
use crate::metrics;
use crate::state::{ClusterState, node_ready};

fn condition(type_: &str, reason: &str, now: &str) -> serde_json::Value {
    json!({"type": type_, "status": "True", "reason": reason, "lastTransitionTime": now})
}

/// The NodeClaim lifecycle controller. It keeps no state of its own: a claim's conditions are its record.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle;

impl Lifecycle {
    /// Move every unsettled claim one step: finalize, launch, register or initialize.
    pub(crate) async fn reconcile(
        &mut self,
        ctx: &mut Context,
        state: &mut ClusterState,
        provider: &mut dyn CloudProvider,
    ) -> Result<(), ControllerError> {
        // Settled claims (initialized, not deleting) are most of a large cluster and need nothing here.
        let names: Vec<String> = state
            .nodeclaims
            .iter()
            .filter(|(_, c)| {
                c.metadata.deletion_timestamp.is_some()
                    || !c.condition_true(conditions::INITIALIZED)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(claim) = state.nodeclaims.get(&name).cloned() else {
                continue;
            };
            let result = if claim.metadata.deletion_timestamp.is_some() {
                finalize(ctx, state, provider, &claim).await
            } else if !claim.condition_true(conditions::LAUNCHED) {
                self.launch(ctx, state, provider, &claim).await
            } else if !claim.condition_true(conditions::REGISTERED) {
                register(ctx, state, provider, &claim).await
            } else if !claim.condition_true(conditions::INITIALIZED) {
                initialize(ctx, state, &claim).await
            } else {
                Ok(())
            };
            match result {
                Ok(()) => {}
                // Someone else changed or removed it; the watch brings the new state.
                Err(ControllerError::Kube(
                    KubeError::Conflict { .. } | KubeError::NotFound { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn launch(
        &mut self,
        ctx: &mut Context,
        state: &mut ClusterState,
        provider: &mut dyn CloudProvider,
        claim: &NodeClaim,
    ) -> Result<(), ControllerError> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let key = ObjectKey::cluster(&name);
        match provider.create(ctx, state, claim).await? {
            Launch::Waiting => Ok(()),
            Launch::Adopted(instance) => {
                ctx.journal.record(
                    "lifecycle",
                    format!(
                        "nodeclaim/{name} adopts {}: launched before a restart, not yet recorded",
                        instance.id
                    ),
                );
                mark_launched(ctx, state, provider, claim, &instance).await
            }
            Launch::Launched(instance) => {
                mark_launched(ctx, state, provider, claim, &instance).await
            }
            Launch::NoOffering => {
                ctx.journal.record(
                    "lifecycle",
                    format!(
                        "nodeclaim/{name} has no available offering left; deleting it to re-plan"
                    ),
                );
                ctx.kube.delete(Kind::NodeClaim, &key).await?;
                Ok(())
            }
            Launch::Failed(f) => {
                let codes = f.codes.join(",");
                // `kubectl describe nodeclaim` says why it did not launch (Karpenter's event reasons).
                crate::events::emit(
                    ctx,
                    Kind::NodeClaim,
                    &key,
                    claim.metadata.uid.clone(),
                    EventType::Warning,
                    if f.capacity {
                        "InsufficientCapacityError"
                    } else {
                        "LaunchFailed"
                    },
                    &f.message,
                )
                .await;
                if f.capacity {
                    // Karpenter's answer to insufficient capacity: forget this claim and plan again
                    // without the offerings that just failed.
                    ctx.journal.record(
                        "lifecycle",
                        format!(
                            "nodeclaim/{name} launch failed: {codes}; {} offerings unavailable for 3m; deleting the claim to re-plan",
                            f.unavailable_marked
                        ),
                    );
                    ctx.kube.delete(Kind::NodeClaim, &key).await?;
                } else {
                    ctx.journal.record(
                        "lifecycle",
                        format!("nodeclaim/{name} launch failed: {codes}; retrying"),
                    );
                }
                Ok(())
            }
        }
    }
}

/// Record a launched (or adopted) instance on its claim: labels, providerID, capacity, `Launched`.
async fn mark_launched(
    ctx: &Context,
    state: &mut ClusterState,
    provider: &dyn CloudProvider,
    claim: &NodeClaim,
    instance: &Instance,
) -> Result<(), ControllerError> {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let key = ObjectKey::cluster(&name);
    let it = provider
        .instance_types()
        .iter()
        .find(|t| t.name == instance.instance_type)
        .map(|t| {
            crate::cloudprovider::class_type(provider, state, &claim.spec.node_class_ref.name, t)
        });
    let (capacity, allocatable) = it
        .as_ref()
        .map(|t| (t.capacity.to_quantities(), t.allocatable.to_quantities()))
        .unwrap_or_default();
    let price = it
        .as_ref()
        .and_then(|t| t.price(&instance.zone, instance.capacity_type))
        .unwrap_or(0.0);
    let mut new_labels = json!({
        labels::INSTANCE_TYPE: instance.instance_type,
        labels::ZONE: instance.zone,
        labels::CAPACITY_TYPE: instance.capacity_type.as_str(),
    });
    for (k, v) in &instance.offering_labels {
        new_labels[k] = json!(v);
    }
    ctx.kube
        .patch(
            Kind::NodeClaim,
            &key,
            json!({"metadata": {"labels": new_labels}}),
        )
        .await?;
    let now = ctx.clock.now().to_string();
    let updated = ctx
        .kube
        .patch_status(
            Kind::NodeClaim,
            &key,
            json!({"status": {
                "providerID": instance.provider_id,
                "imageID": instance.image_id,
                "capacity": capacity,
                "allocatable": allocatable,
                "conditions": [condition(conditions::LAUNCHED, "Launched", &now)],
            }}),
        )
        .await?;
    state.apply_event(Kind::NodeClaim, crate::kube::WatchEvent::Modified(updated))?;
    metrics::count_claim(&ctx.metrics, metrics::NODECLAIMS_LAUNCHED, claim, &[]);
    ctx.journal.record(
        "lifecycle",
        format!(
            "launched nodeclaim/{name} {} {} {} {} {:.4}/h",
            instance.id, instance.instance_type, instance.zone, instance.capacity_type, price
        ),
    );
    Ok(())
}

/// A claim whose node appeared: sync labels, finalizer and taints onto the node, then `Registered`.
async fn register(
    ctx: &Context,
    state: &mut ClusterState,
    provider: &mut dyn CloudProvider,
    claim: &NodeClaim,
) -> Result<(), ControllerError> {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let provider_id = claim
        .status
        .as_ref()
        .and_then(|s| s.provider_id.clone())
        .unwrap_or_default();
    let Some((node_name, node)) = state
        .nodes
        .iter()
        .find(|(_, n)| {
            n.spec.as_ref().and_then(|s| s.provider_id.as_deref()) == Some(provider_id.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
    else {
        return Ok(());
    };
    // Sync what the claim promises onto the node: its labels, the termination finalizer, and drop the
    // unregistered taint that kept pods off it until now.
    let mut node_labels = claim.metadata.labels.clone().unwrap_or_default();
    node_labels.insert(labels::REGISTERED.to_string(), "true".to_string());
    let mut finalizers = node.metadata.finalizers.clone().unwrap_or_default();
    if !finalizers
        .iter()
        .any(|f| f == labels::TERMINATION_FINALIZER)
    {
        finalizers.push(labels::TERMINATION_FINALIZER.to_string());
    }
    let taints = crate::state::node_taints_without(&node, labels::UNREGISTERED_TAINT);
    ctx
            .kube
            .patch(
                Kind::Node,
                &ObjectKey::cluster(&node_name),
                json!({"metadata": {"labels": node_labels, "finalizers": finalizers}, "spec": {"taints": taints}}),
            )
            .await?;
    super::write_status(
        ctx,
        state,
        &name,
        &[(conditions::REGISTERED, true, "Registered", String::new())],
        &[],
        json!({"nodeName": node_name}),
    )
    .await?;
    metrics::count_claim(&ctx.metrics, metrics::NODECLAIMS_REGISTERED, claim, &[]);
    ctx.journal.record(
        "lifecycle",
        format!("registered nodeclaim/{name} node={node_name}"),
    );
    provider.registered(ctx, state, claim).await;
    Ok(())
}

/// A registered claim whose node is Ready without startup taints: `Initialized`.
async fn initialize(
    ctx: &Context,
    state: &mut ClusterState,
    claim: &NodeClaim,
) -> Result<(), ControllerError> {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let Some(node_name) = claim.status.as_ref().and_then(|s| s.node_name.clone()) else {
        return Ok(());
    };
    let Some(node) = state.nodes.get(&node_name) else {
        return Ok(());
    };
    if !node_ready(node) {
        return Ok(());
    }
    let startup_keys: Vec<&str> = claim
        .spec
        .startup_taints
        .iter()
        .map(|t| t.key.as_str())
        .collect();
    let has_startup_taint = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| startup_keys.contains(&t.key.as_str())));
    if has_startup_taint {
        return Ok(());
    }
    ctx.kube
        .patch(
            Kind::Node,
            &ObjectKey::cluster(&node_name),
            json!({"metadata": {"labels": {labels::INITIALIZED: "true"}}}),
        )
        .await?;
    super::write_status(
        ctx,
        state,
        &name,
        &[
            (conditions::INITIALIZED, true, "Initialized", String::new()),
            (conditions::READY, true, "Ready", String::new()),
        ],
        &[],
        serde_json::Value::Null,
    )
    .await?;
    metrics::count_claim(&ctx.metrics, metrics::NODECLAIMS_INITIALIZED, claim, &[]);
    ctx.journal.record(
        "lifecycle",
        format!("initialized nodeclaim/{name} node={node_name}"),
    );
    Ok(())
}

/// A deleted claim: its node is deleted and drained first (see `node::termination`), then the instance is
/// terminated and the finalizer released so the claim goes.
async fn finalize(
    ctx: &Context,
    state: &mut ClusterState,
    provider: &mut dyn CloudProvider,
    claim: &NodeClaim,
) -> Result<(), ControllerError> {
    let name = claim.metadata.name.clone().unwrap_or_default();
    let node = claim
        .status
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .and_then(|n| state.nodes.get(&n).cloned())
        .or_else(|| {
            let provider = claim.status.as_ref()?.provider_id.clone()?;
            state
                .nodes
                .values()
                .find(|n| n.spec.as_ref().and_then(|s| s.provider_id.as_ref()) == Some(&provider))
                .cloned()
        });
    if let Some(node) = node {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        if node.metadata.deletion_timestamp.is_none() {
            ctx.delete_if_present(Kind::Node, &ObjectKey::cluster(&node_name))
                .await?;
            return Ok(());
        }
        let ours = node
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == labels::TERMINATION_FINALIZER);
        if ours {
            // The node's drain decides when the instance may go.
            return Ok(());
        }
    }
    let already_gone = state.instance_gone.contains(&name);
    let id = super::gc::claim_instance(provider, claim);
    if let Some(id) = id.filter(|_| !already_gone) {
        // Terminating is idempotent; an unknown instance soon after launch is the cloud's eventual
        // consistency, later it means the instance is long gone.
        if provider.delete(&id).await? {
            metrics::count_claim(&ctx.metrics, metrics::NODECLAIMS_TERMINATED, claim, &[]);
            ctx.journal
                .record("lifecycle", format!("terminate {id} for nodeclaim/{name}"));
        } else {
            let launched = claim
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0)
                .unwrap_or(ctx.clock.now());
            if crate::clock::since(ctx.clock.now(), launched) < Duration::from_secs(60) {
                return Ok(());
            }
        }
    }
    state.instance_gone.remove(&name);
    ctx.release(Kind::NodeClaim, &name, claim.metadata.finalizers.clone())
        .await?;
    Ok(())
}
