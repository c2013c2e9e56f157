//! Launching on EC2: the fleet a claim may launch (capacity type and cheapest-first overrides), the
//! launch template per node class and image, CreateFleet, and adopting a predecessor's launch.

use std::collections::BTreeMap;

use super::AwsProvider;
use super::ami::{self, Ami};
use super::cloud::{
    CapacityReservationSpec, CapacityType, CreateFleetRequest, DescribeInstancesRequest,
    FleetOverride, Instance, InstanceState, OnDemandStrategy, ReservationType,
};
use super::launch;
use crate::cloudprovider::{InstanceType, Launch, LaunchFailure};
use crate::context::Context;
use crate::crds::{EC2NodeClass, NodeClaim, labels};
use crate::error::ControllerError;
use crate::names;
use crate::scheduling::Requirements;
use crate::scheduling::planner::{capacity_types, reservation_allowed};
use crate::state::ClusterState;

/// The tag that marks what this controller owns: `kubernetes.io/cluster/<name>: owned`.
pub(crate) fn cluster_tag(ctx: &Context) -> (String, String) {
    (
        format!(
            "{}{}",
            labels::TAG_CLUSTER_PREFIX,
            ctx.settings.cluster_name
        ),
        "owned".to_string(),
    )
}

/// The reservation an instance runs in as `reserved` capacity: Karpenter's rule, only one launched
/// targeting it (`capacity-reservations-only`) and only with the ReservedCapacity gate on — an on-demand
/// launch an open reservation absorbed stays on-demand (calling it reserved would make it drift).
fn reserved_in(i: &Instance, gate: bool) -> Option<(&str, ReservationType)> {
    if !gate || i.capacity_reservation_preference.as_deref() != Some("capacity-reservations-only") {
        return None;
    }
    let kind = match i.instance_lifecycle.as_deref() {
        Some("capacity-block") => ReservationType::CapacityBlock,
        Some("interruptible-capacity-reservation") => ReservationType::Interruptible,
        _ => ReservationType::Default,
    };
    i.capacity_reservation_id.as_deref().map(|id| (id, kind))
}

/// An EC2 instance as the provider-neutral controllers see it.
pub(super) fn neutral(i: &Instance, reserved_gate: bool) -> crate::cloudprovider::Instance {
    let reserved = reserved_in(i, reserved_gate);
    crate::cloudprovider::Instance {
        id: i.id.clone(),
        provider_id: i.provider_id(),
        instance_type: i.instance_type.clone(),
        zone: i.zone.clone(),
        capacity_type: match (reserved, i.capacity_type) {
            (Some(_), _) => CapacityType::Reserved,
            (None, CapacityType::Spot) => CapacityType::Spot,
            (None, _) => CapacityType::OnDemand,
        },
        offering_labels: reserved
            .map(|(id, kind)| super::reservation::offering_labels(id, kind))
            .unwrap_or_default(),
        image_id: i.image_id.clone(),
        state: i.state,
        state_reason: i.state_reason.as_ref().map(|r| r.code.clone()),
        launch_time: i.launch_time,
        nodeclaim: i.tags.get(labels::TAG_NODECLAIM).cloned(),
    }
}

/// A reserved launch's one reservation: its id and kind.
type Target = Option<(String, ReservationType)>;

/// The kind of reservation a reserved offering is, from its labels.
fn reservation_kind(o: &crate::cloudprovider::Offering) -> ReservationType {
    let label = |k: &str| {
        o.reservation
            .as_ref()
            .and_then(|r| r.labels.get(k))
            .map(String::as_str)
    };
    if label(labels::CAPACITY_RESERVATION_TYPE) == Some("capacity-block") {
        ReservationType::CapacityBlock
    } else if label(labels::CAPACITY_RESERVATION_INTERRUPTIBLE) == Some("true") {
        ReservationType::Interruptible
    } else {
        ReservationType::Default
    }
}

/// The fleet a claim may launch: one capacity type (reserved, then spot, then on-demand, as Karpenter
/// prefers), and every allowed (type, zone) override, cheapest first. A reserved fleet launches into one
/// reservation (the cheapest allowed one: CreateFleet takes one market per call).
fn fleet_overrides(
    claim: &NodeClaim,
    types: &[InstanceType],
    subnets: &BTreeMap<String, String>,
) -> Option<(CapacityType, Target, Vec<FleetOverride>)> {
    // A claim that does not parse was not written by us; launch nothing rather than guess.
    let reqs = Requirements::from_node_selector(&claim.spec.requirements).ok()?;
    let type_ok = |name: &str| reqs.get(labels::INSTANCE_TYPE).is_none_or(|r| r.has(name));
    let zone_ok = |zone: &str| reqs.get(labels::ZONE).is_none_or(|r| r.has(zone));
    // A consolidation replacement must come out cheaper than what it replaces, whatever pool answers.
    let max_price = claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::MAX_PRICE))
        .and_then(|p| p.parse::<f64>().ok())
        .unwrap_or(f64::INFINITY);
    let candidates = |ct: CapacityType| -> Vec<(f64, Target, FleetOverride)> {
        let mut out = Vec::new();
        for it in types.iter().filter(|it| type_ok(&it.name)) {
            for o in &it.offerings {
                if o.capacity_type != ct
                    || !o.available
                    || !zone_ok(&o.zone)
                    || o.price >= max_price
                    || !reservation_allowed(o, &reqs)
                {
                    continue;
                }
                let Some(subnet) = subnets.get(&o.zone) else {
                    continue;
                };
                out.push((
                    o.price,
                    o.reservation
                        .as_ref()
                        .map(|r| (r.id.clone(), reservation_kind(o))),
                    FleetOverride {
                        launch_template_name: String::new(),
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
                .then_with(|| a.2.instance_type.cmp(&b.2.instance_type))
                .then_with(|| a.2.zone.cmp(&b.2.zone))
                .then_with(|| a.1.cmp(&b.1))
        });
        if let Some(first) = out.first().and_then(|c| c.1.clone()) {
            out.retain(|c| c.1.as_ref() == Some(&first));
        }
        out
    };
    // Karpenter's rule: when on-demand is allowed too, spot is only worth it where it is cheaper than the
    // cheapest on-demand offering.
    let od_floor = capacity_types(&reqs)
        .contains(&CapacityType::OnDemand)
        .then(|| {
            candidates(CapacityType::OnDemand)
                .first()
                .map(|(p, _, _)| *p)
        })
        .flatten();
    for ct in capacity_types(&reqs) {
        let mut c = candidates(ct);
        if ct == CapacityType::Spot
            && let Some(floor) = od_floor
        {
            c.retain(|(p, _, _)| *p < floor);
        }
        if !c.is_empty() {
            let target = c.first().and_then(|c| c.1.clone());
            let overrides = c
                .into_iter()
                .enumerate()
                .map(|(i, (_, _, mut o))| {
                    o.priority = Some(i as f64);
                    o
                })
                .collect();
            return Some((ct, target, overrides));
        }
    }
    None
}

impl AwsProvider {
    /// One subnet per zone among those the node class selects: the one with the most free addresses.
    async fn subnets_by_zone(
        &mut self,
        ctx: &Context,
        class: &EC2NodeClass,
    ) -> Result<BTreeMap<String, String>, ControllerError> {
        let mut best: BTreeMap<String, (u32, String)> = BTreeMap::new();
        for s in self
            .classes
            .resolve(ctx, self.cloud.as_ref(), class)
            .await?
            .subnets
        {
            let e = best.entry(s.zone.clone()).or_insert((0, String::new()));
            if e.1.is_empty() || s.available_ip_addresses > e.0 {
                *e = (s.available_ip_addresses, s.id.clone());
            }
        }
        Ok(best.into_iter().map(|(z, (_, id))| (z, id)).collect())
    }

    /// The launch template for a node class and image, created once per distinct content.
    async fn ensure_launch_template(
        &mut self,
        ctx: &Context,
        class: &EC2NodeClass,
        image: &Ami,
        target: &Target,
    ) -> Result<String, ControllerError> {
        let class_name = class.metadata.name.clone().unwrap_or_default();
        let resolved = self
            .classes
            .resolve(ctx, self.cloud.as_ref(), class)
            .await?;
        let groups: Vec<String> = resolved
            .security_groups
            .iter()
            .map(|g| g.id.clone())
            .collect();
        let mut tags = class.spec.tags.clone();
        let (key, value) = cluster_tag(ctx);
        tags.insert(key, value);
        tags.insert(labels::NODECLASS.to_string(), class_name.clone());
        let mut data = launch::template_data(
            class,
            &super::userdata::Cluster::of(&ctx.settings),
            &image.id,
            &groups,
            &tags,
        );
        // A reserved launch targets its one reservation; any other leaves EC2's default preference
        // (`open`), so open reservations absorb on-demand launches rather than sit idle — where Karpenter
        // opts every other launch out of them (`none`, aws/karpenter-provider-aws#8176).
        if let Some((id, kind)) = target {
            data.capacity_reservation = Some(CapacityReservationSpec {
                preference: "capacity-reservations-only".into(),
                target_id: Some(id.clone()),
            });
            data.market_type = match kind {
                ReservationType::CapacityBlock => Some("capacity-block".into()),
                ReservationType::Interruptible => Some("interruptible-capacity-reservation".into()),
                ReservationType::Default => None,
            };
        }
        let name = launch::template_name(&ctx.settings.cluster_name, &class_name, &data);
        if self.known_templates.0.contains(&name) {
            return Ok(name);
        }
        match self
            .cloud
            .describe_launch_templates(vec![name.clone()])
            .await
        {
            Ok(_) => {}
            Err(e) if e.code == "InvalidLaunchTemplateName.NotFoundException" => {
                match self.cloud.create_launch_template(name.clone(), data).await {
                    Ok(_) => ctx.journal.record(
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
        Ok(name)
    }

    /// One launch attempt for a claim (see [`crate::cloudprovider::CloudProvider::create`]).
    pub(super) async fn launch(
        &mut self,
        ctx: &mut Context,
        state: &ClusterState,
        claim: &NodeClaim,
    ) -> Result<Launch, ControllerError> {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let class_name = &claim.spec.node_class_ref.name;
        let Some(class) = state.nodeclasses.get(class_name).cloned() else {
            ctx.journal.record(
                "lifecycle",
                format!("nodeclaim/{name} waits: ec2nodeclass/{class_name} not found"),
            );
            return Ok(Launch::Waiting);
        };
        let now = ctx.now();
        if self.health.paused_until(class_name, now).is_some() {
            return Ok(Launch::Waiting);
        }
        let gate = ctx.settings.feature_gates.reserved_capacity;
        if let Some(instance) = self.predecessor_instance(ctx, claim).await? {
            return Ok(Launch::Adopted(neutral(&instance, gate)));
        }
        self.refresh_offering_availability(now);
        let subnets = self.subnets_by_zone(ctx, &class).await?;
        let mut types = self.launch_types(class_name);
        // NodeOverlays reorder the fleet: its priorities follow the prices the planner saw.
        if ctx.settings.feature_gates.node_overlay
            && let Some(pool) = claim
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::NODEPOOL))
        {
            let applied = crate::nodepool::overlay::for_cluster(state, self);
            for t in &mut types {
                if let Some(changed) = applied.apply(pool, t) {
                    *t = changed;
                }
            }
        }
        let Some((capacity_type, target, overrides)) = fleet_overrides(claim, &types, &subnets)
        else {
            return Ok(Launch::NoOffering);
        };
        // Each override launches with the image that suits its type (newest first, as Karpenter maps
        // them); a type no image suits is dropped.
        let amis = self
            .classes
            .resolve(ctx, self.cloud.as_ref(), &class)
            .await?
            .amis;
        let mut chosen: Vec<Ami> = Vec::new();
        let mut kept: Vec<(FleetOverride, usize)> = Vec::new();
        for o in overrides {
            let Some(ami) = self
                .instance_types
                .iter()
                .find(|it| it.name == o.instance_type)
                .and_then(|it| ami::for_instance_type(&amis, &it.labels))
            else {
                continue;
            };
            let at = match chosen.iter().position(|a| a.id == ami.id) {
                Some(at) => at,
                None => {
                    chosen.push(ami.clone());
                    chosen.len() - 1
                }
            };
            kept.push((o, at));
        }
        if kept.is_empty() {
            let ids: Vec<&str> = amis.iter().map(|a| a.id.as_str()).collect();
            ctx.journal.record(
                "lifecycle",
                format!(
                    "nodeclaim/{name} waits: no image of ec2nodeclass/{class_name} suits its instance types (images: {})",
                    if ids.is_empty() { "none".to_string() } else { ids.join(", ") }
                ),
            );
            return Ok(Launch::Waiting);
        }
        let mut templates = Vec::new();
        for ami in &chosen {
            templates.push(
                self.ensure_launch_template(ctx, &class, ami, &target)
                    .await?,
            );
        }
        let overrides: Vec<FleetOverride> = kept
            .into_iter()
            .map(|(o, at)| FleetOverride {
                launch_template_name: templates.get(at).cloned().unwrap_or_default(),
                ..o
            })
            .collect();
        let mut tags = BTreeMap::new();
        let (key, value) = cluster_tag(ctx);
        tags.insert(key, value);
        tags.insert(labels::TAG_NODECLAIM.to_string(), name.clone());
        tags.insert(
            labels::TAG_MANAGED_BY.to_string(),
            ctx.settings.cluster_name.clone(),
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
            client_token: names::token(&mut ctx.rng),
            context: class.spec.context.clone(),
            // A reserved launch is an on-demand one into the reservation its template targets.
            capacity_type: match capacity_type {
                CapacityType::Reserved => CapacityType::OnDemand,
                ct => ct,
            },
            reservation: target.as_ref().map(|(_, kind)| *kind),
            // The overrides carry Dovetail's order (cheapest first, after the node class's and overlays'
            // adjustments): EC2 follows it rather than its own list prices.
            on_demand_strategy: if overrides.iter().any(|o| o.priority.is_some()) {
                OnDemandStrategy::Prioritized
            } else {
                OnDemandStrategy::LowestPrice
            },
            overrides,
            target_capacity: 1,
            tags,
        };
        let output = match self.cloud.create_fleet(request).await {
            Ok(o) => o,
            Err(e) if e.code == "InvalidLaunchTemplateName.NotFoundException" => {
                // Someone deleted one; check them all again next time.
                for t in &templates {
                    self.known_templates.0.remove(t);
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        // Pools that failed are remembered even when another pool delivered; a full reservation is
        // remembered as full until EC2 says otherwise.
        let marked = if let Some((id, _)) = &target {
            let full = output
                .errors
                .iter()
                .any(|e| launch::is_capacity_error(&e.code));
            if full {
                self.classes.availability.full(id);
            }
            usize::from(full)
        } else {
            self.unavailable.record(capacity_type, &output.errors, now)
        };
        let Some(instance) = output.instances.into_iter().next() else {
            let mut codes: Vec<String> = output.errors.iter().map(|e| e.code.clone()).collect();
            codes.sort();
            codes.dedup();
            let capacity = output
                .errors
                .iter()
                .all(|e| launch::is_capacity_error(&e.code));
            let first = output
                .errors
                .first()
                .map(|e| format!(" ({}: {})", e.code, e.message))
                .unwrap_or_default();
            return Ok(Launch::Failed(LaunchFailure {
                message: format!("CreateFleet launched nothing: {}{first}", codes.join(",")),
                codes,
                capacity,
                unavailable_marked: marked,
            }));
        };
        if let Some(id) = &instance.capacity_reservation_id {
            self.classes.availability.launched(id);
            self.in_reservation.insert(instance.id.clone(), id.clone());
        }
        Ok(Launch::Launched(neutral(&instance, gate)))
    }

    /// The catalog's types with the `reserved` offerings of the class's reservations, with their room as
    /// last known (the claim launching is the one counting on it: nothing pending is taken off).
    fn launch_types(&self, class: &str) -> Vec<InstanceType> {
        self.instance_types
            .iter()
            .map(|it| {
                let mut t = it.clone();
                t.offerings
                    .extend(self.reserved_offerings(class, it, BTreeMap::new));
                t
            })
            .collect()
    }

    /// An instance a previous controller process launched for this claim but never recorded (it stopped
    /// between CreateFleet and the status update). Asked once per claim older than this process, so a
    /// steady controller pays no extra API call per launch.
    async fn predecessor_instance(
        &mut self,
        ctx: &Context,
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
        let (key, value) = cluster_tag(ctx);
        let found = self
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudprovider::Offering;
    use crate::crds::{NodeClaimSpec, NodeClassReference, NodeSelectorRequirementWithMinValues};
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
                    reservation: None,
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
        let (ct, _, o) = fleet_overrides(&both, &types, &subnets(&["a", "b"])).unwrap();
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
        let (_, _, o) = fleet_overrides(&both, &types, &subnets(&["a"])).unwrap();
        assert_eq!(
            o.len(),
            1,
            "r5 spot at 0.11 costs more than m5 on-demand at 0.096"
        );
        let spot_only = claim(&[(labels::CAPACITY_TYPE, &["spot"])]);
        let (_, _, o) = fleet_overrides(&spot_only, &types, &subnets(&["a"])).unwrap();
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
        let (ct, _, o) = fleet_overrides(&c, &types, &subnets(&["a", "b"])).unwrap();
        assert_eq!(ct, OnDemand);
        assert_eq!(o.len(), 1);
        assert_eq!(
            (o[0].instance_type.as_str(), o[0].zone.as_str()),
            ("m5.large", "b")
        );
        let nowhere = claim(&[(labels::ZONE, &["z"])]);
        assert!(fleet_overrides(&nowhere, &types, &subnets(&["a", "b"])).is_none());
    }

    fn with_reservation(
        mut t: InstanceType,
        zone: &str,
        id: &str,
        kind: ReservationType,
    ) -> InstanceType {
        let od = t
            .offerings
            .iter()
            .find(|o| o.capacity_type == OnDemand)
            .map_or(0.1, |o| o.price);
        t.offerings.push(Offering {
            zone: zone.into(),
            capacity_type: CapacityType::Reserved,
            price: od / 1e7,
            available: true,
            reservation: Some(crate::cloudprovider::ReservedOffering {
                id: id.into(),
                labels: super::super::reservation::offering_labels(id, kind),
                capacity: 1,
                rank: 0,
            }),
        });
        t
    }

    #[test]
    fn a_reserved_claim_launches_into_its_one_reservation() -> Result<(), String> {
        let types = [
            with_reservation(
                it(
                    "m5.large",
                    &[("a", OnDemand, 0.096, true), ("b", OnDemand, 0.096, true)],
                ),
                "a",
                "cr-1",
                ReservationType::CapacityBlock,
            ),
            with_reservation(
                it("m5.xlarge", &[("a", OnDemand, 0.192, true)]),
                "a",
                "cr-2",
                ReservationType::Default,
            ),
        ];
        let pinned = claim(&[
            (labels::CAPACITY_TYPE, &["reserved"]),
            (labels::CAPACITY_RESERVATION_ID, &["cr-2"]),
        ]);
        let (ct, target, o) =
            fleet_overrides(&pinned, &types, &subnets(&["a", "b"])).ok_or("a fleet")?;
        assert_eq!(ct, CapacityType::Reserved);
        assert_eq!(target, Some(("cr-2".to_string(), ReservationType::Default)));
        assert_eq!(o.len(), 1);
        assert_eq!(
            (o[0].instance_type.as_str(), o[0].zone.as_str()),
            ("m5.xlarge", "a")
        );
        // Allowed both ways and unpinned: reserved first (the cheapest reservation), one reservation per
        // fleet, as CreateFleet takes one market.
        let both = claim(&[(labels::CAPACITY_TYPE, &["reserved", "on-demand"])]);
        let (ct, target, o) =
            fleet_overrides(&both, &types, &subnets(&["a", "b"])).ok_or("a fleet")?;
        assert_eq!(ct, CapacityType::Reserved);
        assert_eq!(
            target,
            Some(("cr-1".to_string(), ReservationType::CapacityBlock))
        );
        assert!(o.iter().all(|o| o.instance_type == "m5.large"));
        // The default on-demand claim never targets a reservation.
        let od = claim(&[(labels::CAPACITY_TYPE, &["on-demand"])]);
        let (ct, target, _) =
            fleet_overrides(&od, &types, &subnets(&["a", "b"])).ok_or("a fleet")?;
        assert_eq!((ct, target), (OnDemand, None));
        Ok(())
    }

    #[test]
    fn a_full_reservation_falls_back_to_on_demand() -> Result<(), String> {
        let mut t = with_reservation(
            it("m5.large", &[("a", OnDemand, 0.096, true)]),
            "a",
            "cr-1",
            ReservationType::Default,
        );
        if let Some(o) = t.offerings.last_mut() {
            o.available = false;
        }
        let both = claim(&[(labels::CAPACITY_TYPE, &["reserved", "on-demand"])]);
        let (ct, target, _) = fleet_overrides(&both, &[t], &subnets(&["a"])).ok_or("a fleet")?;
        assert_eq!((ct, target), (OnDemand, None));
        Ok(())
    }

    #[test]
    fn only_a_targeted_launch_is_reserved() {
        let mut i = Instance {
            id: "i-1".into(),
            instance_type: "m5.large".into(),
            zone: "a".into(),
            subnet_id: "s".into(),
            capacity_type: OnDemand,
            state: InstanceState::Running,
            state_reason: None,
            private_ip: String::new(),
            private_dns_name: String::new(),
            image_id: String::new(),
            launch_time: jiff::Timestamp::UNIX_EPOCH,
            tags: BTreeMap::new(),
            capacity_reservation_id: Some("cr-1".into()),
            capacity_reservation_preference: Some("open".into()),
            instance_lifecycle: None,
        };
        // An open reservation absorbed it: on-demand, no reservation labels (it would drift otherwise).
        assert_eq!(neutral(&i, true).capacity_type, OnDemand);
        assert!(neutral(&i, true).offering_labels.is_empty());
        i.capacity_reservation_preference = Some("capacity-reservations-only".into());
        i.instance_lifecycle = Some("capacity-block".into());
        let n = neutral(&i, true);
        assert_eq!(n.capacity_type, CapacityType::Reserved);
        assert_eq!(
            n.offering_labels
                .get(labels::CAPACITY_RESERVATION_TYPE)
                .map(String::as_str),
            Some("capacity-block")
        );
        // With the gate off, Karpenter's rule: on-demand whatever EC2 says.
        assert_eq!(neutral(&i, false).capacity_type, OnDemand);
    }
}
