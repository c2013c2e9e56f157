//! Turns a closed batch into NodeClaims: gather pending pods and capacity, plan, create the claims.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube_core::ObjectMeta;

use crate::cloud::CapacityType;
use crate::crds::nodeclaim::ResourceRequirements;
use crate::crds::{
    NodeClaim, NodeClaimSpec, NodePool, NodeSelectorRequirementWithMinValues, labels,
};
use crate::error::ControllerError;
use crate::kube::{Kind, ObjectKey, encode};
use crate::names;
use crate::provisioning::planner::{ExistingCapacity, PendingPod, PoolOptions, plan};
use crate::provisioning::requirements::matches_all;
use crate::resources::{Resources, pod_requests};
use crate::run::Controller;
use crate::state::{is_provisionable, node_ready};

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

fn requirement_values(pool: &NodePool, key: &str) -> Option<Vec<String>> {
    pool.spec
        .template
        .spec
        .requirements
        .iter()
        .find(|r| r.key == key && r.operator == "In")
        .map(|r| r.values.clone())
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

impl Controller {
    fn pool_options(&self, zones_in_region: &[String]) -> Vec<PoolOptions<'_>> {
        let mut daemon_overhead = Resources::default();
        for ds in self.state.daemonsets.values() {
            let pod = Pod {
                metadata: Default::default(),
                spec: ds.spec.as_ref().and_then(|s| s.template.spec.clone()),
                status: None,
            };
            if let Ok(r) = pod_requests(&pod) {
                daemon_overhead.add(&r);
            }
        }
        self.state
            .nodepools
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                self.state
                    .nodeclasses
                    .contains_key(&p.spec.template.spec.node_class_ref.name)
            })
            .map(|pool| {
                let reqs = &pool.spec.template.spec.requirements;
                let capacity_types: Vec<CapacityType> =
                    match requirement_values(pool, labels::CAPACITY_TYPE) {
                        Some(v) => v.iter().filter_map(|s| CapacityType::parse(s)).collect(),
                        None => vec![CapacityType::OnDemand],
                    };
                let zones: Vec<String> = match requirement_values(pool, labels::ZONE) {
                    Some(v) => v,
                    None => zones_in_region.to_vec(),
                };
                let instance_types = self
                    .instance_types
                    .iter()
                    .filter(|it| {
                        let type_reqs: Vec<NodeSelectorRequirementWithMinValues> = reqs
                            .iter()
                            .filter(|r| r.key != labels::CAPACITY_TYPE && r.key != labels::ZONE)
                            .cloned()
                            .collect();
                        matches_all(&type_reqs, &it.labels)
                    })
                    .filter(|it| {
                        it.offerings.iter().any(|o| {
                            o.available
                                && capacity_types.contains(&o.capacity_type)
                                && zones.contains(&o.zone)
                        })
                    })
                    .collect();
                let mut pool_labels = pool
                    .spec
                    .template
                    .metadata
                    .clone()
                    .unwrap_or_default()
                    .labels;
                pool_labels.insert(
                    labels::NODEPOOL.to_string(),
                    pool.metadata.name.clone().unwrap_or_default(),
                );
                let remaining_limits = pool.spec.limits.as_ref().and_then(|limits| {
                    let limits = Resources::parse(limits).ok()?;
                    let used = self.pool_usage(pool.metadata.name.as_deref().unwrap_or_default());
                    // Only the resources the pool limits count; the rest are unbounded.
                    Some(Resources(
                        limits
                            .0
                            .iter()
                            .map(|(k, v)| (k.clone(), *v - used.get(k)))
                            .collect(),
                    ))
                });
                PoolOptions {
                    name: pool.metadata.name.clone().unwrap_or_default(),
                    weight: pool.spec.weight.unwrap_or(0),
                    labels: pool_labels,
                    instance_types,
                    capacity_types,
                    zones,
                    daemon_overhead: daemon_overhead.clone(),
                    remaining_limits,
                }
            })
            .collect()
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
        }
        used
    }

    /// Room on nodes and on NodeClaims still coming up, so pods are not provisioned for twice.
    fn existing_capacity(&self) -> Vec<ExistingCapacity> {
        let mut used: BTreeMap<&str, Resources> = BTreeMap::new();
        for (key, pod) in &self.state.pods {
            if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
                && let Some(r) = pod_requests_or_log(self, key, pod)
            {
                used.entry(node).or_default().add(&r);
            }
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
            if let Some(node) = &status.node_name {
                claimed_nodes.push(node.clone());
                if let Some(u) = used.get(node.as_str()) {
                    available.sub(u);
                }
            }
            out.push(ExistingCapacity {
                name: format!("nodeclaim/{name}"),
                available,
                labels: claim.metadata.labels.clone().unwrap_or_default(),
            });
        }
        for (name, node) in &self.state.nodes {
            if claimed_nodes.contains(name) || !node_ready(node) {
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
            out.push(ExistingCapacity {
                name: format!("node/{name}"),
                available,
                labels: node.metadata.labels.clone().unwrap_or_default(),
            });
        }
        out
    }

    pub(crate) async fn provision(&mut self, window: Duration) -> Result<(), ControllerError> {
        let pending: Vec<PendingPod> = self
            .state
            .pods
            .iter()
            .filter(|(_, p)| is_provisionable(p))
            .filter_map(|(key, pod)| {
                let requests = pod_requests_or_log(self, key, pod)?;
                let node_selector = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_selector.clone())
                    .unwrap_or_default();
                Some(PendingPod {
                    key: key.clone(),
                    requests,
                    node_selector,
                })
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let mut zones: Vec<String> = self
            .instance_types
            .iter()
            .flat_map(|it| it.offerings.iter().map(|o| o.zone.clone()))
            .collect();
        zones.sort();
        zones.dedup();
        let existing = self.existing_capacity();
        let pools = self.pool_options(&zones);
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
        for claim in plan.claims {
            self.create_nodeclaim(claim).await?;
        }
        Ok(())
    }

    async fn create_nodeclaim(
        &mut self,
        plan: crate::provisioning::ClaimPlan,
    ) -> Result<(), ControllerError> {
        let Some(pool) = self.state.nodepools.get(&plan.pool).cloned() else {
            return Ok(());
        };
        let name = names::generate(&plan.pool, &mut self.ctx.rng);
        let mut types = plan.instance_types.clone();
        types.truncate(MAX_INSTANCE_TYPES);
        let mut requirements: Vec<NodeSelectorRequirementWithMinValues> = pool
            .spec
            .template
            .spec
            .requirements
            .iter()
            .filter(|r| r.key != labels::INSTANCE_TYPE)
            .cloned()
            .collect();
        requirements.push(NodeSelectorRequirementWithMinValues {
            key: labels::INSTANCE_TYPE.to_string(),
            operator: "In".to_string(),
            values: types.clone(),
            min_values: None,
        });
        let mut claim_labels = pool
            .spec
            .template
            .metadata
            .clone()
            .unwrap_or_default()
            .labels;
        claim_labels.insert(labels::NODEPOOL.to_string(), plan.pool.clone());
        claim_labels.insert(
            labels::NODECLASS.to_string(),
            pool.spec.template.spec.node_class_ref.name.clone(),
        );
        let tmpl = &pool.spec.template.spec;
        let claim = NodeClaim {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(claim_labels),
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
        Ok(())
    }
}
