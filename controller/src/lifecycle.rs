//! The NodeClaim lifecycle: launch through CreateFleet, then Registered, Initialized; and termination.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::cloud::{
    CapacityType, CreateFleetRequest, DescribeInstancesRequest, FleetOverride, Instance,
    InstanceState,
};
use crate::crds::nodeclaim::conditions;
use crate::crds::{EC2NodeClass, NodeClaim, labels};
use crate::error::ControllerError;
use crate::instancetype::InstanceType;
use crate::kube::{Kind, KubeError, ObjectKey};
use crate::launch;
use crate::metrics;
use crate::names;
use crate::run::Controller;
use crate::scheduling::Requirements;
use crate::scheduling::planner::capacity_types;
use crate::state::node_ready;

fn condition(type_: &str, reason: &str, now: &str) -> serde_json::Value {
    json!({"type": type_, "status": "True", "reason": reason, "lastTransitionTime": now})
}

/// The fleet a claim may launch: one capacity type (spot when allowed and offered, as Karpenter prefers),
/// and every allowed (type, zone) override, cheapest first.
fn fleet_overrides(
    claim: &NodeClaim,
    types: &[InstanceType],
    subnets: &BTreeMap<String, String>,
) -> Option<(CapacityType, Vec<FleetOverride>)> {
    // A claim that does not parse was not written by us; launch nothing rather than guess.
    let reqs = Requirements::from_node_selector(&claim.spec.requirements).ok()?;
    let type_ok = |name: &str| reqs.get(labels::INSTANCE_TYPE).is_none_or(|r| r.has(name));
    let zone_ok = |zone: &str| reqs.get(labels::ZONE).is_none_or(|r| r.has(zone));
    // A consolidation replacement must come out cheaper than what it replaces, whatever pool answers.
    let max_price = claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::disruption::MAX_PRICE))
        .and_then(|p| p.parse::<f64>().ok())
        .unwrap_or(f64::INFINITY);
    let candidates = |ct: CapacityType| -> Vec<(f64, FleetOverride)> {
        let mut out = Vec::new();
        for it in types.iter().filter(|it| type_ok(&it.name)) {
            for o in &it.offerings {
                if o.capacity_type != ct
                    || !o.available
                    || !zone_ok(&o.zone)
                    || o.price >= max_price
                {
                    continue;
                }
                let Some(subnet) = subnets.get(&o.zone) else {
                    continue;
                };
                out.push((
                    o.price,
                    FleetOverride {
                        instance_type: it.name.clone(),
                        subnet_id: subnet.clone(),
                        zone: o.zone.clone(),
                        priority: None,
                    },
                ));
            }
        }
        out.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then_with(|| a.1.instance_type.cmp(&b.1.instance_type))
                .then_with(|| a.1.zone.cmp(&b.1.zone))
        });
        out
    };
    // Karpenter's rule: when on-demand is allowed too, spot is only worth it where it is cheaper than the
    // cheapest on-demand offering.
    let od_floor = capacity_types(&reqs)
        .contains(&CapacityType::OnDemand)
        .then(|| candidates(CapacityType::OnDemand).first().map(|(p, _)| *p))
        .flatten();
    for ct in capacity_types(&reqs) {
        let mut c = candidates(ct);
        if ct == CapacityType::Spot
            && let Some(floor) = od_floor
        {
            c.retain(|(p, _)| *p < floor);
        }
        if !c.is_empty() {
            let overrides = c
                .into_iter()
                .enumerate()
                .map(|(i, (_, mut o))| {
                    o.priority = Some(i as f64);
                    o
                })
                .collect();
            return Some((ct, overrides));
        }
    }
    None
}

impl Controller {
    /// The tag that marks what this controller owns: `kubernetes.io/cluster/<name>: owned`.
    pub(crate) fn cluster_tag(&self) -> (String, String) {
        (
            format!(
                "{}{}",
                labels::TAG_CLUSTER_PREFIX,
                self.ctx.settings.cluster_name
            ),
            "owned".to_string(),
        )
    }

    fn now_rfc3339(&self) -> String {
        self.ctx.clock.now().to_string()
    }

    /// Patch the claim's status: set `types` True (with their reasons), keep the other conditions, and merge
    /// `extra` status fields; the cache takes the answer at once.
    async fn set_true_conditions(
        &mut self,
        claim: &NodeClaim,
        types: &[(&str, &str)],
        extra: serde_json::Value,
    ) -> Result<(), ControllerError> {
        let now = self.now_rfc3339();
        let name = claim.metadata.name.clone().unwrap_or_default();
        let mut conds: Vec<serde_json::Value> = claim
            .status
            .as_ref()
            .map(|s| {
                s.conditions
                    .iter()
                    .filter(|c| !types.iter().any(|(t, _)| *t == c.type_))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .map(|c| serde_json::to_value(c).unwrap_or_default())
            .collect();
        conds.extend(types.iter().map(|(t, reason)| condition(t, reason, &now)));
        let mut status = extra;
        status["conditions"] = serde_json::Value::Array(conds);
        let updated = self
            .ctx
            .kube
            .patch_status(
                Kind::NodeClaim,
                &ObjectKey::cluster(&name),
                json!({ "status": status }),
            )
            .await?;
        self.state
            .apply_event(Kind::NodeClaim, crate::kube::WatchEvent::Modified(updated))?;
        Ok(())
    }

    pub(crate) async fn reconcile_nodeclaims(&mut self) -> Result<(), ControllerError> {
        // Settled claims (initialized, not deleting) are most of a large cluster and need nothing here.
        let names: Vec<String> = self
            .state
            .nodeclaims
            .iter()
            .filter(|(_, c)| {
                c.metadata.deletion_timestamp.is_some()
                    || !c.condition_true(conditions::INITIALIZED)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(claim) = self.state.nodeclaims.get(&name).cloned() else {
                continue;
            };
            let result = if claim.metadata.deletion_timestamp.is_some() {
                self.finalize(&claim).await
            } else if !claim.condition_true(conditions::LAUNCHED) {
                self.launch(&claim).await
            } else if !claim.condition_true(conditions::REGISTERED) {
                self.register(&claim).await
            } else if !claim.condition_true(conditions::INITIALIZED) {
                self.initialize(&claim).await
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

    /// One subnet per zone among those the node class selects: the one with the most free addresses.
    async fn subnets_by_zone(
        &mut self,
        class: &EC2NodeClass,
    ) -> Result<BTreeMap<String, String>, ControllerError> {
        let mut best: BTreeMap<String, (u32, String)> = BTreeMap::new();
        for s in self.resolve_class(class).await?.subnets {
            let e = best.entry(s.zone.clone()).or_insert((0, String::new()));
            if e.1.is_empty() || s.available_ip_addresses > e.0 {
                *e = (s.available_ip_addresses, s.id.clone());
            }
        }
        Ok(best.into_iter().map(|(z, (_, id))| (z, id)).collect())
    }

    /// The launch template for a node class and architecture, created once per distinct content.
    async fn ensure_launch_template(
        &mut self,
        class: &EC2NodeClass,
        arch: &str,
    ) -> Result<Option<String>, ControllerError> {
        let class_name = class.metadata.name.clone().unwrap_or_default();
        let resolved = self.resolve_class(class).await?;
        let Some(image) = resolved.images.get(arch).cloned() else {
            self.ctx.journal.record(
                "lifecycle",
                format!("ec2nodeclass/{class_name}: no image matches amiSelectorTerms for {arch}"),
            );
            return Ok(None);
        };
        let groups: Vec<String> = resolved
            .security_groups
            .iter()
            .map(|g| g.id.clone())
            .collect();
        let mut tags = class.spec.tags.clone();
        let (key, value) = self.cluster_tag();
        tags.insert(key, value);
        tags.insert(labels::NODECLASS.to_string(), class_name.clone());
        let data = launch::template_data(class, &image.id, &groups, &tags);
        let name = launch::template_name(&self.ctx.settings.cluster_name, &class_name, &data);
        if self.known_templates.0.contains(&name) {
            return Ok(Some(name));
        }
        match self
            .ctx
            .cloud
            .describe_launch_templates(vec![name.clone()])
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == "InvalidLaunchTemplateName.NotFoundException" => {
                match self
                    .ctx
                    .cloud
                    .create_launch_template(name.clone(), data)
                    .await
                {
                    Ok(_) => self.ctx.journal.record(
                        "lifecycle",
                        format!("created launch template {name} image={}", image.id),
                    ),
                    Err(e) if e.code == "InvalidLaunchTemplateName.AlreadyExistsException" => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e.into()),
        }
        self.known_templates.0.insert(name.clone());
        Ok(Some(name))
    }

    async fn launch(&mut self, claim: &NodeClaim) -> Result<(), ControllerError> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let class_name = &claim.spec.node_class_ref.name;
        let Some(class) = self.state.nodeclasses.get(class_name).cloned() else {
            self.ctx.journal.record(
                "lifecycle",
                format!("nodeclaim/{name} waits: ec2nodeclass/{class_name} not found"),
            );
            return Ok(());
        };
        let now = self.now();
        if self.launch_health.paused_until(class_name, now).is_some() {
            return Ok(());
        }
        if let Some(instance) = self.predecessor_instance(claim).await? {
            self.ctx.journal.record(
                "lifecycle",
                format!(
                    "nodeclaim/{name} adopts {}: launched before a restart, not yet recorded",
                    instance.id
                ),
            );
            return self.mark_launched(claim, &instance).await;
        }
        self.refresh_offering_availability(now);
        let subnets = self.subnets_by_zone(&class).await?;
        let Some((capacity_type, mut overrides)) =
            fleet_overrides(claim, &self.instance_types, &subnets)
        else {
            self.ctx.journal.record(
                "lifecycle",
                format!("nodeclaim/{name} has no available offering left; deleting it to re-plan"),
            );
            self.ctx
                .kube
                .delete(Kind::NodeClaim, &ObjectKey::cluster(&name))
                .await?;
            return Ok(());
        };
        // One launch template per architecture: launch the cheapest override's architecture.
        let arch_of = |t: &str| {
            self.instance_types
                .iter()
                .find(|it| it.name == t)
                .and_then(|it| it.labels.get(labels::ARCH).cloned())
                .unwrap_or_default()
        };
        let arch = arch_of(&overrides[0].instance_type);
        overrides.retain(|o| arch_of(&o.instance_type) == arch);
        let Some(template) = self.ensure_launch_template(&class, &arch).await? else {
            return Ok(());
        };
        let mut tags = BTreeMap::new();
        let (key, value) = self.cluster_tag();
        tags.insert(key, value);
        tags.insert(labels::TAG_NODECLAIM.to_string(), name.clone());
        tags.insert(
            labels::TAG_MANAGED_BY.to_string(),
            self.ctx.settings.cluster_name.clone(),
        );
        tags.insert(labels::NODECLASS.to_string(), class_name.clone());
        if let Some(pool) = claim
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::NODEPOOL))
        {
            tags.insert(labels::NODEPOOL.to_string(), pool.clone());
        }
        let request = CreateFleetRequest {
            client_token: names::token(&mut self.ctx.rng),
            capacity_type,
            launch_template_name: template.clone(),
            overrides,
            target_capacity: 1,
            tags,
        };
        let output = match self.ctx.cloud.create_fleet(request).await {
            Ok(o) => o,
            Err(e) if e.code == "InvalidLaunchTemplateName.NotFoundException" => {
                // Someone deleted it; create it again next time.
                self.known_templates.0.remove(&template);
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        // Pools that failed are remembered even when another pool delivered.
        let marked = self.unavailable.record(capacity_type, &output.errors, now);
        let Some(instance) = output.instances.into_iter().next() else {
            let mut codes: Vec<String> = output.errors.iter().map(|e| e.code.clone()).collect();
            codes.sort();
            codes.dedup();
            let all_capacity = output
                .errors
                .iter()
                .all(|e| launch::is_capacity_error(&e.code));
            // `kubectl describe nodeclaim` says why it did not launch (Karpenter's event reasons).
            let first = output
                .errors
                .first()
                .map(|e| format!(" ({}: {})", e.code, e.message))
                .unwrap_or_default();
            self.emit_event(
                Kind::NodeClaim,
                &ObjectKey::cluster(&name),
                claim.metadata.uid.clone(),
                crate::events::EventType::Warning,
                if all_capacity {
                    "InsufficientCapacityError"
                } else {
                    "LaunchFailed"
                },
                &format!("CreateFleet launched nothing: {}{first}", codes.join(",")),
            )
            .await;
            if all_capacity {
                // Karpenter's answer to insufficient capacity: forget this claim and plan again without the
                // offerings that just failed.
                self.ctx.journal.record(
                    "lifecycle",
                    format!("nodeclaim/{name} launch failed: {}; {marked} offerings unavailable for 3m; deleting the claim to re-plan", codes.join(",")),
                );
                self.ctx
                    .kube
                    .delete(Kind::NodeClaim, &ObjectKey::cluster(&name))
                    .await?;
            } else {
                self.ctx.journal.record(
                    "lifecycle",
                    format!(
                        "nodeclaim/{name} launch failed: {}; retrying",
                        codes.join(",")
                    ),
                );
            }
            return Ok(());
        };
        self.mark_launched(claim, &instance).await
    }

    /// An instance a previous controller process launched for this claim but never recorded (it stopped
    /// between CreateFleet and the status update). Asked once per claim older than this process, so a
    /// steady controller pays no extra API call per launch.
    async fn predecessor_instance(
        &mut self,
        claim: &NodeClaim,
    ) -> Result<Option<Instance>, ControllerError> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let older = claim
            .metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| t.0 < self.started_at);
        if !older || !self.adoption_checked.insert(name.clone()) {
            return Ok(None);
        }
        let (key, value) = self.cluster_tag();
        let found = self
            .ctx
            .cloud
            .describe_instances(DescribeInstancesRequest {
                tags: [(key, value), (labels::TAG_NODECLAIM.to_string(), name)].into(),
                states: vec![InstanceState::Pending, InstanceState::Running],
                ..Default::default()
            })
            .await;
        match found {
            Ok(out) => Ok(out.instances.into_iter().min_by(|a, b| a.id.cmp(&b.id))),
            Err(e) => {
                // Look again on the next attempt rather than risk a second instance.
                self.adoption_checked
                    .remove(&claim.metadata.name.clone().unwrap_or_default());
                Err(e.into())
            }
        }
    }

    async fn mark_launched(
        &mut self,
        claim: &NodeClaim,
        instance: &Instance,
    ) -> Result<(), ControllerError> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let key = ObjectKey::cluster(&name);
        let it = self
            .instance_types
            .iter()
            .find(|t| t.name == instance.instance_type);
        let (capacity, allocatable) = it
            .map(|t| (t.capacity.to_quantities(), t.allocatable.to_quantities()))
            .unwrap_or_default();
        let price = it
            .and_then(|t| t.price(&instance.zone, instance.capacity_type))
            .unwrap_or(0.0);
        self.ctx
            .kube
            .patch(
                Kind::NodeClaim,
                &key,
                json!({"metadata": {"labels": {
                    labels::INSTANCE_TYPE: instance.instance_type,
                    labels::ZONE: instance.zone,
                    labels::CAPACITY_TYPE: instance.capacity_type.as_str(),
                }}}),
            )
            .await?;
        let now = self.now_rfc3339();
        let updated = self
            .ctx
            .kube
            .patch_status(
                Kind::NodeClaim,
                &key,
                json!({"status": {
                    "providerID": instance.provider_id(),
                    "imageID": instance.image_id,
                    "capacity": capacity,
                    "allocatable": allocatable,
                    "conditions": [condition(conditions::LAUNCHED, "Launched", &now)],
                }}),
            )
            .await?;
        self.state
            .apply_event(Kind::NodeClaim, crate::kube::WatchEvent::Modified(updated))?;
        self.count(metrics::NODECLAIMS_LAUNCHED, claim);
        self.ctx.journal.record(
            "lifecycle",
            format!(
                "launched nodeclaim/{name} {} {} {} {} {:.4}/h",
                instance.id, instance.instance_type, instance.zone, instance.capacity_type, price
            ),
        );
        Ok(())
    }

    async fn register(&mut self, claim: &NodeClaim) -> Result<(), ControllerError> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let provider_id = claim
            .status
            .as_ref()
            .and_then(|s| s.provider_id.clone())
            .unwrap_or_default();
        let Some((node_name, node)) = self
            .state
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
        let taints: Vec<_> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != labels::UNREGISTERED_TAINT)
            .collect();
        self.ctx
            .kube
            .patch(
                Kind::Node,
                &ObjectKey::cluster(&node_name),
                json!({"metadata": {"labels": node_labels, "finalizers": finalizers}, "spec": {"taints": taints}}),
            )
            .await?;
        self.set_true_conditions(
            claim,
            &[(conditions::REGISTERED, "Registered")],
            json!({"nodeName": node_name}),
        )
        .await?;
        self.count(metrics::NODECLAIMS_REGISTERED, claim);
        self.ctx.journal.record(
            "lifecycle",
            format!("registered nodeclaim/{name} node={node_name}"),
        );
        let class = claim.spec.node_class_ref.name.clone();
        if self.launch_health.healed(&class) {
            self.ctx.journal.record(
                "lifecycle",
                format!("ec2nodeclass/{class} launches healthy again: nodeclaim/{name} registered"),
            );
            self.set_class_condition(
                &class,
                "True",
                "NodeRegistered",
                &format!("nodeclaim/{name} registered its node"),
            )
            .await;
        }
        Ok(())
    }

    async fn initialize(&mut self, claim: &NodeClaim) -> Result<(), ControllerError> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let Some(node_name) = claim.status.as_ref().and_then(|s| s.node_name.clone()) else {
            return Ok(());
        };
        let Some(node) = self.state.nodes.get(&node_name) else {
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
        self.ctx
            .kube
            .patch(
                Kind::Node,
                &ObjectKey::cluster(&node_name),
                json!({"metadata": {"labels": {labels::INITIALIZED: "true"}}}),
            )
            .await?;
        self.set_true_conditions(
            claim,
            &[
                (conditions::INITIALIZED, "Initialized"),
                (conditions::READY, "Ready"),
            ],
            json!({}),
        )
        .await?;
        self.count(metrics::NODECLAIMS_INITIALIZED, claim);
        self.ctx.journal.record(
            "lifecycle",
            format!("initialized nodeclaim/{name} node={node_name}"),
        );
        Ok(())
    }

    /// A deleted claim: its node is deleted and drained first (see `termination`), then the instance is
    /// terminated and the finalizer released so the claim goes.
    async fn finalize(&mut self, claim: &NodeClaim) -> Result<(), ControllerError> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let node = claim
            .status
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .and_then(|n| self.state.nodes.get(&n).cloned())
            .or_else(|| {
                let provider = claim.status.as_ref()?.provider_id.clone()?;
                self.state
                    .nodes
                    .values()
                    .find(|n| {
                        n.spec.as_ref().and_then(|s| s.provider_id.as_ref()) == Some(&provider)
                    })
                    .cloned()
            });
        if let Some(node) = node {
            let node_name = node.metadata.name.clone().unwrap_or_default();
            if node.metadata.deletion_timestamp.is_none() {
                self.delete_if_present(Kind::Node, &ObjectKey::cluster(&node_name))
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
        let already_gone = self.instance_gone.contains(&name);
        if let Some(id) = crate::gc::instance_id(claim).filter(|_| !already_gone) {
            // TerminateInstances is idempotent; a NotFound soon after launch is EC2's eventual consistency,
            // later it means the instance is long gone.
            match self
                .ctx
                .cloud
                .terminate_instances(vec![id.to_string()])
                .await
            {
                Ok(()) => {
                    self.count(metrics::NODECLAIMS_TERMINATED, claim);
                    self.ctx
                        .journal
                        .record("lifecycle", format!("terminate {id} for nodeclaim/{name}"))
                }
                Err(e) if e.code == "InvalidInstanceID.NotFound" => {
                    let launched = claim
                        .metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0)
                        .unwrap_or(self.ctx.clock.now());
                    if crate::clock::since(self.ctx.clock.now(), launched) < Duration::from_secs(60)
                    {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.instance_gone.remove(&name);
        self.release(Kind::NodeClaim, &name, claim.metadata.finalizers.clone())
            .await?;
        Ok(())
    }

    /// Drop Dovetail's termination finalizer from a cluster-scoped object, keeping any others.
    pub(crate) async fn release(
        &mut self,
        kind: Kind,
        name: &str,
        finalizers: Option<Vec<String>>,
    ) -> Result<(), ControllerError> {
        let kept: Vec<String> = finalizers
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != labels::TERMINATION_FINALIZER)
            .collect();
        self.ctx
            .kube
            .patch(
                kind,
                &ObjectKey::cluster(name),
                json!({"metadata": {"finalizers": kept}}),
            )
            .await?;
        Ok(())
    }
}

impl Controller {
    /// Count a NodeClaim event under its NodePool.
    pub(crate) fn count(&self, def: metrics::MetricDef, claim: &NodeClaim) {
        self.count_with(def, claim, &[]);
    }

    /// Count a NodeClaim event under its NodePool, with more labels.
    pub(crate) fn count_with(
        &self,
        def: metrics::MetricDef,
        claim: &NodeClaim,
        more: &[(&'static str, &str)],
    ) {
        let pool = claim
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::crds::labels::NODEPOOL))
            .map_or("", String::as_str);
        let mut labels = vec![("nodepool", pool)];
        labels.extend_from_slice(more);
        self.ctx.metrics.inc(def, &labels);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crds::{NodeClaimSpec, NodeClassReference, NodeSelectorRequirementWithMinValues};
    use crate::instancetype::Offering;
    use crate::resources::Resources;

    fn it(name: &str, offers: &[(&str, CapacityType, f64, bool)]) -> InstanceType {
        InstanceType {
            name: name.into(),
            labels: BTreeMap::new(),
            capacity: Resources::default(),
            allocatable: Resources::default(),
            offerings: offers
                .iter()
                .map(|(z, ct, price, available)| Offering {
                    zone: z.to_string(),
                    capacity_type: *ct,
                    price: *price,
                    available: *available,
                })
                .collect(),
        }
    }

    fn claim(reqs: &[(&str, &[&str])]) -> NodeClaim {
        NodeClaim::new(
            "c",
            NodeClaimSpec {
                node_class_ref: NodeClassReference {
                    group: "karpenter.k8s.aws".into(),
                    kind: "EC2NodeClass".into(),
                    name: "default".into(),
                },
                requirements: reqs
                    .iter()
                    .map(|(k, v)| NodeSelectorRequirementWithMinValues {
                        key: k.to_string(),
                        operator: "In".into(),
                        values: v.iter().map(|s| s.to_string()).collect(),
                        min_values: None,
                    })
                    .collect(),
                resources: None,
                taints: vec![],
                startup_taints: vec![],
                expire_after: None,
                termination_grace_period: None,
            },
        )
    }

    fn subnets(zones: &[&str]) -> BTreeMap<String, String> {
        zones
            .iter()
            .map(|z| (z.to_string(), format!("subnet-{z}")))
            .collect()
    }

    use CapacityType::{OnDemand, Spot};

    #[test]
    fn spot_first_cheapest_first_with_priorities() {
        let types = [
            it(
                "m5.large",
                &[
                    ("a", Spot, 0.04, true),
                    ("b", Spot, 0.03, true),
                    ("a", OnDemand, 0.096, true),
                ],
            ),
            it(
                "c5.large",
                &[("a", Spot, 0.035, true), ("c", Spot, 0.02, true)],
            ),
        ];
        let both = claim(&[(labels::CAPACITY_TYPE, &["spot", "on-demand"])]);
        let (ct, o) = fleet_overrides(&both, &types, &subnets(&["a", "b"])).unwrap();
        assert_eq!(ct, Spot);
        let got: Vec<(&str, &str, f64)> = o
            .iter()
            .map(|o| {
                (
                    o.instance_type.as_str(),
                    o.zone.as_str(),
                    o.priority.unwrap(),
                )
            })
            .collect();
        // Zone c has no subnet, so c5.large is offered in a only.
        assert_eq!(
            got,
            vec![
                ("m5.large", "b", 0.0),
                ("c5.large", "a", 1.0),
                ("m5.large", "a", 2.0)
            ]
        );
        assert!(
            o.iter()
                .all(|o| o.subnet_id == format!("subnet-{}", o.zone))
        );
    }

    #[test]
    fn spot_dearer_than_on_demand_is_left_out() {
        let types = [
            it(
                "m5.large",
                &[("a", Spot, 0.05, true), ("a", OnDemand, 0.096, true)],
            ),
            it("r5.large", &[("a", Spot, 0.11, true)]),
        ];
        let both = claim(&[(labels::CAPACITY_TYPE, &["spot", "on-demand"])]);
        let (_, o) = fleet_overrides(&both, &types, &subnets(&["a"])).unwrap();
        assert_eq!(
            o.len(),
            1,
            "r5 spot at 0.11 costs more than m5 on-demand at 0.096"
        );
        let spot_only = claim(&[(labels::CAPACITY_TYPE, &["spot"])]);
        let (_, o) = fleet_overrides(&spot_only, &types, &subnets(&["a"])).unwrap();
        assert_eq!(o.len(), 2, "with spot only there is no on-demand floor");
    }

    #[test]
    fn unavailable_spot_falls_back_to_on_demand_and_requirements_filter() {
        let types = [
            it(
                "m5.large",
                &[
                    ("a", Spot, 0.04, false),
                    ("a", OnDemand, 0.096, true),
                    ("b", OnDemand, 0.096, true),
                ],
            ),
            it("m5.xlarge", &[("a", OnDemand, 0.192, true)]),
        ];
        let c = claim(&[
            (labels::CAPACITY_TYPE, &["spot", "on-demand"]),
            (labels::INSTANCE_TYPE, &["m5.large"]),
            (labels::ZONE, &["b"]),
        ]);
        let (ct, o) = fleet_overrides(&c, &types, &subnets(&["a", "b"])).unwrap();
        assert_eq!(ct, OnDemand);
        assert_eq!(o.len(), 1);
        assert_eq!(
            (o[0].instance_type.as_str(), o[0].zone.as_str()),
            ("m5.large", "b")
        );
        let nowhere = claim(&[(labels::ZONE, &["z"])]);
        assert!(fleet_overrides(&nowhere, &types, &subnets(&["a", "b"])).is_none());
    }
}
