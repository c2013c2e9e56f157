//! The NodePool status controller: writes Karpenter's `ValidationSucceeded`, `NodeClassReady` and `Ready`
//! conditions from validation and the node class's readiness (a pool that is not Ready launches nothing);
//! and, as Karpenter's counter and registration-health controllers, `status.resources`, `status.nodes`,
//! `status.nodeClassObservedGeneration` and `NodeRegistrationHealthy`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::registration::{Health, RegistrationHealth};
use super::validation::{Problem, validate};
use crate::cloudprovider::{CloudProvider, NodeClassReadiness};
use crate::conditions::Desired;
use crate::context::Context;
use crate::crds::{NodeClaim, NodePool};
use crate::kube::{Kind, ObjectKey};
use crate::state::ClusterState;

/// Writes each NodePool's status; holds the pools' registration outcomes (learned from NodeClaim events).
#[derive(Debug, Default)]
pub(crate) struct NodePoolStatus {
    registration: RegistrationHealth,
}

/// Why the pool's node class cannot launch: missing, or resolved to nothing usable. None while it is
/// fine or not yet resolved.
fn node_class_problem(
    provider: &dyn CloudProvider,
    state: &ClusterState,
    pool: &NodePool,
) -> Option<Problem> {
    let class = &pool.spec.template.spec.node_class_ref.name;
    let kind = provider.node_class_kind();
    match provider.node_class(state, class) {
        NodeClassReadiness::Missing => Some((
            "NodeClassNotFound",
            format!("spec.template.spec.nodeClassRef: {kind} `{class}` not found"),
        )),
        NodeClassReadiness::NotReady(problem) => Some((
            "NodeClassNotReady",
            format!("{kind} `{class}` is not ready: {problem}"),
        )),
        NodeClassReadiness::Unknown | NodeClassReadiness::Ready(_) => None,
    }
}

impl NodePoolStatus {
    /// A NodeClaim as the watch delivered it (`deleted`: its last state): registration outcomes.
    pub(crate) fn observe_claim(&mut self, claim: &NodeClaim, deleted: bool) {
        self.registration.observe(claim, deleted);
    }

    /// Karpenter's counter and registration health, every lifecycle pass: each pool's node count and the
    /// capacity of its NodeClaims, the node class generation seen, and `NodeRegistrationHealthy`; written
    /// only when they changed.
    pub(crate) async fn sync(&mut self, ctx: &Context, state: &mut ClusterState) {
        let pools = live_pools(state);
        for pool in pools {
            let name = pool.metadata.name.clone().unwrap_or_default();
            let mut usage = state.pool_usage(&name);
            let nodes = usage.get(crate::resources::NODES).units() as i64;
            // Karpenter always shows these four, at zero when the pool has nothing.
            for r in ["cpu", "memory", "pods", "ephemeral-storage"] {
                usage.0.entry(r.to_string()).or_default();
            }
            let resources = usage.to_quantities();
            let class_generation = state
                .nodeclasses
                .get(&pool.spec.template.spec.node_class_ref.name)
                .and_then(|c| c.metadata.generation)
                .unwrap_or(0);
            let status = pool.status.clone().unwrap_or_default();
            let old = crate::conditions::as_values(Some(&status.conditions));
            let written = old
                .iter()
                .find(|c| c["type"] == REGISTRATION_HEALTHY)
                .and_then(|c| match c["status"].as_str() {
                    Some("True") => Some(true),
                    Some("False") => Some(false),
                    _ => None,
                });
            self.registration.generations(
                &name,
                (pool.metadata.generation.unwrap_or(0), class_generation),
                written,
            );
            let (reason, message) = self.registration.failure(&name);
            let health = match self.registration.health(&name) {
                Health::Unknown => (None, "AwaitingReconciliation", String::new()),
                Health::Healthy => (Some(true), "", String::new()),
                Health::Unhealthy => (Some(false), reason, message.clone()),
            };
            let wanted: Vec<Desired> = vec![(REGISTRATION_HEALTHY, health.0, health.1, health.2)];
            let now = ctx.clock.now().to_string();
            let conditions = crate::conditions::merge(&old, &wanted, &now);
            let same_condition = old.iter().find(|c| c["type"] == REGISTRATION_HEALTHY)
                == conditions
                    .iter()
                    .find(|c| c["type"] == REGISTRATION_HEALTHY);
            if status.resources == resources
                && status.nodes == Some(nodes)
                && status.node_class_observed_generation == Some(class_generation)
                && same_condition
            {
                continue;
            }
            // Only what needs a person: turning unhealthy, and recovering from it.
            let was_false = old
                .iter()
                .any(|c| c["type"] == REGISTRATION_HEALTHY && c["status"] == "False");
            match health.0 {
                Some(false) if !was_false => ctx.journal.record(
                    "nodepool",
                    format!(
                        "nodepool/{name} NodeRegistrationHealthy=False ({reason}): {message}; half of its recent NodeClaims failed to launch or register"
                    ),
                ),
                Some(true) | None if was_false => ctx.journal.record(
                    "nodepool",
                    format!("nodepool/{name} NodeRegistrationHealthy no longer False"),
                ),
                _ => {}
            }
            let patch = json!({"status": {
                "resources": resources,
                "nodes": nodes,
                "nodeClassObservedGeneration": class_generation,
                "conditions": conditions,
            }});
            patch_pool_status(ctx, state, &name, patch).await;
        }
    }

    /// Write each pool's conditions where they changed; a pool turning not Ready (or Ready again) is a
    /// trace line.
    pub(crate) async fn reconcile(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
        provider: &dyn CloudProvider,
    ) {
        let pools = live_pools(state);
        for pool in pools {
            let name = pool.metadata.name.clone().unwrap_or_default();
            let invalid = validate(
                &pool,
                provider.instance_types(),
                &ctx.settings.feature_gates,
            )
            .err();
            let class = node_class_problem(provider, state, &pool);
            let class_known = !matches!(
                provider.node_class(state, &pool.spec.template.spec.node_class_ref.name),
                NodeClassReadiness::Missing | NodeClassReadiness::Unknown
            );
            let class_ok = match &class {
                Some(_) => Some(false),
                None if class_known => Some(true),
                None => None,
            };
            let ready = match (&invalid, class_ok) {
                (Some(_), _) | (_, Some(false)) => Some(false),
                (None, Some(true)) => Some(true),
                (None, None) => None,
            };
            let why = invalid.clone().or(class.clone());
            let message = |p: &Option<Problem>| p.as_ref().map(|p| p.1.clone()).unwrap_or_default();
            let reason = |p: &Option<Problem>, default| p.as_ref().map_or(default, |p| p.0);
            let wanted: Vec<Desired> = vec![
                (
                    "ValidationSucceeded",
                    Some(invalid.is_none()),
                    reason(&invalid, "Invalid"),
                    match &invalid {
                        Some(p) => p.1.clone(),
                        None => crate::crds::unacted::sentence(&crate::crds::unacted::nodepool(
                            &pool.spec,
                        )),
                    },
                ),
                (
                    "NodeClassReady",
                    class_ok,
                    reason(&class, "AwaitingReconciliation"),
                    message(&class),
                ),
                (
                    "Ready",
                    ready,
                    reason(&why, "AwaitingReconciliation"),
                    message(&why),
                ),
            ];
            let old =
                crate::conditions::as_values(pool.status.as_ref().map(|s| s.conditions.as_slice()));
            let now = ctx.clock.now().to_string();
            let conditions = crate::conditions::merge(&old, &wanted, &now);
            let essence = |list: &[Value]| -> BTreeMap<String, (Value, Value, Value)> {
                list.iter()
                    .map(|c| {
                        (
                            c["type"].as_str().unwrap_or_default().to_string(),
                            (
                                c["status"].clone(),
                                c["reason"].clone(),
                                c["message"].clone(),
                            ),
                        )
                    })
                    .collect()
            };
            if essence(&old) == essence(&conditions) {
                continue;
            }
            let noted =
                |list: &[Value]| crate::conditions::true_message(list, "ValidationSucceeded");
            let note = noted(&conditions);
            if !note.is_empty() && note != noted(&old) {
                ctx.journal
                    .record("nodepool", format!("nodepool/{name}: fields {note}"));
            }
            let was_ready = old
                .iter()
                .find(|c| c["type"] == "Ready")
                .map(|c| c["status"].clone());
            match (&why, was_ready) {
                (Some((reason, message)), _) if ready == Some(false) => ctx.journal.record(
                    "nodepool",
                    format!(
                        "nodepool/{name} not ready ({reason}): {message}; launching nothing from it"
                    ),
                ),
                (_, Some(s)) if s == "False" && ready == Some(true) => ctx
                    .journal
                    .record("nodepool", format!("nodepool/{name} ready again")),
                _ => {}
            }
            patch_pool_status(
                ctx,
                state,
                &name,
                json!({"status": {"conditions": conditions}}),
            )
            .await;
        }
    }
}

const REGISTRATION_HEALTHY: &str = "NodeRegistrationHealthy";

/// The pools not being deleted, copied out so their status can be written while iterating.
fn live_pools(state: &ClusterState) -> Vec<NodePool> {
    state
        .nodepools
        .values()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .cloned()
        .collect()
}

/// Merge-patch a pool's status and take the answer into the cache; a failure is a trace line and the next
/// pass writes it again.
async fn patch_pool_status(ctx: &Context, state: &mut ClusterState, name: &str, patch: Value) {
    match ctx
        .kube
        .patch_status(Kind::NodePool, &ObjectKey::cluster(name), patch)
        .await
    {
        Ok(updated) => {
            let _ = state.apply_event(Kind::NodePool, crate::kube::WatchEvent::Modified(updated));
        }
        Err(e) => ctx.journal.record(
            "nodepool",
            format!("nodepool/{name}: status not written: {e}; retrying next pass"),
        ),
    }
}
