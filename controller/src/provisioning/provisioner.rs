//! The provisioner: turns a closed batch into NodeClaims — gather pending pods and capacity, plan,
//! explain what cannot be placed, create the claims.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube_core::ObjectMeta;

use super::Batcher;
use super::inputs::{self, node_labels};
use crate::cloudprovider::CloudProvider;
use crate::context::Context;
use crate::crds::nodeclaim::ResourceRequirements;
use crate::crds::{NodeClaim, NodeClaimSpec, labels};
use crate::error::ControllerError;
use crate::events::EventType;
use crate::kube::{Kind, ObjectKey, encode};
use crate::metrics;
use crate::names;
use crate::node::drain::{Disposition, DrainGroup, disposition};
use crate::scheduling::requirements::Requirement;
use crate::scheduling::{ClaimPlan, PendingPod, plan};
use crate::state::{ClusterState, is_provisionable};

/// `,+N` for the items of a list of `len` not shown when only `shown` are printed.
fn more_suffix(len: usize, shown: usize) -> String {
    if len > shown {
        format!(",+{}", len - shown)
    } else {
        String::new()
    }
}

/// How many instance types a NodeClaim carries (and a CreateFleet call may try), as in Karpenter.
pub const MAX_INSTANCE_TYPES: usize = 60;

/// A pod a drain will move: on a node that is leaving, not a DaemonSet's, not already going.
fn displaced(pod: &Pod, leaving: &BTreeSet<String>) -> bool {
    let on_leaving = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some_and(|n| leaving.contains(n));
    on_leaving
        && pod.metadata.deletion_timestamp.is_none()
        && matches!(
            disposition(pod),
            Disposition::Drain(DrainGroup::Workload | DrainGroup::CriticalWorkload)
        )
}

/// The provisioner: the batch window and which pods it has already explained.
#[derive(Debug)]
pub(crate) struct Provisioner {
    pub batcher: Batcher,
    /// Pods already given an explanation Event, with the reason it gave.
    explained: BTreeMap<ObjectKey, String>,
    /// NodePools skipped at the last batch, with why: said once, and again only when the reason changes.
    skipped: BTreeMap<String, String>,
}

impl Provisioner {
    pub(crate) fn new(batcher: Batcher) -> Self {
        Provisioner {
            batcher,
            explained: BTreeMap::new(),
            skipped: BTreeMap::new(),
        }
    }

    /// Plan and create NodeClaims for the pods pending when a batch closed (`window` long).
    pub(crate) async fn provision(
        &mut self,
        ctx: &mut Context,
        state: &mut ClusterState,
        provider: &dyn CloudProvider,
        window: Duration,
        buffers: &mut super::buffers::Buffers,
    ) -> Result<(), ControllerError> {
        let leaving = state.leaving_nodes();
        // A pod whose spec cannot be provisioned for (a restricted label, a bad quantity) is explained
        // like one no pool can host.
        let mut pending: Vec<PendingPod> = Vec::new();
        let mut unreadable: Vec<(ObjectKey, String)> = Vec::new();
        for (key, pod) in &state.pods {
            if !(is_provisionable(pod) || displaced(pod, &leaving)) {
                continue;
            }
            match inputs::pending_pod_in(state, key, pod) {
                Ok(p) => pending.push(p),
                Err(why) => unreadable.push((key.clone(), why)),
            }
        }
        // CapacityBuffers' chunks, planned after every real pod: room kept ready for the next burst.
        let headroom = inputs::headroom_pods(state);
        if pending.is_empty() && unreadable.is_empty() && headroom.is_empty() {
            return Ok(());
        }
        let real = pending.len();
        pending.extend(headroom);
        let existing = inputs::existing_capacity(ctx, state, &leaving, provider.instance_types());
        let pools = inputs::pool_options(state, provider, &ctx.settings);
        for (name, why) in &pools.skipped {
            if self.skipped.get(name) != Some(why) {
                ctx.journal
                    .record("provision", format!("skip nodepool/{name}: {why}"));
            }
        }
        self.skipped = pools.skipped.iter().cloned().collect();
        let mut plan = plan(&pending, &existing, &pools.usable);
        // A pool left out names itself in every explanation: the pod may have been meant for it, and the
        // usable pools' reasons alone would point elsewhere.
        for (_, reason) in &mut plan.unschedulable {
            for (name, why) in &pools.skipped {
                reason.push_str(&format!("; nodepool \"{name}\" cannot launch: {why}"));
            }
        }
        let batch_size = real + unreadable.len();
        let chunks = pending.len() - real;
        plan.unschedulable.extend(unreadable);
        // A pass that only found the headroom where it was says nothing.
        let quiet = batch_size == 0 && plan.claims.is_empty();
        if !quiet {
            let on_existing = plan
                .on_existing
                .iter()
                .filter(|(k, _)| !super::buffers::is_virtual(k))
                .count();
            let headroom = if chunks > 0 {
                format!(" headroom={chunks}")
            } else {
                String::new()
            };
            ctx.journal.record(
                "provision",
                format!(
                    "batch pods={} window={:.2}s existing={} new-claims={} unschedulable={}{headroom}",
                    batch_size,
                    window.as_secs_f64(),
                    on_existing,
                    plan.claims.len(),
                    plan.unschedulable.len()
                ),
            );
        }
        record_by_reason(ctx, &plan.unschedulable, "cannot place", ":");
        let mut explanations = plan.unschedulable.clone();
        let waiting = waiting_on_failing_class(state, provider, &plan);
        record_by_reason(ctx, &waiting, "", " wait:");
        explanations.extend(waiting);
        self.explain_unschedulable(ctx, state, &explanations).await;
        let mut names = Vec::with_capacity(plan.claims.len());
        for claim in &plan.claims {
            names.push(create_nodeclaim(ctx, state, claim.clone(), BTreeMap::new()).await?);
        }
        if ctx.settings.feature_gates.capacity_buffer {
            buffers.record_plan(&plan, &names);
            buffers.write_statuses(ctx, state).await;
        }
        Ok(())
    }

    /// A Warning Event on each pod no NodePool can host, saying why — once per distinct reason, so users see
    /// the explanation in `kubectl describe pod` instead of a silent Pending.
    async fn explain_unschedulable(
        &mut self,
        ctx: &Context,
        state: &ClusterState,
        unschedulable: &[(ObjectKey, String)],
    ) {
        for (key, reason) in unschedulable {
            if self.explained.get(key) == Some(reason) {
                continue;
            }
            let uid = state.pods.get(key).and_then(|p| p.metadata.uid.clone());
            let message = format!("Dovetail cannot launch a node for this pod: {reason}");
            if crate::events::emit(
                ctx,
                Kind::Pod,
                key,
                uid,
                EventType::Warning,
                "FailedScheduling",
                &message,
            )
            .await
            {
                self.explained.insert(key.clone(), reason.clone());
            }
        }
        // Forget pods that were placed or are gone, so a later failure is explained again.
        let still: Vec<&ObjectKey> = unschedulable.iter().map(|(k, _)| k).collect();
        self.explained.retain(|k, _| still.contains(&k));
    }
}

/// One trace line per distinct reason, not per pod (a 500-replica Deployment must not flood the trace):
/// `{verb} N pods (pod/first,+more){sep} reason`.
fn record_by_reason(ctx: &Context, pods: &[(ObjectKey, String)], verb: &str, sep: &str) {
    let mut by_reason: BTreeMap<&str, Vec<&ObjectKey>> = BTreeMap::new();
    for (pod, reason) in pods {
        by_reason.entry(reason.as_str()).or_default().push(pod);
    }
    let verb = if verb.is_empty() {
        String::new()
    } else {
        format!("{verb} ")
    };
    for (reason, pods) in by_reason {
        let more = more_suffix(pods.len(), 1);
        ctx.journal.record(
            "provision",
            format!(
                "{verb}{} pods (pod/{}{more}){sep} {reason}",
                pods.len(),
                pods[0]
            ),
        );
    }
}

/// Pods planned onto capacity of a node class whose launches keep dying (a new claim of its pool, or a claim
/// of it still on its way), with the class's problem: they wait for a launch that is paused.
fn waiting_on_failing_class(
    state: &ClusterState,
    provider: &dyn CloudProvider,
    plan: &crate::scheduling::Plan,
) -> Vec<(ObjectKey, String)> {
    let class_of_pool = |pool: &str| {
        state
            .nodepools
            .get(pool)
            .map(|p| p.spec.template.spec.node_class_ref.name.clone())
    };
    let problem = |class: String| {
        provider.launch_problem(&class).map(|why| {
            format!(
                "launches of {}/{class} are paused: {why}",
                provider.node_class_kind().to_lowercase()
            )
        })
    };
    let mut out = Vec::new();
    for claim in &plan.claims {
        if let Some(why) = class_of_pool(&claim.pool).and_then(problem) {
            out.extend(
                claim
                    .pods
                    .iter()
                    .filter(|k| !super::buffers::is_virtual(k))
                    .map(|k| (k.clone(), why.clone())),
            );
        }
    }
    for (pod, capacity) in &plan.on_existing {
        if super::buffers::is_virtual(pod) {
            continue;
        }
        let Some(name) = capacity.strip_prefix("nodeclaim/") else {
            continue;
        };
        let Some(claim) = state.nodeclaims.get(name) else {
            continue;
        };
        let on_its_way = !claim.condition_true(crate::crds::nodeclaim::conditions::INITIALIZED);
        if on_its_way && let Some(why) = problem(claim.spec.node_class_ref.name.clone()) {
            out.push((pod.clone(), why));
        }
    }
    out
}

/// BestEffort minValues: lower each short `minValues` of the claim's requirements to what its types give
/// (dropping it at 0); what was relaxed, for the trace, or None when nothing was.
fn relax_min_values(
    reqs: &mut crate::scheduling::Requirements,
    short: &BTreeMap<String, usize>,
) -> Option<String> {
    for (key, have) in short {
        if let Some(r) = reqs.0.get_mut(key) {
            r.min_values = (*have > 0).then_some(*have);
        }
    }
    (!short.is_empty()).then(|| {
        short
            .iter()
            .map(|(k, n)| format!("{k} to {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Create a NodeClaim for a planned claim; returns its name (None when the pool is gone).
pub(crate) async fn create_nodeclaim(
    ctx: &mut Context,
    state: &mut ClusterState,
    plan: ClaimPlan,
    mut annotations: BTreeMap<String, String>,
) -> Result<Option<String>, ControllerError> {
    let Some(pool) = state.nodepools.get(&plan.pool).cloned() else {
        return Ok(None);
    };
    let name = names::generate(&plan.pool, &mut ctx.rng);
    // Replacements carry the disruption's annotations; plain provisioning none.
    let reason = if annotations.is_empty() {
        "provisioning"
    } else {
        "disruption"
    };
    let mut types = plan.instance_types.clone();
    types.truncate(MAX_INSTANCE_TYPES);
    // The claim carries the pool's requirements narrowed by its pods, and the instance types that fit.
    let mut reqs = plan.requirements.clone();
    reqs.0.remove(labels::INSTANCE_TYPE);
    reqs.add(Requirement::in_values(labels::INSTANCE_TYPE, types.clone()));
    if let Some(what) = relax_min_values(&mut reqs, &plan.min_values_relaxed) {
        annotations.insert(labels::MIN_VALUES_RELAXED.to_string(), "true".to_string());
        ctx.journal.record(
            "provision",
            format!("nodeclaim/{name}: minValues relaxed (MIN_VALUES_POLICY=BestEffort): {what}"),
        );
    }
    let requirements = reqs.to_node_selector();
    let mut claim_labels = node_labels(&pool);
    claim_labels.insert(
        labels::NODECLASS.to_string(),
        pool.spec.template.spec.node_class_ref.name.clone(),
    );
    let tmpl = &pool.spec.template.spec;
    let claim = NodeClaim {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(claim_labels),
            // What the pool's template looked like, so a later change shows as drift.
            annotations: Some({
                annotations.insert(
                    labels::POOL_HASH.to_string(),
                    crate::nodepool::pool_hash(&pool),
                );
                annotations
            }),
            finalizers: Some(vec![labels::TERMINATION_FINALIZER.to_string()]),
            ..Default::default()
        },
        spec: NodeClaimSpec {
            node_class_ref: tmpl.node_class_ref.clone(),
            requirements,
            resources: Some(ResourceRequirements {
                requests: plan.requests.to_quantities(),
            }),
            taints: tmpl.taints.clone(),
            startup_taints: tmpl.startup_taints.clone(),
            expire_after: tmpl.expire_after.clone(),
            termination_grace_period: tmpl.termination_grace_period.clone(),
        },
        status: None,
    };
    let value = encode(Kind::NodeClaim, &claim)?;
    let created = ctx.kube.create(Kind::NodeClaim, value).await?;
    state.apply_event(Kind::NodeClaim, crate::kube::WatchEvent::Added(created))?;
    ctx.metrics.inc(
        metrics::NODECLAIMS_CREATED,
        &[("nodepool", &plan.pool), ("reason", reason)],
    );
    let shown: Vec<&str> = types.iter().take(2).map(String::as_str).collect();
    let more = more_suffix(types.len(), 2);
    let chunks = plan
        .pods
        .iter()
        .filter(|k| super::buffers::is_virtual(k))
        .count();
    let headroom = if chunks > 0 {
        format!(" (headroom {chunks})")
    } else {
        String::new()
    };
    ctx.journal.record(
        "provision",
        format!(
            "create nodeclaim/{name} pool={} pods={}{headroom} {} types={}{more}",
            plan.pool,
            plan.pods.len(),
            plan.requests,
            shown.join(","),
        ),
    );
    Ok(Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_effort_lowers_short_min_values_and_says_what() -> Result<(), String> {
        let min_values = |reqs: &crate::scheduling::Requirements| {
            reqs.get(labels::INSTANCE_FAMILY).and_then(|r| r.min_values)
        };
        let mut reqs = crate::scheduling::Requirements::default();
        reqs.add(
            Requirement::parse(labels::INSTANCE_FAMILY, "Exists", &[], Some(3))
                .map_err(|e| e.to_string())?,
        );
        assert_eq!(relax_min_values(&mut reqs, &BTreeMap::new()), None);
        assert_eq!(min_values(&reqs), Some(3));
        let short = [(labels::INSTANCE_FAMILY.to_string(), 1)].into();
        assert_eq!(
            relax_min_values(&mut reqs, &short).as_deref(),
            Some("karpenter.k8s.aws/instance-family to 1")
        );
        assert_eq!(min_values(&reqs), Some(1));
        assert_eq!(reqs.to_node_selector()[0].min_values, Some(1));
        Ok(())
    }
}
