//! Turns a closed batch into NodeClaims: gather pending pods and capacity, plan, create the claims.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube_core::ObjectMeta;

use crate::crds::nodeclaim::ResourceRequirements;
use crate::crds::{NodeClaim, NodeClaimSpec, labels};
use crate::error::ControllerError;
use crate::events::EventType;
use crate::kube::{Kind, ObjectKey, encode};
use crate::metrics;
use crate::names;
use crate::resources::{Resources, pod_requests};
use crate::run::Controller;
use crate::scheduling::requirements::{Requirement, Requirements, normalize_key};
use crate::scheduling::topology::{Strength, TermKind, host_ports, pod_terms};
use crate::scheduling::{ClaimPlan, ExistingCapacity, ExistingPod, PendingPod, PoolOptions, plan};
use crate::state::{is_provisionable, node_ready};
use crate::termination::{Disposition, DrainGroup, disposition};

/// The labels every node of a pool carries: its template labels and `karpenter.sh/nodepool`.
fn node_labels(pool: &crate::crds::NodePool) -> BTreeMap<String, String> {
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

/// A pod's node requirement alternatives, strictest first: its nodeSelector with each required node
/// affinity term (OR-ed terms, in order), each first with all preferred terms and then relaxing them one at
/// a time from the lightest — Karpenter's documented relaxation order for node affinity.
pub fn pod_requirements(pod: &Pod) -> Result<Vec<Requirements>, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let base = Requirements::from_labels(&spec.node_selector.unwrap_or_default());
    let node_affinity = spec.affinity.and_then(|a| a.node_affinity);
    let parse = |exprs: &[k8s_openapi::api::core::v1::NodeSelectorRequirement],
                 field: &str|
     -> Result<Requirements, String> {
        let mut r = Requirements::default();
        for e in exprs {
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
    preferred.sort_by_key(|p| std::cmp::Reverse(p.0));
    let mut out = Vec::new();
    for req in &required {
        for keep in (0..=preferred.len()).rev() {
            let mut r = req.clone();
            for (_, p) in preferred.iter().take(keep) {
                r = r.merged(p);
            }
            out.push(r);
        }
    }
    Ok(out)
}

fn pod_requests_or_log(c: &Controller, key: &ObjectKey, pod: &Pod) -> Option<Resources> {
    match pod_requests(pod) {
        Ok(r) => Some(r),
        Err(e) => {
            c.ctx
                .journal
                .record("provision", format!("skip pod/{key}: {e}"));
            None
        }
    }
}

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

impl Controller {
    /// Nodes on their way out — deleted, or owned by a deleted claim. Their pods are planned for before
    /// they are evicted, as Karpenter does, so replacements are already coming. (A node only tainted by a
    /// disruption command in progress is not leaving yet: its replacements are already planned, and if
    /// they fail the taint is rolled back.)
    pub(crate) fn leaving_nodes(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .state
            .nodes
            .iter()
            .filter(|(_, n)| n.metadata.deletion_timestamp.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        out.extend(
            self.state
                .nodeclaims
                .values()
                .filter(|c| c.metadata.deletion_timestamp.is_some())
                .filter_map(|c| c.status.as_ref().and_then(|s| s.node_name.clone())),
        );
        out
    }

    /// A pod as the planner sees it; None (with a trace line) when it cannot be read.
    pub(crate) fn pending_pod(&self, key: &ObjectKey, pod: &Pod) -> Option<PendingPod> {
        let requests = pod_requests_or_log(self, key, pod)?;
        let parsed = pod_requirements(pod).and_then(|r| pod_terms(pod).map(|t| (r, t)));
        let (requirements, topology) = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.ctx
                    .journal
                    .record("provision", format!("skip pod/{key}: {e}"));
                return None;
            }
        };
        let tolerations = pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.clone())
            .unwrap_or_default();
        Some(PendingPod {
            key: key.clone(),
            requests,
            requirements,
            tolerations,
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            topology,
            host_ports: host_ports(pod),
        })
    }

    /// What each ready NodePool may launch. A pool whose requirements do not parse is skipped, with a line.
    pub(crate) fn pool_options(&self) -> Vec<PoolOptions<'_>> {
        let mut out = Vec::new();
        for pool in self.state.nodepools.values() {
            let name = pool.metadata.name.clone().unwrap_or_default();
            if pool.metadata.deletion_timestamp.is_some()
                || !self
                    .state
                    .nodeclasses
                    .contains_key(&pool.spec.template.spec.node_class_ref.name)
            {
                continue;
            }
            // What the NodePool's status reports as ValidationSucceeded=False launches nothing.
            let mut requirements = match crate::poolstatus::validate(pool, &self.instance_types) {
                Ok(r) => r,
                Err((_, why)) => {
                    self.ctx
                        .journal
                        .record("provision", format!("skip nodepool/{name}: {why}"));
                    continue;
                }
            };
            // A class that resolves to nothing launches nothing; a class launches only where it has subnets.
            let class_name = &pool.spec.template.spec.node_class_ref.name;
            if let Some(resolved) = self.class_cache.get(class_name) {
                if let Some(problem) = resolved.not_ready() {
                    self.ctx.journal.record(
                        "provision",
                        format!(
                            "skip nodepool/{name}: ec2nodeclass/{class_name} not ready: {problem}"
                        ),
                    );
                    continue;
                }
                requirements.add(Requirement::in_values(labels::ZONE, resolved.zones()));
            }
            // Karpenter launches on-demand unless a pool says otherwise.
            if requirements.get(labels::CAPACITY_TYPE).is_none() {
                requirements.add(Requirement::in_values(labels::CAPACITY_TYPE, ["on-demand"]));
            }
            requirements = requirements.merged(&Requirements::from_labels(&node_labels(pool)));
            let daemon_overhead =
                self.daemon_overhead(&requirements, &pool.spec.template.spec.taints);
            let remaining_limits = pool.spec.limits.as_ref().and_then(|limits| {
                let limits = Resources::parse(limits).ok()?;
                let used = self.pool_usage(&name);
                // Only the resources the pool limits count; the rest are unbounded.
                Some(Resources(
                    limits
                        .0
                        .iter()
                        .map(|(k, v)| (k.clone(), *v - used.get(k)))
                        .collect(),
                ))
            });
            out.push(PoolOptions {
                name,
                weight: pool.spec.weight.unwrap_or(0),
                requirements,
                taints: pool.spec.template.spec.taints.clone(),
                instance_types: self.instance_types.iter().collect(),
                daemon_overhead,
                remaining_limits,
            });
        }
        out
    }

    /// Requests of the DaemonSet pods that would run on a node of this pool: those whose node selector
    /// the pool can satisfy and whose tolerations cover the pool's taints.
    fn daemon_overhead(
        &self,
        pool_requirements: &Requirements,
        taints: &[crate::crds::Taint],
    ) -> Resources {
        let mut total = Resources::default();
        for ds in self.state.daemonsets.values() {
            let Some(spec) = ds.spec.as_ref().and_then(|s| s.template.spec.clone()) else {
                continue;
            };
            let selector =
                Requirements::from_labels(&spec.node_selector.clone().unwrap_or_default());
            let tolerations = spec.tolerations.clone().unwrap_or_default();
            if pool_requirements.compatible(&selector).is_err()
                || crate::scheduling::taints::untolerated(&tolerations, taints).is_some()
            {
                continue;
            }
            let pod = Pod {
                metadata: Default::default(),
                spec: Some(spec),
                status: None,
            };
            if let Ok(r) = pod_requests(&pod) {
                total.add(&r);
            }
        }
        total
    }

    /// Capacity of the pool's live NodeClaims, as counted against `spec.limits`.
    pub(crate) fn pool_usage(&self, pool: &str) -> Resources {
        let mut used = Resources::default();
        for claim in self.state.nodeclaims.values() {
            if claim
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::NODEPOOL))
                .map(String::as_str)
                != Some(pool)
            {
                continue;
            }
            let capacity = claim
                .status
                .as_ref()
                .map(|s| &s.capacity)
                .filter(|c| !c.is_empty());
            let amounts = match capacity {
                Some(c) => Resources::parse(c).unwrap_or_default(),
                None => claim
                    .spec
                    .resources
                    .as_ref()
                    .and_then(|r| Resources::parse(&r.requests).ok())
                    .unwrap_or_default(),
            };
            used.add(&amounts);
            *used
                .0
                .entry(crate::resources::NODES.to_string())
                .or_default() += crate::quantity::Milli::from_units(1);
        }
        used
    }

    /// Room on nodes and on NodeClaims still coming up, so pods are not provisioned for twice.
    pub(crate) fn existing_capacity(&self, leaving: &BTreeSet<String>) -> Vec<ExistingCapacity> {
        let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
        let mut bound: BTreeMap<&str, Vec<ExistingPod>> = BTreeMap::new();
        for (key, pod) in &self.state.pods {
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
            if let Some(r) = pod_requests_or_log(self, key, pod) {
                used.entry(node).or_default().add(&r);
            }
            let anti_affinity = pod_terms(pod)
                .unwrap_or_default()
                .into_iter()
                .filter(|t| {
                    t.strength == Strength::Required && t.term.kind == TermKind::AntiAffinity
                })
                .map(|t| t.term)
                .collect();
            bound.entry(node).or_default().push(ExistingPod {
                namespace: key.namespace.clone(),
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                anti_affinity,
                host_ports: host_ports(pod),
            });
        }
        let mut out = Vec::new();
        let mut claimed_nodes = Vec::new();
        for claim in self.state.nodeclaims.values() {
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
            let mut pods = Vec::new();
            if let Some(node) = &status.node_name {
                claimed_nodes.push(node.clone());
                if leaving.contains(node) {
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
            out.push(ExistingCapacity {
                name: format!("nodeclaim/{name}"),
                available,
                labels,
                taints: claim.spec.taints.clone(),
                pods,
            });
        }
        for (name, node) in &self.state.nodes {
            if claimed_nodes.contains(name) || !node_ready(node) || leaving.contains(name) {
                continue;
            }
            if node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
            {
                continue;
            }
            let Some(alloc) = node.status.as_ref().and_then(|s| s.allocatable.as_ref()) else {
                continue;
            };
            let mut available = Resources::parse(alloc).unwrap_or_default();
            if let Some(u) = used.get(name.as_str()) {
                available.sub(u);
            }
            // The unregistered taint goes as soon as Dovetail syncs the node; it does not keep pods off.
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|t| t.key != labels::UNREGISTERED_TAINT)
                .map(|t| crate::crds::Taint {
                    key: t.key,
                    value: t.value,
                    effect: t.effect,
                })
                .collect();
            out.push(ExistingCapacity {
                name: format!("node/{name}"),
                available,
                labels: node.metadata.labels.clone().unwrap_or_default(),
                taints,
                pods: bound.remove(name.as_str()).unwrap_or_default(),
            });
        }
        out
    }

    pub(crate) async fn provision(&mut self, window: Duration) -> Result<(), ControllerError> {
        let leaving = self.leaving_nodes();
        let pending: Vec<PendingPod> = self
            .state
            .pods
            .iter()
            .filter(|(_, p)| is_provisionable(p) || displaced(p, &leaving))
            .filter_map(|(key, pod)| self.pending_pod(key, pod))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let existing = self.existing_capacity(&leaving);
        let pools = self.pool_options();
        let plan = plan(&pending, &existing, &pools);
        self.ctx.journal.record(
            "provision",
            format!(
                "batch pods={} window={:.2}s existing={} new-claims={} unschedulable={}",
                pending.len(),
                window.as_secs_f64(),
                plan.on_existing.len(),
                plan.claims.len(),
                plan.unschedulable.len()
            ),
        );
        // One line per distinct reason, not per pod: a 500-replica Deployment must not flood the trace.
        let mut by_reason: BTreeMap<&str, Vec<&ObjectKey>> = BTreeMap::new();
        for (pod, reason) in &plan.unschedulable {
            by_reason.entry(reason.as_str()).or_default().push(pod);
        }
        for (reason, pods) in by_reason {
            let more = more_suffix(pods.len(), 1);
            self.ctx.journal.record(
                "provision",
                format!(
                    "cannot place {} pods (pod/{}{more}): {reason}",
                    pods.len(),
                    pods[0]
                ),
            );
        }
        self.explain_unschedulable(&plan.unschedulable).await;
        for claim in plan.claims {
            self.create_nodeclaim(claim, BTreeMap::new()).await?;
        }
        Ok(())
    }

    /// A Warning Event on each pod no NodePool can host, saying why — once per distinct reason, so users see
    /// the explanation in `kubectl describe pod` instead of a silent Pending.
    async fn explain_unschedulable(&mut self, unschedulable: &[(ObjectKey, String)]) {
        for (key, reason) in unschedulable {
            if self.explained.get(key) == Some(reason) {
                continue;
            }
            let uid = self
                .state
                .pods
                .get(key)
                .and_then(|p| p.metadata.uid.clone());
            let message = format!("Dovetail cannot launch a node for this pod: {reason}");
            if self
                .emit_event(
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

    /// Create a NodeClaim for a planned claim; returns its name (None when the pool is gone).
    pub(crate) async fn create_nodeclaim(
        &mut self,
        plan: ClaimPlan,
        mut annotations: BTreeMap<String, String>,
    ) -> Result<Option<String>, ControllerError> {
        let Some(pool) = self.state.nodepools.get(&plan.pool).cloned() else {
            return Ok(None);
        };
        let name = names::generate(&plan.pool, &mut self.ctx.rng);
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
                        crate::disruption::POOL_HASH.to_string(),
                        crate::disruption::pool_hash(&pool),
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
        let created = self.ctx.kube.create(Kind::NodeClaim, value).await?;
        self.state
            .apply_event(Kind::NodeClaim, crate::kube::WatchEvent::Added(created))?;
        self.ctx.metrics.inc(
            metrics::NODECLAIMS_CREATED,
            &[("nodepool", &plan.pool), ("reason", reason)],
        );
        let shown: Vec<&str> = types.iter().take(2).map(String::as_str).collect();
        let more = more_suffix(types.len(), 2);
        self.ctx.journal.record(
            "provision",
            format!(
                "create nodeclaim/{name} pool={} pods={} {} types={}{more}",
                plan.pool,
                plan.pods.len(),
                plan.requests,
                shown.join(","),
            ),
        );
        Ok(Some(name))
    }
}
