//! What the planner is given, read from the cluster state: pending pods with their requirement
//! alternatives, what each NodePool may launch, and the room on existing nodes and claims. Shared by
//! provisioning and disruption's simulations.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;

use crate::cloudprovider::{CloudProvider, InstanceType, NodeClassReadiness};
use crate::context::Context;
use crate::crds::labels;
use crate::kube::ObjectKey;
use crate::quantity::Milli;
use crate::resources::{EBS_ATTACHMENTS, Resources, pod_requests};
use crate::scheduling::requirements::{Requirement, Requirements, normalize_key, restricted_label};
use crate::scheduling::topology::{HostPort, Strength, TermKind, host_ports, pod_terms};
use crate::scheduling::{ExistingCapacity, ExistingPod, PendingPod, PoolOptions};
use crate::state::{ClusterState, node_ready};

/// The labels every node of a pool carries: its template labels and `karpenter.sh/nodepool`.
pub(crate) fn node_labels(pool: &crate::crds::NodePool) -> BTreeMap<String, String> {
    let mut out = pool
        .spec
        .template
        .metadata
        .clone()
        .unwrap_or_default()
        .labels;
    out.insert(
        labels::NODEPOOL.to_string(),
        pool.metadata.name.clone().unwrap_or_default(),
    );
    out
}

/// A pod's node requirement alternatives in Karpenter's relaxation order: its nodeSelector with each
/// OR-ed required node-affinity term in turn, each with the heaviest preferred term; then the last required
/// term with each lighter preferred term in turn (heaviest first), and with none. The first
/// [`required_alternatives`] are the required terms. Only one preferred term applies at a time, so an
/// unsatisfiable heavy preference does not erase the lighter ones.
pub fn pod_requirements(pod: &Pod) -> Result<Vec<Requirements>, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let selector = spec.node_selector.unwrap_or_default();
    for key in selector.keys() {
        if let Some(why) = restricted_label(key) {
            return Err(format!("spec.nodeSelector: {why}"));
        }
    }
    let base = Requirements::from_labels(&selector);
    let node_affinity = spec.affinity.and_then(|a| a.node_affinity);
    let parse = |exprs: &[k8s_openapi::api::core::v1::NodeSelectorRequirement],
                 field: &str|
     -> Result<Requirements, String> {
        let mut r = Requirements::default();
        for e in exprs {
            if let Some(why) = restricted_label(&e.key) {
                return Err(format!("{field}: {why}"));
            }
            let req = Requirement::parse(
                normalize_key(&e.key),
                &e.operator,
                e.values.as_deref().unwrap_or_default(),
                None,
            )
            .map_err(|err| format!("{field}: {err}"))?;
            r.add(req);
        }
        Ok(r)
    };
    let mut required = Vec::new();
    if let Some(terms) = node_affinity.as_ref().and_then(|n| {
        n.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        for (i, t) in terms.node_selector_terms.iter().enumerate() {
            let field = format!(
                "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]"
            );
            // A node's name cannot be chosen before it exists (what DaemonSet pods use).
            if t.match_fields.as_ref().is_some_and(|f| !f.is_empty()) {
                return Err(format!(
                    "{field}.matchFields: selecting a node by field cannot be provisioned for"
                ));
            }
            required.push(base.merged(&parse(
                t.match_expressions.as_deref().unwrap_or_default(),
                &field,
            )?));
        }
    }
    if required.is_empty() {
        required.push(base);
    }
    let mut preferred: Vec<(i32, Requirements)> = Vec::new();
    for (i, t) in node_affinity
        .iter()
        .flat_map(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .iter()
                .flatten()
        })
        .enumerate()
    {
        let field = format!(
            "spec.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[{i}]"
        );
        if t.preference
            .match_fields
            .as_ref()
            .is_some_and(|f| !f.is_empty())
        {
            return Err(format!(
                "{field}.preference.matchFields: selecting a node by field cannot be provisioned for"
            ));
        }
        preferred.push((
            t.weight,
            parse(
                t.preference
                    .match_expressions
                    .as_deref()
                    .unwrap_or_default(),
                &field,
            )?,
        ));
    }
    // Heaviest first; equal weights keep their written order.
    preferred.sort_by_key(|p| std::cmp::Reverse(p.0));
    let heaviest = preferred.first().map(|(_, p)| p);
    let mut out: Vec<Requirements> = required
        .iter()
        .map(|r| heaviest.map_or_else(|| r.clone(), |p| r.merged(p)))
        .collect();
    if let Some(last) = required.last() {
        for (_, p) in preferred.iter().skip(1) {
            out.push(last.merged(p));
        }
        if heaviest.is_some() {
            out.push(last.clone());
        }
    }
    Ok(out)
}

/// How many of [`pod_requirements`]' alternatives are the pod's required node-affinity terms.
pub fn required_alternatives(pod: &Pod) -> usize {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map_or(1, |r| r.node_selector_terms.len().max(1))
}

fn pod_requests_or_log(ctx: &Context, key: &ObjectKey, pod: &Pod) -> Option<Resources> {
    match pod_requests(pod) {
        Ok(r) => Some(r),
        Err(e) => {
            ctx.journal
                .record("provision", format!("skip pod/{key}: {e}"));
            None
        }
    }
}

/// A pod as the planner sees it, or why it cannot be read.
pub fn pending_pod(key: &ObjectKey, pod: &Pod) -> Result<PendingPod, String> {
    let requests = pod_requests(pod).map_err(|e| e.to_string())?;
    let requirements = pod_requirements(pod)?;
    let topology = pod_terms(pod)?;
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    Ok(PendingPod {
        key: key.clone(),
        requests,
        requirements,
        required_alternatives: required_alternatives(pod),
        tolerations,
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        topology,
        host_ports: host_ports(pod),
        headroom: false,
    })
}

/// A pod in the cluster as the planner sees it: [`pending_pod`] with what its volumes ask (their zone
/// pinned into every requirement alternative, one EBS attachment per EBS-backed claim).
pub fn pending_pod_in(
    state: &ClusterState,
    key: &ObjectKey,
    pod: &Pod,
) -> Result<PendingPod, String> {
    let mut pending = pending_pod(key, pod)?;
    let volumes = super::volumes::pod_volumes(state, pod)?;
    if !volumes.requirements.0.is_empty() {
        for r in &mut pending.requirements {
            *r = r.merged(&volumes.requirements);
        }
    }
    pending.requests.add(&volumes.requests());
    Ok(pending)
}

/// The CapacityBuffers' chunks as the planner sees them (none with the gate off); a chunk that cannot
/// be read is left out (its buffer's resolution already said why).
pub(crate) fn headroom_pods(state: &ClusterState) -> Vec<PendingPod> {
    state
        .headroom
        .iter()
        .filter_map(|(key, pod)| pending_pod_in(state, key, pod).ok())
        .map(|p| PendingPod {
            headroom: true,
            ..p
        })
        .collect()
}

/// A pod as the planner sees it; None (with a trace line) when it cannot be read.
pub(crate) fn pending_pod_or_log(
    ctx: &Context,
    state: &ClusterState,
    key: &ObjectKey,
    pod: &Pod,
) -> Option<PendingPod> {
    pending_pod_in(state, key, pod)
        .map_err(|e| {
            ctx.journal
                .record("provision", format!("skip pod/{key}: {e}"))
        })
        .ok()
}

/// The NodePools the planner may launch from, and those it may not with why (for explanations).
pub(crate) struct Pools<'a> {
    pub usable: Vec<PoolOptions<'a>>,
    /// Static pools (`spec.replicas`): their nodes come from their replica count, never for pending
    /// pods (pods may still land on them as on any node).
    pub statics: Vec<PoolOptions<'a>>,
    pub skipped: Vec<(String, String)>,
}

/// What each ready NodePool may launch. A pool that failed validation or whose node class is not ready
/// is skipped, with why.
pub(crate) fn pool_options<'a>(
    state: &ClusterState,
    provider: &'a dyn CloudProvider,
    settings: &crate::context::Settings,
) -> Pools<'a> {
    let min_values_best_effort = settings.min_values_best_effort;
    let gates = &settings.feature_gates;
    let mut out = Vec::new();
    let mut statics = Vec::new();
    let mut skipped = Vec::new();
    for pool in state.nodepools.values() {
        let name = pool.metadata.name.clone().unwrap_or_default();
        if pool.metadata.deletion_timestamp.is_some()
            || provider.node_class(state, &pool.spec.template.spec.node_class_ref.name)
                == NodeClassReadiness::Missing
        {
            continue;
        }
        // What the NodePool's status reports as ValidationSucceeded=False launches nothing.
        let mut requirements =
            match crate::nodepool::validation::validate(pool, provider.instance_types(), gates) {
                Ok(r) => r,
                Err((_, why)) => {
                    skipped.push((name, why));
                    continue;
                }
            };
        // A class that resolves to nothing launches nothing; a class launches only where it has subnets.
        let class_name = &pool.spec.template.spec.node_class_ref.name;
        match provider.node_class(state, class_name) {
            NodeClassReadiness::NotReady(problem) => {
                let why = format!(
                    "{}/{class_name} not ready: {problem}",
                    provider.node_class_kind().to_lowercase()
                );
                skipped.push((name, why));
                continue;
            }
            NodeClassReadiness::Ready(zones) => {
                requirements.add(Requirement::in_values(labels::ZONE, zones));
            }
            NodeClassReadiness::Missing | NodeClassReadiness::Unknown => {}
        }
        // Karpenter launches on-demand unless a pool says otherwise.
        if requirements.get(labels::CAPACITY_TYPE).is_none() {
            requirements.add(Requirement::in_values(labels::CAPACITY_TYPE, ["on-demand"]));
        }
        requirements = requirements.merged(&Requirements::from_labels(&node_labels(pool)));
        let (daemon_overhead, daemon_ports) =
            daemon_overhead(state, &requirements, &pool.spec.template.spec.taints);
        let remaining_limits = pool.spec.limits.as_ref().and_then(|limits| {
            let limits = Resources::parse(limits).ok()?;
            let used = state.pool_usage(&name);
            // Only the resources the pool limits count; the rest are unbounded.
            Some(Resources(
                limits
                    .0
                    .iter()
                    .map(|(k, v)| (k.clone(), *v - used.get(k)))
                    .collect(),
            ))
        });
        let into = if pool.spec.replicas.is_some() {
            &mut statics
        } else {
            &mut out
        };
        into.push(PoolOptions {
            name,
            weight: pool.spec.weight.unwrap_or(0),
            requirements,
            taints: pool.spec.template.spec.taints.clone(),
            instance_types: provider
                .instance_types()
                .iter()
                .map(|it| crate::cloudprovider::class_type(provider, state, class_name, it))
                .collect(),
            daemon_overhead,
            daemon_ports,
            remaining_limits,
            min_values_best_effort,
        });
    }
    if gates.node_overlay {
        let applied = crate::nodepool::overlay::for_cluster(state, provider);
        crate::nodepool::overlay::apply_to(&applied, out.iter_mut().chain(statics.iter_mut()));
    }
    Pools {
        usable: out,
        statics,
        skipped,
    }
}

/// Requests and host ports of the DaemonSet pods that would run on a node of this pool: those whose node
/// selector and required node affinity (any term) the pool can satisfy and whose tolerations cover the
/// pool's taints.
fn daemon_overhead(
    state: &ClusterState,
    pool_requirements: &Requirements,
    taints: &[crate::crds::Taint],
) -> (Resources, Vec<(HostPort, String)>) {
    let mut total = Resources::default();
    let mut ports = Vec::new();
    for (key, ds) in &state.daemonsets {
        let Some(spec) = ds.spec.as_ref().and_then(|s| s.template.spec.clone()) else {
            continue;
        };
        let tolerations = spec.tolerations.clone().unwrap_or_default();
        let pod = Pod {
            metadata: Default::default(),
            spec: Some(spec),
            status: None,
        };
        // A template the planner cannot read is counted by its node selector alone.
        let alternatives = pod_requirements(&pod).unwrap_or_else(|_| {
            vec![Requirements::from_labels(
                &pod.spec
                    .as_ref()
                    .and_then(|s| s.node_selector.clone())
                    .unwrap_or_default(),
            )]
        });
        if !alternatives
            .iter()
            .any(|alt| pool_requirements.compatible(alt).is_ok())
            || crate::scheduling::taints::untolerated(&tolerations, taints).is_some()
        {
            continue;
        }
        if let Ok(r) = pod_requests(&pod) {
            total.add(&r);
        }
        ports.extend(host_ports(&pod).into_iter().map(|p| (p, key.to_string())));
    }
    (total, ports)
}

/// Room on nodes and on NodeClaims still coming up, so pods are not provisioned for twice.
pub(crate) fn existing_capacity(
    ctx: &Context,
    state: &ClusterState,
    leaving: &BTreeSet<String>,
    types: &[InstanceType],
) -> Vec<ExistingCapacity> {
    let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
    let mut bound: BTreeMap<&str, Vec<ExistingPod>> = BTreeMap::new();
    for (key, pod) in &state.pods {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        // Pods on a leaving node are planned as pending; they count for no topology where they are.
        if leaving.contains(node) {
            continue;
        }
        // Finished pods hold nothing and count for no topology.
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded") | Some("Failed")) {
            continue;
        }
        if let Some(r) = pod_requests_or_log(ctx, key, pod) {
            let u = used.entry(node).or_default();
            u.add(&r);
            u.add(&super::volumes::ebs_attachments(state, pod));
        }
        bound.entry(node).or_default().push(existing_pod(key, pod));
    }
    let mut out = Vec::new();
    let mut claimed_nodes = Vec::new();
    for claim in state.nodeclaims.values() {
        if claim.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = claim.metadata.name.clone().unwrap_or_default();
        let status = claim.status.clone().unwrap_or_default();
        let mut available = if !status.allocatable.is_empty() {
            Resources::parse(&status.allocatable).unwrap_or_default()
        } else {
            // Not launched yet: room for exactly what it was created for.
            claim
                .spec
                .resources
                .as_ref()
                .and_then(|r| Resources::parse(&r.requests).ok())
                .unwrap_or_default()
        };
        // The API does not carry attachment room: the node's CSINode says, else the smallest of the
        // claim's possible types.
        let node_limit = status
            .node_name
            .as_deref()
            .and_then(|n| super::volumes::csinode_limit(state, n));
        available.set(
            EBS_ATTACHMENTS,
            node_limit.unwrap_or_else(|| claim_ebs_limit(claim, types)),
        );
        let mut pods = Vec::new();
        if let Some(node) = &status.node_name {
            claimed_nodes.push(node.clone());
            // A cordoned node takes no new pods (`kubectl drain`, or someone's maintenance).
            let cordoned = state
                .nodes
                .get(node)
                .and_then(|n| n.spec.as_ref())
                .and_then(|s| s.unschedulable)
                .unwrap_or(false);
            if leaving.contains(node) || cordoned {
                continue;
            }
            if let Some(u) = used.get(node.as_str()) {
                available.sub(u);
            }
            pods = bound.remove(node.as_str()).unwrap_or_default();
        }
        // Until the node exists, a claim's labels are what its requirements pin to one value.
        let mut labels = claim.metadata.labels.clone().unwrap_or_default();
        if let Ok(reqs) = Requirements::from_node_selector(&claim.spec.requirements) {
            for r in reqs.to_node_selector() {
                if r.operator == "In" && r.values.len() == 1 {
                    labels
                        .entry(r.key.clone())
                        .or_insert_with(|| r.values[0].clone());
                }
            }
        }
        let node = status.node_name.as_deref().and_then(|n| state.nodes.get(n));
        out.push(ExistingCapacity {
            name: format!("nodeclaim/{name}"),
            available,
            labels,
            taints: claim_taints(claim, node),
            pods,
        });
    }
    for (name, node) in &state.nodes {
        if claimed_nodes.contains(name) || leaving.contains(name) {
            continue;
        }
        let used = used.get(name.as_str()).cloned().unwrap_or_default();
        let pods = bound.remove(name.as_str()).unwrap_or_default();
        let limit = super::volumes::csinode_limit(state, name).unwrap_or(UNLIMITED);
        out.extend(node_capacity(name, node, &used, pods).map(|mut c| {
            c.available
                .set(EBS_ATTACHMENTS, limit - used.get(EBS_ATTACHMENTS));
            c
        }));
    }
    out
}

/// Attachment room where nothing reports a limit (a node without a CSINode count): the scheduler then
/// imposes none either.
const UNLIMITED: Milli = Milli(1_000_000_000);

/// The attachment room a claim's node will have: the least of its instance types' (unlimited when its
/// types are unknown or report none).
fn claim_ebs_limit(claim: &crate::crds::NodeClaim, types: &[InstanceType]) -> Milli {
    let allowed: Option<&Vec<String>> = claim
        .spec
        .requirements
        .iter()
        .find(|r| r.key == labels::INSTANCE_TYPE && r.operator == "In")
        .map(|r| &r.values);
    types
        .iter()
        .filter(|it| allowed.is_none_or(|a| a.contains(&it.name)))
        .map(|it| {
            let room = it.allocatable.get(EBS_ATTACHMENTS);
            if room == Milli::ZERO { UNLIMITED } else { room }
        })
        .min()
        .unwrap_or(UNLIMITED)
}

/// A pod bound to a node as the planner counts it: labels for topology, its required anti-affinity and
/// its host ports.
pub fn existing_pod(key: &ObjectKey, pod: &Pod) -> ExistingPod {
    let anti_affinity = pod_terms(pod)
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.strength == Strength::Required && t.term.kind == TermKind::AntiAffinity)
        .map(|t| t.term)
        .collect();
    ExistingPod {
        namespace: key.namespace.clone(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        anti_affinity,
        host_ports: host_ports(pod),
    }
}

/// A node without a NodeClaim as room for pods: None unless it is Ready, schedulable and reports its
/// allocatable. `used` is what its bound pods request.
/// Taints Karpenter expects to go while a node initializes: the node lifecycle controller's not-ready and
/// unreachable taints, the cloud controller's uninitialized taint, Dovetail's unregistered taint and the
/// node readiness controller's `readiness.k8s.io/` family.
fn ephemeral_taint(t: &crate::crds::Taint) -> bool {
    matches!(
        (t.key.as_str(), t.effect.as_str()),
        ("node.kubernetes.io/not-ready", "NoSchedule" | "NoExecute")
            | ("node.kubernetes.io/unreachable", "NoSchedule")
            | (labels::UNREGISTERED_TAINT, "NoExecute")
    ) || (t.key == "node.cloudprovider.kubernetes.io/uninitialized"
        && t.effect == "NoSchedule"
        && t.value.as_deref() == Some("true"))
        || t.key.starts_with("readiness.k8s.io/")
}

/// A node's taints as the planner holds them against pods: all but the unregistered taint, which goes as
/// soon as Dovetail syncs the node and does not keep pods off.
fn held_taints(node: &k8s_openapi::api::core::v1::Node) -> Vec<crate::crds::Taint> {
    crate::state::node_taints_without(node, labels::UNREGISTERED_TAINT)
        .into_iter()
        .map(|t| crate::crds::Taint {
            key: t.key,
            value: t.value,
            effect: t.effect,
            time_added: None,
        })
        .collect()
}

/// The taints that keep pods off a claim's capacity, as Karpenter's cluster state reads them: the Node's
/// once it registered (a node tainted unreachable, or by hand, takes no pods that do not tolerate it),
/// the claim's before; until the node is initialized, taints expected to go (the ephemeral ones and the
/// claim's startup taints) are not held against it.
fn claim_taints(
    claim: &crate::crds::NodeClaim,
    node: Option<&k8s_openapi::api::core::v1::Node>,
) -> Vec<crate::crds::Taint> {
    let taints: Vec<crate::crds::Taint> = match node {
        Some(node) => held_taints(node),
        None => claim.spec.taints.clone(),
    };
    if claim.condition_true(crate::crds::nodeclaim::conditions::INITIALIZED) {
        return taints;
    }
    taints
        .into_iter()
        .filter(|t| {
            !ephemeral_taint(t)
                && !claim
                    .spec
                    .startup_taints
                    .iter()
                    .any(|s| s.key == t.key && s.effect == t.effect && s.value == t.value)
        })
        .collect()
}

pub fn node_capacity(
    name: &str,
    node: &k8s_openapi::api::core::v1::Node,
    used: &Resources,
    pods: Vec<ExistingPod>,
) -> Option<ExistingCapacity> {
    if !node_ready(node)
        || node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
    {
        return None;
    }
    let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref())?;
    let mut available = Resources::parse(alloc).unwrap_or_default();
    available.sub(used);
    let taints = held_taints(node);
    Some(ExistingCapacity {
        name: format!("node/{name}"),
        available,
        labels: node.metadata.labels.clone().unwrap_or_default(),
        taints,
        pods,
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "default"}, "spec": spec}),
        )
        .unwrap()
    }

    #[test]
    fn a_pod_selecting_a_hostname_gets_no_new_node() {
        let by_selector = pod(
            json!({"containers": [], "nodeSelector": {"kubernetes.io/hostname": "ip-10-0-0-1"}}),
        );
        let err = pod_requirements(&by_selector).unwrap_err();
        assert!(
            err.starts_with("spec.nodeSelector: label `kubernetes.io/hostname` is restricted"),
            "{err}"
        );
        let by_affinity = pod(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "node-role.kubernetes.io/worker", "operator": "Exists"}]}]}}}}));
        let err = pod_requirements(&by_affinity).unwrap_err();
        assert!(
            err.contains(
                "nodeSelectorTerms[0]: label `node-role.kubernetes.io/worker` is restricted"
            ),
            "{err}"
        );
        let by_field = pod(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]}}}}));
        assert!(
            pod_requirements(&by_field)
                .unwrap_err()
                .contains("matchFields")
        );
        // Well-known labels, node.kubernetes.io labels and custom labels are fine.
        let fine = pod(json!({"containers": [], "nodeSelector": {
            "topology.kubernetes.io/zone": "us-east-1a",
            "node.kubernetes.io/instance-type": "m5.large",
            "team": "web"}}));
        assert!(pod_requirements(&fine).is_ok());
    }

    #[test]
    fn alternatives_follow_karpenters_relaxation_order() {
        let p = pod(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]},
                {"matchExpressions": [{"key": "team", "operator": "In", "values": ["b"]}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}},
                {"weight": 80, "preference": {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["yes"]}]}}]}}}));
        let alts: Vec<String> = pod_requirements(&p)
            .unwrap()
            .iter()
            .map(|r| {
                r.0.values()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" & ")
            })
            .collect();
        assert_eq!(
            alts,
            [
                "gpu In [yes] & team In [a]",
                "gpu In [yes] & team In [b]",
                "disk In [ssd] & team In [b]",
                "team In [b]",
            ]
        );
        assert_eq!(required_alternatives(&p), 2);
    }

    #[test]
    fn a_registered_claim_is_held_to_its_nodes_taints() -> Result<(), serde_json::Error> {
        let claim = |initialized: bool| -> Result<crate::crds::NodeClaim, serde_json::Error> {
            let status = if initialized { "True" } else { "Unknown" };
            serde_json::from_value(json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
                "metadata": {"name": "c"},
                "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
                    "requirements": [],
                    "taints": [{"key": "team", "value": "a", "effect": "NoSchedule"}],
                    "startupTaints": [{"key": "cni", "effect": "NoSchedule"}]},
                "status": {"nodeName": "n", "conditions": [{"type": "Initialized", "status": status}]}}))
        };
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(json!({
        "metadata": {"name": "n"},
        "spec": {"taints": [
            {"key": "team", "value": "a", "effect": "NoSchedule"},
            {"key": "cni", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
            {"key": "karpenter.sh/unregistered", "effect": "NoExecute"},
        ]}}))?;
        let keys = |ts: Vec<crate::crds::Taint>| ts.into_iter().map(|t| t.key).collect::<Vec<_>>();
        // Initialized: every taint on the node counts but Dovetail's own unregistered one.
        assert_eq!(
            keys(claim_taints(&claim(true)?, Some(&node))),
            ["team", "cni", "node.kubernetes.io/unreachable"]
        );
        // Still initializing: ephemeral and startup taints are expected to go.
        assert_eq!(keys(claim_taints(&claim(false)?, Some(&node))), ["team"]);
        // Not registered: the claim's own taints.
        assert_eq!(keys(claim_taints(&claim(false)?, None)), ["team"]);
        Ok(())
    }
}
