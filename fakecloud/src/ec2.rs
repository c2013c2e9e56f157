//! The in-memory EC2: offerings and capacity pools, CreateFleet, instances on the simulated clock, launch
//! templates, images, KMS-broken launches, spot interruptions, throttling and eventual consistency.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use dovetail::aws::cloud::{
    CapacityReservation, CapacityReservationQuery, CapacityType, Cloud, CloudError,
    CreateFleetOutput, CreateFleetRequest, DescribeInstancesOutput, DescribeInstancesRequest,
    FleetError, FleetOverride, Image, ImageQuery, Instance, InstanceState, InstanceTypeInfo,
    InstanceTypeOffering, LaunchTemplate, LaunchTemplateData, OnDemandStrategy, QueueMessage,
    ReservationType, SecurityGroup, SpotPrice, StateReason, Subnet, TagFilter,
};
use dovetail::clock::Clock;
use dovetail::journal::Journal;
use jiff::Timestamp;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::catalog::{Catalog, CatalogEntry};
use crate::config::CloudConfig;
use crate::reservations::{
    self, BLOCK_RECLAIM, BLOCK_WARNING, INTERRUPTIBLE_WARNING, Reservation, ReservationSpec,
};
use crate::sqs::{self, Queue};

/// An instance with what the simulation needs beyond the EC2 view.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub instance: Instance,
    pub price: f64,
    /// When the instance reaches its next state (running, or terminated).
    pub transition_at: Timestamp,
    /// DescribeInstances does not show it before this (eventual consistency).
    pub visible_at: Timestamp,
    /// Not ours: another cluster's or untagged. Terminating it is a violation.
    pub foreign: bool,
    /// The cluster's, but not the autoscaler's: a managed node group's instance present from the start.
    /// Its node joins the cluster; terminating it is a violation.
    pub node_group: bool,
    /// Its launch template's KMS key was unusable: it dies before it ever runs.
    pub kms_failure: bool,
    /// A reclaim (spot, or an interruptible reservation's) is scheduled at this time.
    pub reclaim_at: Option<Timestamp>,
    /// The state reason code the reclaim terminates it with.
    pub reclaim_code: &'static str,
    /// The user data it booted with (its launch template's): what its kubelet is configured from.
    pub user_data: String,
}

struct SubnetState {
    subnet: Subnet,
    cidr_base: [u8; 3],
    next_host: u32,
}

type PoolKey = (String, String, CapacityType);

#[derive(Debug, Clone)]
struct Pool {
    depth: u32,
    /// A scenario's shortage: the pool is empty until then, whatever its depth.
    short_until: Option<Timestamp>,
}

struct State {
    rng: ChaCha8Rng,
    offerings: BTreeSet<(String, String)>,
    pools: BTreeMap<PoolKey, Pool>,
    spot_prices: BTreeMap<(String, String), f64>,
    next_price_move: Timestamp,
    subnets: Vec<SubnetState>,
    security_groups: Vec<SecurityGroup>,
    images: Vec<Image>,
    /// SSM Parameter Store: name -> value.
    parameters: BTreeMap<String, String>,
    launch_templates: BTreeMap<String, LaunchTemplate>,
    disabled_keys: BTreeMap<String, Timestamp>,
    instances: BTreeMap<String, InstanceRecord>,
    reservations: BTreeMap<String, Reservation>,
    queue: Queue,
    throttle: Option<(f64, Timestamp)>,
    outage_until: Option<Timestamp>,
    vcpu_quota: BTreeMap<CapacityType, u32>,
    violations: Vec<String>,
    /// Statistics the simulator reports: launches and fleet errors by code.
    launches: u64,
    errors_by_code: BTreeMap<String, u64>,
    /// The caller of the next successful CreateFleet dies once EC2 has launched (a simulated crash).
    crash_after_fleet: bool,
    crash_signalled: bool,
}

/// The fake EC2 (and its interruption queue). Clones share one state.
#[derive(Clone)]
pub struct FakeCloud {
    config: Arc<CloudConfig>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    journal: Arc<dyn Journal>,
    state: Arc<Mutex<State>>,
}

fn sample(rng: &mut ChaCha8Rng, (lo, hi): (Duration, Duration)) -> Duration {
    if hi <= lo {
        return lo;
    }
    lo + Duration::from_millis(rng.next_u64() % ((hi - lo).as_millis() as u64 + 1))
}

fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn sub(ts: Timestamp, d: Duration) -> Timestamp {
    ts.checked_sub(jiff::SignedDuration::try_from(d).unwrap_or_default())
        .unwrap_or(ts)
}

fn add(ts: Timestamp, d: Duration) -> Timestamp {
    ts.checked_add(d).unwrap_or(ts)
}

fn hex_id(prefix: &str, rng: &mut ChaCha8Rng) -> String {
    format!("{prefix}-{:017x}", rng.next_u64() >> 4)
}

/// Spot trades 30-70% below on-demand.
fn clamp_spot(od: f64, price: f64) -> f64 {
    let p = price.clamp(od * 0.30, od * 0.70);
    ((p * 10_000.0).round() / 10_000.0).max(0.0001)
}

impl FakeCloud {
    pub fn new(
        config: CloudConfig,
        catalog: Catalog,
        seed: u64,
        clock: Arc<dyn Clock>,
        journal: Arc<dyn Journal>,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let now = clock.now();
        let mut offerings = BTreeSet::new();
        let mut pools = BTreeMap::new();
        let mut spot_prices = BTreeMap::new();
        for (name, entry) in &catalog.types {
            let mut zones: Vec<&String> = config
                .zones
                .iter()
                .filter(|_| unit(&mut rng) < config.offering_probability)
                .collect();
            if zones.is_empty() {
                zones.push(&config.zones[(rng.next_u32() as usize) % config.zones.len()]);
            }
            for zone in zones {
                offerings.insert((name.clone(), zone.clone()));
                let spot_depth = sample_u32(&mut rng, config.spot_depth);
                pools.insert(
                    (name.clone(), zone.clone(), CapacityType::Spot),
                    Pool {
                        depth: spot_depth,
                        short_until: None,
                    },
                );
                pools.insert(
                    (name.clone(), zone.clone(), CapacityType::OnDemand),
                    Pool {
                        depth: config.on_demand_depth,
                        short_until: None,
                    },
                );
                let discount = 0.30 + 0.40 * unit(&mut rng);
                spot_prices.insert(
                    (name.clone(), zone.clone()),
                    clamp_spot(
                        entry.on_demand_price,
                        entry.on_demand_price * (1.0 - discount),
                    ),
                );
            }
        }
        let discovery: BTreeMap<String, String> = [(
            "karpenter.sh/discovery".to_string(),
            config.cluster_name.clone(),
        )]
        .into();
        // Declared offering rules, in order, over the seeded draw.
        for rule in &config.offerings {
            let glob = dovetail::aws::cloud::glob;
            for (name, entry) in &catalog.types {
                if !rule.instance_types.is_empty()
                    && !rule.instance_types.iter().any(|p| glob(p, name))
                {
                    continue;
                }
                for zone in config
                    .zones
                    .iter()
                    .filter(|z| rule.zones.is_empty() || rule.zones.contains(z))
                {
                    let key = (name.clone(), zone.clone());
                    match rule.offered {
                        Some(false) => {
                            offerings.remove(&key);
                        }
                        Some(true) => offer(
                            (&mut offerings, &mut pools, &mut spot_prices),
                            &config,
                            name,
                            zone,
                            entry.on_demand_price,
                        ),
                        _ => {}
                    }
                    if let Some(price) = rule.spot_price {
                        spot_prices.insert(key, price);
                    }
                }
            }
        }
        let subnets = if config.subnets.is_empty() {
            config
                .zones
                .iter()
                .enumerate()
                .map(|(i, zone)| SubnetState {
                    subnet: Subnet {
                        id: hex_id("subnet", &mut rng),
                        zone: zone.clone(),
                        available_ip_addresses: config.subnet_size,
                        tags: discovery.clone(),
                    },
                    cidr_base: [10, 0, (i as u8) * 16],
                    next_host: 4,
                })
                .collect()
        } else {
            config
                .subnets
                .iter()
                .enumerate()
                .map(|(i, s)| SubnetState {
                    subnet: Subnet {
                        id: s.id.clone().unwrap_or_else(|| hex_id("subnet", &mut rng)),
                        zone: s.zone.clone(),
                        available_ip_addresses: s.available_ip_addresses,
                        tags: s.tags.clone(),
                    },
                    cidr_base: [10, (i / 16) as u8, ((i % 16) as u8) * 16],
                    next_host: 4,
                })
                .collect()
        };
        let security_groups = if config.security_groups.is_empty() {
            vec![
                SecurityGroup {
                    id: hex_id("sg", &mut rng),
                    name: format!("{}-node", config.cluster_name),
                    tags: discovery.clone(),
                },
                SecurityGroup {
                    id: hex_id("sg", &mut rng),
                    name: "default".into(),
                    tags: BTreeMap::new(),
                },
            ]
        } else {
            config
                .security_groups
                .iter()
                .map(|g| SecurityGroup {
                    id: g.id.clone().unwrap_or_else(|| hex_id("sg", &mut rng)),
                    name: g.name.clone(),
                    tags: g.tags.clone(),
                })
                .collect()
        };
        let mut published = crate::images::Published::eks();
        published.images.extend(config.images.iter().cloned());
        let vcpu_quota = [
            (CapacityType::OnDemand, config.on_demand_vcpu_quota),
            (CapacityType::Spot, config.spot_vcpu_quota),
        ]
        .into();
        let st = State {
            rng,
            offerings,
            pools,
            spot_prices,
            next_price_move: add(now, config.spot_price_interval),
            subnets,
            security_groups,
            images: published.images,
            parameters: published.parameters,
            launch_templates: BTreeMap::new(),
            disabled_keys: BTreeMap::new(),
            instances: BTreeMap::new(),
            reservations: BTreeMap::new(),
            queue: Queue::default(),
            throttle: None,
            outage_until: None,
            vcpu_quota,
            violations: Vec::new(),
            launches: 0,
            errors_by_code: BTreeMap::new(),
            crash_after_fleet: false,
            crash_signalled: false,
        };
        let cloud = FakeCloud {
            config: Arc::new(config),
            catalog: Arc::new(catalog),
            clock,
            journal,
            state: Arc::new(Mutex::new(st)),
        };
        {
            let mut st = cloud.lock();
            cloud.add_foreign_instances(&mut st, now);
            cloud.add_node_group_instances(&mut st, now);
            for spec in cloud.config.capacity_reservations.clone() {
                cloud.add_reservation(&mut st, &spec, now);
            }
        }
        cloud
    }

    fn add_reservation(&self, st: &mut State, spec: &ReservationSpec, now: Timestamp) -> String {
        let id = spec.id.clone().unwrap_or_else(|| hex_id("cr", &mut st.rng));
        // EC2 keeps reservation times to the second.
        let start = add(now, spec.starts_after);
        let start = Timestamp::from_second(start.as_second()).unwrap_or(start);
        // EC2 sells reservations only where the type is offered: a declared one makes it so.
        if let Some(entry) = self.catalog.types.get(&spec.instance_type) {
            let State {
                offerings,
                pools,
                spot_prices,
                ..
            } = &mut *st;
            offer(
                (offerings, pools, spot_prices),
                &self.config,
                &spec.instance_type,
                &spec.zone,
                entry.on_demand_price,
            );
        }
        st.reservations.insert(
            id.clone(),
            Reservation {
                id: id.clone(),
                instance_type: spec.instance_type.clone(),
                zone: spec.zone.clone(),
                owner_id: spec.owner_id.clone(),
                count: spec.count,
                instance_match_criteria: spec.instance_match_criteria.clone(),
                kind: spec.kind,
                tags: spec.tags.clone(),
                start,
                end: spec.lasts.map(|d| add(start, d)),
                cancelled_at: None,
                warned: false,
            },
        );
        id
    }

    /// A reservation bought now (a scenario's timeline); its id.
    pub fn create_capacity_reservation(&self, spec: &ReservationSpec) -> String {
        let now = self.clock.now();
        let mut st = self.lock();
        let id = self.add_reservation(&mut st, spec, now);
        drop(st);
        self.journal.record(
            "cloud",
            format!(
                "capacity reservation {id} {} {} x{} {} {}",
                spec.instance_type,
                spec.zone,
                spec.count,
                spec.instance_match_criteria,
                spec.kind.ec2_type()
            ),
        );
        id
    }

    /// Cancel a reservation: its instances keep running, as on-demand ones (a Capacity Block's are
    /// terminated, as at its end). False when there is no such active reservation.
    pub fn cancel_capacity_reservation(&self, id: &str) -> bool {
        let now = self.clock.now();
        let mut st = self.lock();
        let Some(r) = st.reservations.get_mut(id).filter(|r| r.is_active(now)) else {
            return false;
        };
        r.cancelled_at = Some(now);
        let block = r.kind == ReservationType::CapacityBlock;
        let lines = self.leave_reservation(&mut st, id, block, now);
        drop(st);
        self.journal
            .record("cloud", format!("capacity reservation {id} cancelled"));
        for l in lines {
            self.journal.record("cloud", l);
        }
        true
    }

    /// The owner of an interruptible reservation takes `count` instances' worth back: that many of the
    /// instances in it (newest first) are warned and terminated two minutes later, and the reservation
    /// shrinks by `count`. The instances chosen.
    pub fn reclaim_capacity_reservation(&self, id: &str, count: u32) -> Vec<String> {
        let now = self.clock.now();
        let region = self.config.region.clone();
        let mut st = self.lock();
        let Some(r) = st.reservations.get_mut(id).filter(|r| r.is_active(now)) else {
            return Vec::new();
        };
        r.count = r.count.saturating_sub(count);
        let mut inside: Vec<(Timestamp, String)> = st
            .instances
            .values()
            .filter(|rec| {
                rec.instance.capacity_reservation_id.as_deref() == Some(id)
                    && matches!(
                        rec.instance.state,
                        InstanceState::Pending | InstanceState::Running
                    )
                    && rec.reclaim_at.is_none()
            })
            .map(|rec| (rec.instance.launch_time, rec.instance.id.clone()))
            .collect();
        inside.sort_by(|a, b| b.cmp(a));
        let chosen: Vec<String> = inside
            .into_iter()
            .take(count as usize)
            .map(|(_, i)| i)
            .collect();
        let at = add(now, INTERRUPTIBLE_WARNING);
        for i in &chosen {
            if let Some(rec) = st.instances.get_mut(i) {
                rec.reclaim_at = Some(at);
                rec.reclaim_code = "Server.CapacityReservationInterruption";
            }
            st.queue
                .send(reservations::interruption_warning(&region, i, at, now), now);
        }
        drop(st);
        self.journal.record(
            "cloud",
            format!(
                "capacity reservation {id} reclaims {count}: {}",
                if chosen.is_empty() {
                    "no instance in it".to_string()
                } else {
                    chosen.join(",")
                }
            ),
        );
        chosen
    }

    /// Instances leave a reservation that ended: a Capacity Block's are terminated, the others run on
    /// as on-demand instances outside it. Trace lines for what happened.
    fn leave_reservation(
        &self,
        st: &mut State,
        id: &str,
        terminate: bool,
        now: Timestamp,
    ) -> Vec<String> {
        let region = self.config.region.clone();
        let State {
            instances, queue, ..
        } = st;
        let mut lines = Vec::new();
        for rec in instances.values_mut() {
            if rec.instance.capacity_reservation_id.as_deref() != Some(id)
                || !matches!(
                    rec.instance.state,
                    InstanceState::Pending | InstanceState::Running
                )
            {
                continue;
            }
            if terminate {
                rec.instance.state = InstanceState::ShuttingDown;
                rec.instance.state_reason = Some(StateReason {
                    code: "Server.CapacityBlockExpiration".into(),
                    message: "Server.CapacityBlockExpiration: the Capacity Block is ending".into(),
                });
                rec.transition_at = add(now, self.config.shutdown_latency);
                queue.send(
                    sqs::state_change(&region, &rec.instance.id, "shutting-down", now),
                    now,
                );
                lines.push(format!(
                    "capacity block {id} ends: terminating {}",
                    rec.instance.id
                ));
            } else {
                rec.instance.capacity_reservation_id = None;
                rec.instance.instance_lifecycle = None;
                rec.price = self
                    .catalog
                    .types
                    .get(&rec.instance.instance_type)
                    .map_or(0.0, |e| e.on_demand_price);
                lines.push(format!(
                    "{} leaves capacity reservation {id}: on-demand now",
                    rec.instance.id
                ));
            }
        }
        lines
    }

    /// What the account pays per hour for its reservations: every active one's whole count at the
    /// on-demand price, used or not (instances in them cost nothing more).
    pub fn reservation_cost_per_hour(&self) -> f64 {
        let now = self.clock.now();
        let st = self.lock();
        st.reservations
            .values()
            .filter(|r| r.is_active(now))
            .map(|r| {
                f64::from(r.count)
                    * self
                        .catalog
                        .types
                        .get(&r.instance_type)
                        .map_or(0.0, |e| e.on_demand_price)
            })
            .sum()
    }

    /// Every reservation as DescribeCapacityReservations would show it now, any state.
    pub fn capacity_reservations(&self) -> Vec<CapacityReservation> {
        let now = self.clock.now();
        let st = self.lock();
        st.reservations
            .values()
            .map(|r| r.describe(reservation_used(&st, &r.id), now))
            .collect()
    }

    fn add_foreign_instances(&self, st: &mut State, now: Timestamp) {
        for i in 0..self.config.foreign_instances {
            let Some((name, zone)) = st
                .offerings
                .iter()
                .find(|(n, _)| n.starts_with("m5."))
                .cloned()
            else {
                return;
            };
            let mut tags = BTreeMap::new();
            if i % 2 == 1 {
                tags.insert(
                    "kubernetes.io/cluster/other".to_string(),
                    "owned".to_string(),
                );
                tags.insert("karpenter.sh/nodepool".to_string(), "default".to_string());
            }
            let price = self
                .catalog
                .types
                .get(&name)
                .map_or(0.0, |e| e.on_demand_price);
            if let Some(rec) = self.place(
                st,
                Placement {
                    instance_type: &name,
                    zone: &zone,
                    ct: CapacityType::OnDemand,
                    price,
                    reservation: None,
                },
                tags,
                None,
                now,
            ) {
                let id = rec.instance.id.clone();
                let r = st.instances.get_mut(&id).expect("just placed");
                r.foreign = true;
                r.instance.state = InstanceState::Running;
                r.visible_at = now;
            }
        }
    }

    /// The declared node group instances, running from the start.
    fn add_node_group_instances(&self, st: &mut State, now: Timestamp) {
        for e in &self.config.existing_instances {
            let price = match e.capacity_type {
                CapacityType::OnDemand | CapacityType::Reserved => {
                    self.entry(&e.instance_type).map(|x| x.on_demand_price)
                }
                CapacityType::Spot => st
                    .spot_prices
                    .get(&(e.instance_type.clone(), e.zone.clone()))
                    .copied(),
            }
            .unwrap_or(0.0);
            if let Some(rec) = self.place(
                st,
                Placement {
                    instance_type: &e.instance_type,
                    zone: &e.zone,
                    ct: e.capacity_type,
                    price,
                    reservation: None,
                },
                e.tags.clone(),
                None,
                now,
            ) && let Some(r) = st.instances.get_mut(&rec.instance.id)
            {
                r.node_group = true;
                r.instance.state = InstanceState::Running;
                r.visible_at = now;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock already failed the simulation; keep going with the data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn config(&self) -> &CloudConfig {
        &self.config
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn entry(&self, instance_type: &str) -> Option<&CatalogEntry> {
        self.catalog.types.get(instance_type)
    }

    /// Every instance the cloud knows, regardless of visibility (for kubelets and the observer).
    pub fn instances(&self) -> Vec<InstanceRecord> {
        self.with_instances(|i| i.cloned().collect())
    }

    /// Read every instance in id order without copying them (the observer looks every simulated second).
    pub fn with_instances<R>(
        &self,
        f: impl FnOnce(&mut dyn Iterator<Item = &InstanceRecord>) -> R,
    ) -> R {
        f(&mut self.lock().instances.values())
    }

    /// Invariant violations seen by the cloud (a foreign instance terminated).
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// (launches, fleet errors by code)
    /// Make the caller of the next CreateFleet that launches something never get its answer.
    pub fn arm_crash_after_create_fleet(&self) {
        self.lock().crash_after_fleet = true;
    }

    /// CreateFleet itself.
    async fn fleet(&self, request: CreateFleetRequest) -> Result<CreateFleetOutput, CloudError> {
        self.api_call("CreateFleet").await?;
        if request.overrides.is_empty() {
            return Err(CloudError::new(
                "InvalidParameterValue",
                "CreateFleet needs at least one override",
            ));
        }
        if request.target_capacity == 0 {
            return Err(CloudError::new(
                "InvalidTargetCapacitySpecification",
                "TotalTargetCapacity must be at least 1",
            ));
        }
        let now = self.clock.now();
        let mut st = self.lock();
        // Every launch template named must exist, as EC2 checks each LaunchTemplateConfig.
        if let Some(missing) = request
            .overrides
            .iter()
            .find(|o| !st.launch_templates.contains_key(&o.launch_template_name))
        {
            return Err(CloudError::new(
                "InvalidLaunchTemplateName.NotFoundException",
                format!(
                    "The specified launch template, with template name {}, does not exist.",
                    missing.launch_template_name
                ),
            ));
        }
        // A reserved launch is an on-demand one into the reservation its launch template names.
        let ct = match request.capacity_type {
            CapacityType::Spot => CapacityType::Spot,
            CapacityType::OnDemand | CapacityType::Reserved => CapacityType::OnDemand,
        };
        let mut errors: Vec<FleetError> = Vec::new();
        let mut instances = Vec::new();
        for _ in 0..request.target_capacity {
            // Filter the overrides the way EC2 does before choosing among them.
            let mut usable: Vec<(f64, u32, f64, usize, Option<String>)> = Vec::new();
            let quota = st.vcpu_quota.get(&ct).copied().unwrap_or(u32::MAX);
            let in_use = self.vcpus_in_use(&st, ct);
            for (i, o) in request.overrides.iter().enumerate() {
                let into = match reservation_for(&st, o, ct, request.reservation, now) {
                    Ok(into) => into,
                    Err((code, message)) => {
                        errors.push(fleet_error(code, message, o));
                        continue;
                    }
                };
                let Some(price) = self.price(&st, &o.instance_type, &o.zone, ct) else {
                    errors.push(fleet_error(
                        "Unsupported",
                        format!("Your requested instance type ({}) is not supported in your requested Availability Zone ({}).", o.instance_type, o.zone),
                        o,
                    ));
                    continue;
                };
                let Some(subnet) = st.subnets.iter().find(|s| s.subnet.id == o.subnet_id) else {
                    errors.push(fleet_error(
                        "InvalidSubnetID.NotFound",
                        format!("The subnet ID '{}' does not exist", o.subnet_id),
                        o,
                    ));
                    continue;
                };
                if subnet.subnet.zone != o.zone {
                    errors.push(fleet_error(
                        "InvalidParameterValue",
                        format!("subnet {} is not in {}", o.subnet_id, o.zone),
                        o,
                    ));
                    continue;
                }
                if subnet.subnet.available_ip_addresses == 0 {
                    errors.push(fleet_error("InsufficientFreeAddressesInSubnet", format!("There are not enough free addresses in subnet '{}' to satisfy the requested number of instances.", o.subnet_id), o));
                    continue;
                }
                let vcpu = self.entry(&o.instance_type).map_or(0, |e| e.vcpu);
                if in_use + vcpu > quota {
                    let (code, what) = match ct {
                        CapacityType::Spot => (
                            "MaxSpotInstanceCountExceeded",
                            "Max spot instance count exceeded",
                        ),
                        CapacityType::OnDemand | CapacityType::Reserved => (
                            "VcpuLimitExceeded",
                            "You have requested more vCPU capacity than your current vCPU limit",
                        ),
                    };
                    errors.push(fleet_error(
                        code,
                        format!("{what} ({in_use} of {quota} vCPUs in use)"),
                        o,
                    ));
                    continue;
                }
                if into.is_some() {
                    // Reserved capacity is there by definition, and already paid for.
                    usable.push((0.0, u32::MAX, o.priority.unwrap_or(f64::MAX), i, into));
                    continue;
                }
                let pool = st.pools.get(&(o.instance_type.clone(), o.zone.clone(), ct));
                let depth = pool
                    .filter(|p| p.short_until.is_none_or(|u| u <= now))
                    .map_or(0, |p| p.depth);
                if depth == 0 {
                    errors.push(fleet_error(
                        "InsufficientInstanceCapacity",
                        format!("We currently do not have sufficient {} capacity in the Availability Zone you requested ({}).", o.instance_type, o.zone),
                        o,
                    ));
                    continue;
                }
                usable.push((price, depth, o.priority.unwrap_or(f64::MAX), i, None));
            }
            // `prioritized` as the request asks (an override without a priority comes last).
            let prioritized = request.on_demand_strategy == OnDemandStrategy::Prioritized;
            let choice = match ct {
                // prioritized: the highest priority (lowest number) that can launch; lowest-price: the
                // cheapest pool, ties by priority, then by the order given.
                CapacityType::OnDemand | CapacityType::Reserved if prioritized => usable
                    .iter()
                    .min_by(|a, b| a.2.total_cmp(&b.2).then(a.3.cmp(&b.3)))
                    .cloned(),
                CapacityType::OnDemand | CapacityType::Reserved => usable
                    .iter()
                    .min_by(|a, b| {
                        a.0.total_cmp(&b.0)
                            .then(a.2.total_cmp(&b.2))
                            .then(a.3.cmp(&b.3))
                    })
                    .cloned(),
                // price-capacity-optimized: the pools with the most spare capacity first (here: at least half
                // the deepest), then the cheapest of those.
                CapacityType::Spot => {
                    let deepest = usable.iter().map(|u| u.1).max().unwrap_or(0);
                    usable
                        .iter()
                        .filter(|u| u.1 * 2 >= deepest)
                        .min_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)).then(a.3.cmp(&b.3)))
                        .cloned()
                }
            };
            let Some((price, _, _, idx, into)) = choice else {
                break;
            };
            let o = &request.overrides[idx];
            let template = st.launch_templates.get(&o.launch_template_name).cloned();
            if let Some(rec) = self.place(
                &mut st,
                Placement {
                    instance_type: &o.instance_type,
                    zone: &o.zone,
                    ct,
                    price,
                    reservation: into.as_deref(),
                },
                request.tags.clone(),
                template.as_ref(),
                now,
            ) {
                st.launches += 1;
                instances.push(rec.instance);
            }
        }
        if !instances.is_empty() && (instances.len() as u32) < request.target_capacity {
            errors.push(FleetError {
                code: "UnfulfillableCapacity".into(),
                message: format!("Unable to fulfill capacity due to your request configuration: {} of {} launched", instances.len(), request.target_capacity),
                instance_type: String::new(),
                zone: String::new(),
            });
        }
        // EC2 reports each failing pool once.
        let mut seen = BTreeSet::new();
        errors.retain(|e| seen.insert((e.code.clone(), e.instance_type.clone(), e.zone.clone())));
        for e in &errors {
            *st.errors_by_code.entry(e.code.clone()).or_default() += 1;
        }
        drop(st);
        for i in &instances {
            let owner = request
                .tags
                .get("karpenter.sh/nodeclaim")
                .map(|n| format!(" for nodeclaim/{n}"))
                .unwrap_or_default();
            let price = self
                .instances()
                .into_iter()
                .find(|r| r.instance.id == i.id)
                .map_or(0.0, |r| r.price);
            let within = i
                .capacity_reservation_id
                .as_ref()
                .map(|r| format!(" in {r}"))
                .unwrap_or_default();
            self.journal.record(
                "cloud",
                format!(
                    "launch {} {} {} {} {price:.4}/h{within}{owner}",
                    i.id, i.instance_type, i.zone, ct
                ),
            );
        }
        if instances.is_empty() && !errors.is_empty() {
            let mut codes: Vec<&str> = errors.iter().map(|e| e.code.as_str()).collect();
            codes.dedup();
            self.journal.record(
                "cloud",
                format!(
                    "create-fleet {} failed: {} overrides, errors {}",
                    ct,
                    request.overrides.len(),
                    codes.join(",")
                ),
            );
        }
        Ok(CreateFleetOutput { instances, errors })
    }

    /// Consume an armed crash, signalling it to the simulator.
    fn fleet_caller_dies(&self) -> bool {
        let mut st = self.lock();
        let armed = std::mem::take(&mut st.crash_after_fleet);
        st.crash_signalled |= armed;
        armed
    }

    /// Whether a caller has died in CreateFleet since the last call (the simulator then crashes it).
    pub fn take_crash_signal(&self) -> bool {
        std::mem::take(&mut self.lock().crash_signalled)
    }

    /// What DescribeInstanceTypeOfferings, the price list and DescribeSpotPriceHistory would answer now,
    /// without an API call's latency or faults (for the simulator's cost lower bound).
    pub fn market(
        &self,
    ) -> (
        Vec<InstanceTypeOffering>,
        BTreeMap<String, f64>,
        Vec<SpotPrice>,
    ) {
        let st = self.lock();
        let offerings = st
            .offerings
            .iter()
            .map(|(t, z)| InstanceTypeOffering {
                instance_type: t.clone(),
                zone: z.clone(),
            })
            .collect();
        let spot = st
            .spot_prices
            .iter()
            .map(|((t, z), p)| SpotPrice {
                instance_type: t.clone(),
                zone: z.clone(),
                price: *p,
            })
            .collect();
        let od = self
            .catalog
            .types
            .iter()
            .map(|(n, e)| (n.clone(), e.on_demand_price))
            .collect();
        (offerings, od, spot)
    }

    pub fn launch_stats(&self) -> (u64, BTreeMap<String, u64>) {
        let st = self.lock();
        (st.launches, st.errors_by_code.clone())
    }

    pub fn pool_depth(&self, instance_type: &str, zone: &str, ct: CapacityType) -> Option<u32> {
        self.lock()
            .pools
            .get(&(instance_type.to_string(), zone.to_string(), ct))
            .map(|p| p.depth)
    }

    pub fn set_pool_depth(&self, instance_type: &str, zone: &str, ct: CapacityType, depth: u32) {
        if let Some(p) =
            self.lock()
                .pools
                .get_mut(&(instance_type.to_string(), zone.to_string(), ct))
        {
            p.depth = depth;
        }
    }

    // ---- scenario hooks -------------------------------------------------------------------------------

    /// Empty every pool matching the type globs, zones and capacity type until `until`.
    pub fn capacity_shortage(
        &self,
        type_globs: &[String],
        zones: &[String],
        ct: Option<CapacityType>,
        until: Timestamp,
    ) -> usize {
        let mut st = self.lock();
        let mut n = 0;
        for ((t, z, c), pool) in st.pools.iter_mut() {
            let type_ok = type_globs.is_empty()
                || type_globs.iter().any(|g| dovetail::aws::cloud::glob(g, t));
            let zone_ok = zones.is_empty() || zones.contains(z);
            if type_ok && zone_ok && ct.is_none_or(|x| x == *c) {
                pool.short_until = Some(until);
                n += 1;
            }
        }
        drop(st);
        self.journal.record(
            "fault",
            format!(
                "capacity-shortage pools={n} types={} zones={} capacity-type={} until {until}",
                or_all(&type_globs.join(",")),
                or_all(&zones.join(",")),
                ct.map_or("*", CapacityType::as_str),
            ),
        );
        n
    }

    /// Reclaim `fraction` of the running spot instances in `zone` (all zones if None): an interruption
    /// warning now, termination two minutes later.
    pub fn spot_interruption(&self, zone: Option<&str>, fraction: f64) -> Vec<String> {
        let now = self.clock.now();
        let mut st = self.lock();
        let mut ids: Vec<String> = st
            .instances
            .values()
            .filter(|r| {
                r.instance.capacity_type == CapacityType::Spot
                    && r.instance.state == InstanceState::Running
                    && r.reclaim_at.is_none()
            })
            .filter(|r| zone.is_none_or(|z| r.instance.zone == z))
            .map(|r| r.instance.id.clone())
            .collect();
        // Seeded Fisher-Yates, then take the first share.
        for i in (1..ids.len()).rev() {
            let j = (st.rng.next_u64() % (i as u64 + 1)) as usize;
            ids.swap(i, j);
        }
        let n = ((ids.len() as f64) * fraction.clamp(0.0, 1.0)).ceil() as usize;
        ids.truncate(n);
        ids.sort();
        let at = add(now, Duration::from_secs(120));
        for id in &ids {
            if let Some(r) = st.instances.get_mut(id) {
                r.reclaim_at = Some(at);
                r.reclaim_code = "Server.SpotInstanceTermination";
            }
            let body = sqs::spot_interruption_warning(&self.config.region, id, now);
            st.queue.send(body, now);
        }
        drop(st);
        for id in &ids {
            self.journal.record(
                "fault",
                format!("spot-interruption-warning {id} terminates at {at}"),
            );
        }
        ids
    }

    /// Make launches whose block devices use `key` fail until `until`.
    pub fn disable_kms_key(&self, key: &str, until: Timestamp) {
        self.lock().disabled_keys.insert(key.to_string(), until);
        self.journal
            .record("fault", format!("kms-key-disabled {key} until {until}"));
    }

    /// Throttle a share of EC2 calls with RequestLimitExceeded until `until`.
    pub fn throttle(&self, rate: f64, until: Timestamp) {
        self.lock().throttle = Some((rate.clamp(0.0, 1.0), until));
        self.journal
            .record("fault", format!("api-throttle rate={rate} until {until}"));
    }

    /// Every EC2 call fails with `Unavailable` until `until`.
    pub fn outage(&self, until: Timestamp) {
        self.lock().outage_until = Some(until);
        self.journal
            .record("fault", format!("api-outage until {until}"));
    }

    pub fn set_vcpu_quota(&self, ct: CapacityType, vcpus: u32) {
        self.lock().vcpu_quota.insert(ct, vcpus);
        self.journal
            .record("fault", format!("vcpu-quota {ct} {vcpus}"));
    }

    /// Publish a newer AL2023 standard image for an architecture (`x86_64` or `arm64`) for every Kubernetes
    /// version, moving each `recommended` parameter to it; with `deprecate_previous` the images they named
    /// are deprecated now (AWS withdrawing a release with a regression). Returns the new image ids.
    pub fn release_ami(&self, arch: &str, version: &str, deprecate_previous: bool) -> Vec<String> {
        let now = self.clock.now();
        let mut st = self.lock();
        let mut release = crate::images::Published::default();
        let mut ids = Vec::new();
        for k8s in crate::images::KUBERNETES_VERSIONS {
            ids.push(release.al2023(k8s, arch, "standard", version, &now.to_string()));
        }
        for (name, id) in release.parameters {
            let previous = st.parameters.insert(name.clone(), id);
            if deprecate_previous
                && name.ends_with("/recommended/image_id")
                && let Some(old) = previous
            {
                for image in st.images.iter_mut().filter(|i| i.id == old) {
                    image.deprecation_time = Some(now.to_string());
                }
            }
        }
        st.images.extend(release.images);
        drop(st);
        let what = if deprecate_previous {
            " (previous deprecated)"
        } else {
            ""
        };
        self.journal.record(
            "fault",
            format!("ami-release al2023 {arch} {version}{what}"),
        );
        ids
    }

    /// Put any body on the interruption queue (malformed and unknown messages included).
    pub fn inject_message(&self, body: String) {
        let now = self.clock.now();
        self.lock().queue.send(body, now);
    }

    /// SQS SendMessage: any body onto the queue the URL names; the new message's id.
    pub fn send_message(&self, queue_url: &str, body: String) -> Result<String, CloudError> {
        if queue_url != self.config.queue_url {
            return Err(CloudError::new(
                "AWS.SimpleQueueService.NonExistentQueue",
                format!("The specified queue does not exist: {queue_url}"),
            ));
        }
        let now = self.clock.now();
        Ok(self.lock().queue.send(body, now))
    }

    /// The time as this cloud's clock tells it.
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The same cloud (its state shared) read through another clock: a front served outside the
    /// simulation's runtime tells time by the time the simulation publishes.
    pub fn with_clock(&self, clock: Arc<dyn Clock>) -> FakeCloud {
        FakeCloud {
            clock,
            ..self.clone()
        }
    }

    /// The same cloud (its state shared) reporting to another journal: a front served outside the
    /// simulation writes its lines at the time the simulation publishes.
    pub fn with_journal(&self, journal: Arc<dyn Journal>) -> FakeCloud {
        FakeCloud {
            journal,
            ..self.clone()
        }
    }

    /// A scheduled-maintenance AWS Health event for an instance.
    pub fn health_event(&self, instance_id: &str) {
        let now = self.clock.now();
        let body = sqs::scheduled_change(&self.config.region, instance_id, now);
        self.lock().queue.send(body, now);
    }

    /// A rebalance recommendation for an instance.
    pub fn rebalance_recommendation(&self, instance_id: &str) {
        let now = self.clock.now();
        let body = sqs::rebalance_recommendation(&self.config.region, instance_id, now);
        self.lock().queue.send(body, now);
    }

    // ---- the clock-driven life --------------------------------------------------------------------------

    /// Move everything whose time has come: instance states, reclaims, shortages, spot prices.
    pub fn step(&self) {
        let now = self.clock.now();
        let mut lines = Vec::new();
        let region = self.config.region.clone();
        let mut st = self.lock();
        let State {
            instances,
            pools,
            queue,
            ..
        } = &mut *st;
        for rec in instances.values_mut() {
            if let Some(at) = rec.reclaim_at
                && at <= now
                && rec.instance.state == InstanceState::Running
            {
                rec.instance.state = InstanceState::ShuttingDown;
                rec.instance.state_reason = Some(StateReason {
                    code: rec.reclaim_code.into(),
                    message: format!("{}: the capacity was reclaimed", rec.reclaim_code),
                });
                rec.transition_at = add(now, self.config.shutdown_latency);
                queue.send(
                    sqs::state_change(&region, &rec.instance.id, "shutting-down", now),
                    now,
                );
                lines.push(format!("reclaimed {}", rec.instance.id));
                continue;
            }
            if rec.transition_at > now {
                continue;
            }
            match rec.instance.state {
                InstanceState::Pending if rec.kms_failure => {
                    rec.instance.state = InstanceState::Terminated;
                    rec.instance.state_reason = Some(StateReason {
                        code: "Client.InternalError".into(),
                        message: "Client.InternalError: Client error on launch".into(),
                    });
                    release(pools, &rec.instance);
                    queue.send(
                        sqs::state_change(&region, &rec.instance.id, "terminated", now),
                        now,
                    );
                    lines.push(format!(
                        "terminated {} Client.InternalError: Client error on launch",
                        rec.instance.id
                    ));
                }
                InstanceState::Pending => {
                    rec.instance.state = InstanceState::Running;
                    queue.send(
                        sqs::state_change(&region, &rec.instance.id, "running", now),
                        now,
                    );
                    lines.push(format!(
                        "running {} {}",
                        rec.instance.id, rec.instance.private_dns_name
                    ));
                }
                InstanceState::ShuttingDown => {
                    rec.instance.state = InstanceState::Terminated;
                    release(pools, &rec.instance);
                    queue.send(
                        sqs::state_change(&region, &rec.instance.id, "terminated", now),
                        now,
                    );
                    lines.push(format!("terminated {}", rec.instance.id));
                }
                _ => {}
            }
        }
        for pool in pools.values_mut() {
            if pool.short_until.is_some_and(|u| u <= now) {
                pool.short_until = None;
            }
        }
        // Reservations that end: a Capacity Block warns 40 minutes ahead and reclaims from 30 minutes
        // ahead; a default one's instances run on outside it once it expires.
        let mut ending: Vec<(String, bool)> = Vec::new();
        let State {
            reservations: all,
            queue,
            ..
        } = &mut *st;
        for r in all.values_mut() {
            let Some(end) = r.end else { continue };
            if r.cancelled_at.is_some() {
                continue;
            }
            if r.kind == ReservationType::CapacityBlock {
                if !r.warned && now >= sub(end, BLOCK_WARNING) {
                    r.warned = true;
                    let body = reservations::block_expiration_warning(&region, &r.id, end, now);
                    queue.send(body, now);
                    lines.push(format!("capacity block {} ends at {end}: warned", r.id));
                }
                if now >= sub(end, BLOCK_RECLAIM) {
                    r.cancelled_at = Some(end);
                    ending.push((r.id.clone(), true));
                }
            } else if now >= end {
                r.cancelled_at = Some(end);
                ending.push((r.id.clone(), false));
            }
        }
        for (id, terminate) in ending {
            lines.extend(self.leave_reservation(&mut st, &id, terminate, now));
        }
        if now >= st.next_price_move {
            st.next_price_move = add(now, self.config.spot_price_interval);
            let State {
                rng, spot_prices, ..
            } = &mut *st;
            for ((t, _), price) in spot_prices.iter_mut() {
                let od = self
                    .catalog
                    .types
                    .get(t)
                    .map_or(*price, |e| e.on_demand_price);
                // A bounded random walk: +-5% of on-demand per step.
                let step = (unit(rng) - 0.5) * 0.10 * od;
                *price = clamp_spot(od, *price + step);
            }
        }
        drop(st);
        for l in lines {
            self.journal.record("cloud", l);
        }
    }

    /// Every EC2 call: latency, then outage and throttling.
    async fn api_call(&self, action: &str) -> Result<(), CloudError> {
        let latency = sample(&mut self.lock().rng, self.config.api_latency);
        self.clock.sleep(latency).await;
        let now = self.clock.now();
        let mut st = self.lock();
        if st.outage_until.is_some_and(|u| now < u) {
            return Err(CloudError::new(
                "Unavailable",
                format!("{action}: the service is unavailable; try again later"),
            ));
        }
        if let Some((rate, until)) = st.throttle {
            if now >= until {
                st.throttle = None;
            } else if unit(&mut st.rng) < rate {
                return Err(CloudError::new(
                    "RequestLimitExceeded",
                    format!("{action}: Request limit exceeded."),
                ));
            }
        }
        Ok(())
    }

    fn price(&self, st: &State, instance_type: &str, zone: &str, ct: CapacityType) -> Option<f64> {
        if !st
            .offerings
            .contains(&(instance_type.to_string(), zone.to_string()))
        {
            return None;
        }
        match ct {
            CapacityType::OnDemand | CapacityType::Reserved => {
                self.entry(instance_type).map(|e| e.on_demand_price)
            }
            CapacityType::Spot => st
                .spot_prices
                .get(&(instance_type.to_string(), zone.to_string()))
                .copied(),
        }
    }

    fn vcpus_in_use(&self, st: &State, ct: CapacityType) -> u32 {
        st.instances
            .values()
            .filter(|r| !r.foreign && r.instance.capacity_type == ct)
            .filter(|r| {
                matches!(
                    r.instance.state,
                    InstanceState::Pending | InstanceState::Running
                )
            })
            .filter_map(|r| self.entry(&r.instance.instance_type).map(|e| e.vcpu))
            .sum()
    }

    /// Create the instance record (consuming pool depth and a subnet address).
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        st: &mut State,
        at: Placement,
        tags: BTreeMap<String, String>,
        template: Option<&LaunchTemplate>,
        now: Timestamp,
    ) -> Option<InstanceRecord> {
        let Placement {
            instance_type,
            zone,
            ct,
            price,
            reservation,
        } = at;
        let lifecycle = match reservation {
            Some(id) => st.reservations.get(id).and_then(Reservation::lifecycle),
            None => (ct == CapacityType::Spot).then(|| "spot".to_string()),
        };
        let State {
            rng,
            subnets,
            instances,
            pools,
            disabled_keys,
            ..
        } = st;
        let subnet = subnets.iter_mut().find(|s| s.subnet.zone == zone)?;
        subnet.subnet.available_ip_addresses =
            subnet.subnet.available_ip_addresses.checked_sub(1)?;
        let host = subnet.next_host;
        subnet.next_host += 1;
        let [a, b, c] = subnet.cidr_base;
        let ip = format!("{a}.{b}.{}.{}", u32::from(c) + host / 256, host % 256);
        if reservation.is_none()
            && let Some(p) = pools.get_mut(&(instance_type.to_string(), zone.to_string(), ct))
        {
            p.depth = p.depth.saturating_sub(1);
        }
        let id = hex_id("i", rng);
        let latency = sample(rng, self.config.launch_latency);
        let lag = sample(rng, self.config.visibility_lag);
        let kms_failure = template.is_some_and(|t| {
            t.data.block_devices.iter().any(|d| {
                d.kms_key_id
                    .as_ref()
                    .is_some_and(|k| disabled_keys.get(k).is_some_and(|u| now < *u))
            })
        });
        let kms_latency = Duration::from_millis(2000 + rng.next_u64() % 3000);
        let instance = Instance {
            id: id.clone(),
            instance_type: instance_type.to_string(),
            zone: zone.to_string(),
            subnet_id: subnet.subnet.id.clone(),
            capacity_type: ct,
            state: InstanceState::Pending,
            state_reason: None,
            private_ip: ip.clone(),
            private_dns_name: format!("ip-{}.ec2.internal", ip.replace('.', "-")),
            image_id: template
                .map(|t| t.data.image_id.clone())
                .unwrap_or_default(),
            launch_time: now,
            tags,
            capacity_reservation_id: reservation.map(str::to_string),
            capacity_reservation_preference: (ct != CapacityType::Spot).then(|| {
                template
                    .and_then(|t| t.data.capacity_reservation.as_ref())
                    .map_or_else(|| "open".to_string(), |c| c.preference.clone())
            }),
            instance_lifecycle: lifecycle,
        };
        let rec = InstanceRecord {
            instance,
            price,
            transition_at: add(now, if kms_failure { kms_latency } else { latency }),
            visible_at: add(now, lag),
            foreign: false,
            node_group: false,
            kms_failure,
            reclaim_at: None,
            reclaim_code: "",
            user_data: template
                .map(|t| t.data.user_data.clone())
                .unwrap_or_default(),
        };
        instances.insert(id, rec.clone());
        Some(rec)
    }
}

/// The parts of the state that say what is offered where: offerings, pools, spot prices.
type Market<'a> = (
    &'a mut BTreeSet<(String, String)>,
    &'a mut BTreeMap<PoolKey, Pool>,
    &'a mut BTreeMap<(String, String), f64>,
);

/// Offer a type in a zone that does not offer it yet: open pools of the configured depths, spot at half
/// the on-demand price.
fn offer(
    (offerings, pools, spot_prices): Market<'_>,
    config: &CloudConfig,
    name: &str,
    zone: &str,
    on_demand_price: f64,
) {
    let key = (name.to_string(), zone.to_string());
    if !offerings.insert(key.clone()) {
        return;
    }
    for (ct, depth) in [
        (CapacityType::Spot, config.spot_depth.1),
        (CapacityType::OnDemand, config.on_demand_depth),
    ] {
        pools.insert(
            (key.0.clone(), key.1.clone(), ct),
            Pool {
                depth,
                short_until: None,
            },
        );
    }
    spot_prices
        .entry(key)
        .or_insert_with(|| clamp_spot(on_demand_price, on_demand_price * 0.5));
}

/// Where and how one instance is placed.
struct Placement<'a> {
    instance_type: &'a str,
    zone: &'a str,
    ct: CapacityType,
    price: f64,
    /// The capacity reservation it runs in.
    reservation: Option<&'a str>,
}

/// Instances running (or about to) in a reservation.
fn reservation_used(st: &State, id: &str) -> u32 {
    st.instances
        .values()
        .filter(|r| {
            r.instance.capacity_reservation_id.as_deref() == Some(id)
                && matches!(
                    r.instance.state,
                    InstanceState::Pending | InstanceState::Running
                )
        })
        .count() as u32
}

/// The reservation an override launches into, as EC2 decides it from the launch template's
/// CapacityReservationSpecification and InstanceMarketOptions: the target when one is named (or why
/// not), else for on-demand under the `open` preference the first active open default reservation of the
/// type and zone with room.
fn reservation_for(
    st: &State,
    o: &FleetOverride,
    ct: CapacityType,
    kind: Option<ReservationType>,
    now: Timestamp,
) -> Result<Option<String>, (&'static str, String)> {
    let data = st
        .launch_templates
        .get(&o.launch_template_name)
        .map(|t| &t.data);
    let spec = data.and_then(|d| d.capacity_reservation.as_ref());
    let market = data.and_then(|d| d.market_type.as_deref());
    if ct == CapacityType::Spot {
        return Ok(None);
    }
    if let Some(id) = spec.and_then(|s| s.target_id.as_ref()) {
        let Some(r) = st.reservations.get(id) else {
            return Err((
                "InvalidCapacityReservationId.NotFound",
                format!("The capacity reservation ID '{id}' does not exist"),
            ));
        };
        if r.instance_type != o.instance_type || r.zone != o.zone {
            return Err((
                "InvalidParameterValue",
                format!(
                    "capacity reservation {id} holds {} in {}, not {} in {}",
                    r.instance_type, r.zone, o.instance_type, o.zone
                ),
            ));
        }
        let wants_block = market == Some("capacity-block");
        let is_block = r.kind == ReservationType::CapacityBlock;
        if wants_block != is_block || (is_block && kind != Some(ReservationType::CapacityBlock)) {
            return Err((
                "InvalidParameterValue",
                format!(
                    "capacity reservation {id} is {}: launch it with market type {} and target capacity type {}",
                    if is_block {
                        "a Capacity Block"
                    } else {
                        "not a Capacity Block"
                    },
                    if is_block { "capacity-block" } else { "unset" },
                    if is_block {
                        "capacity-block"
                    } else {
                        "on-demand"
                    },
                ),
            ));
        }
        if !r.launchable(now) || reservation_used(st, id) >= r.count {
            return Err((
                "ReservationCapacityExceeded",
                format!(
                    "Insufficient capacity in capacity reservation {id} ({})",
                    r.state(now)
                ),
            ));
        }
        return Ok(Some(id.clone()));
    }
    if spec.is_some_and(|s| s.preference != "open") {
        return Ok(None);
    }
    Ok(st
        .reservations
        .values()
        .find(|r| {
            r.kind == ReservationType::Default
                && r.instance_match_criteria == "open"
                && r.instance_type == o.instance_type
                && r.zone == o.zone
                && r.launchable(now)
                && reservation_used(st, &r.id) < r.count
        })
        .map(|r| r.id.clone()))
}

/// EC2's answer when a call names an instance it does not (yet) show: eventual consistency included.
fn unknown_instance(st: &State, ids: &[String], now: Timestamp) -> Result<(), CloudError> {
    match ids
        .iter()
        .find(|id| st.instances.get(*id).is_none_or(|r| r.visible_at > now))
    {
        Some(id) => Err(CloudError::new(
            "InvalidInstanceID.NotFound",
            format!("The instance ID '{id}' does not exist"),
        )),
        None => Ok(()),
    }
}

fn or_all(list: &str) -> &str {
    if list.is_empty() { "*" } else { list }
}

fn sample_u32(rng: &mut ChaCha8Rng, (lo, hi): (u32, u32)) -> u32 {
    if hi <= lo {
        lo
    } else {
        lo + rng.next_u32() % (hi - lo + 1)
    }
}

fn release(pools: &mut BTreeMap<PoolKey, Pool>, i: &Instance) {
    // An instance in a reservation took nothing from the open pool.
    if i.capacity_reservation_id.is_some() {
        return;
    }
    if let Some(p) = pools.get_mut(&(i.instance_type.clone(), i.zone.clone(), i.capacity_type)) {
        p.depth += 1;
    }
}

fn fleet_error(code: &str, message: String, o: &FleetOverride) -> FleetError {
    FleetError {
        code: code.to_string(),
        message,
        instance_type: o.instance_type.clone(),
        zone: o.zone.clone(),
    }
}

#[async_trait]
impl Cloud for FakeCloud {
    async fn describe_instance_types(&self) -> Result<Vec<InstanceTypeInfo>, CloudError> {
        self.api_call("DescribeInstanceTypes").await?;
        Ok(self.catalog.describe_instance_types())
    }

    async fn describe_instance_type_offerings(
        &self,
    ) -> Result<Vec<InstanceTypeOffering>, CloudError> {
        self.api_call("DescribeInstanceTypeOfferings").await?;
        Ok(self.market().0)
    }

    async fn describe_spot_price_history(&self) -> Result<Vec<SpotPrice>, CloudError> {
        self.api_call("DescribeSpotPriceHistory").await?;
        Ok(self.market().2)
    }

    async fn on_demand_prices(&self) -> Result<BTreeMap<String, f64>, CloudError> {
        self.api_call("GetProducts").await?;
        Ok(self.market().1)
    }

    async fn describe_subnets(&self) -> Result<Vec<Subnet>, CloudError> {
        self.api_call("DescribeSubnets").await?;
        Ok(self
            .lock()
            .subnets
            .iter()
            .map(|s| s.subnet.clone())
            .collect())
    }

    async fn describe_security_groups(
        &self,
        filter: TagFilter,
    ) -> Result<Vec<SecurityGroup>, CloudError> {
        self.api_call("DescribeSecurityGroups").await?;
        Ok(self
            .lock()
            .security_groups
            .iter()
            .filter(|g| filter.matches(&g.id, &g.name, &g.tags))
            .cloned()
            .collect())
    }

    async fn describe_capacity_reservations(
        &self,
        query: CapacityReservationQuery,
    ) -> Result<Vec<CapacityReservation>, CloudError> {
        self.api_call("DescribeCapacityReservations").await?;
        let now = self.clock.now();
        let st = self.lock();
        if let Some(id) = query.ids.iter().find(|i| !st.reservations.contains_key(*i)) {
            return Err(CloudError::new(
                "InvalidCapacityReservationId.NotFound",
                format!("The capacity reservation ID '{id}' does not exist"),
            ));
        }
        Ok(st
            .reservations
            .values()
            .map(|r| r.describe(reservation_used(&st, &r.id), now))
            .filter(|r| query.matches(r))
            .collect())
    }

    async fn describe_images(&self, query: ImageQuery) -> Result<Vec<Image>, CloudError> {
        self.api_call("DescribeImages").await?;
        let owned = |i: &Image| {
            query.owners.is_empty()
                || query.owners.iter().any(|o| match o.as_str() {
                    "self" => i.owner_id == crate::sqs::ACCOUNT,
                    alias @ ("amazon" | "aws-marketplace") => {
                        i.owner_alias.as_deref() == Some(alias)
                    }
                    account => i.owner_id == account,
                })
        };
        Ok(self
            .lock()
            .images
            .iter()
            .filter(|i| query.filter.matches(&i.id, &i.name, &i.tags) && owned(i))
            .cloned()
            .collect())
    }

    async fn get_parameter(&self, name: &str) -> Result<String, CloudError> {
        self.api_call("GetParameter").await?;
        self.lock().parameters.get(name).cloned().ok_or_else(|| {
            CloudError::new("ParameterNotFound", format!("Parameter {name} not found."))
        })
    }

    async fn create_launch_template(
        &self,
        name: String,
        data: LaunchTemplateData,
    ) -> Result<LaunchTemplate, CloudError> {
        self.api_call("CreateLaunchTemplate").await?;
        let mut st = self.lock();
        if st.launch_templates.contains_key(&name) {
            return Err(CloudError::new(
                "InvalidLaunchTemplateName.AlreadyExistsException",
                format!("Launch template name already in use: {name}"),
            ));
        }
        if st.launch_templates.len() as u32 >= self.config.launch_template_quota {
            return Err(CloudError::new(
                "MaxTemplateLimitExceeded",
                format!(
                    "You've reached the maximum number of launch templates ({}) for this account",
                    self.config.launch_template_quota
                ),
            ));
        }
        let lt = LaunchTemplate {
            id: hex_id("lt", &mut st.rng),
            name: name.clone(),
            data,
        };
        st.launch_templates.insert(name, lt.clone());
        Ok(lt)
    }

    async fn describe_launch_templates(
        &self,
        names: Vec<String>,
    ) -> Result<Vec<LaunchTemplate>, CloudError> {
        self.api_call("DescribeLaunchTemplates").await?;
        let st = self.lock();
        if let Some(missing) = names.iter().find(|n| !st.launch_templates.contains_key(*n)) {
            return Err(CloudError::new(
                "InvalidLaunchTemplateName.NotFoundException",
                format!(
                    "At least one of the launch templates specified in the request does not exist: {missing}"
                ),
            ));
        }
        Ok(st
            .launch_templates
            .values()
            .filter(|t| names.is_empty() || names.contains(&t.name))
            .cloned()
            .collect())
    }

    async fn delete_launch_template(&self, name: String) -> Result<(), CloudError> {
        self.api_call("DeleteLaunchTemplate").await?;
        match self.lock().launch_templates.remove(&name) {
            Some(_) => Ok(()),
            None => Err(CloudError::new(
                "InvalidLaunchTemplateName.NotFoundException",
                format!(
                    "The specified launch template, with template name {name}, does not exist."
                ),
            )),
        }
    }

    async fn create_fleet(
        &self,
        request: CreateFleetRequest,
    ) -> Result<CreateFleetOutput, CloudError> {
        let out = self.fleet(request).await?;
        if !out.instances.is_empty() && self.fleet_caller_dies() {
            // EC2 has launched; the caller's process dies before it hears back. The simulator crashes the
            // host on this signal, dropping this future.
            std::future::pending::<()>().await;
        }
        Ok(out)
    }

    async fn describe_instances(
        &self,
        request: DescribeInstancesRequest,
    ) -> Result<DescribeInstancesOutput, CloudError> {
        self.api_call("DescribeInstances").await?;
        if !request.instance_ids.is_empty() && request.max_results.is_some() {
            return Err(CloudError::new(
                "InvalidParameterCombination",
                "The parameter instancesSet cannot be used with the parameter maxResults",
            ));
        }
        if let Some(m) = request.max_results
            && !(5..=1000).contains(&m)
        {
            return Err(CloudError::new(
                "InvalidParameterValue",
                format!("MaxResults must be between 5 and 1000, got {m}"),
            ));
        }
        let now = self.clock.now();
        let st = self.lock();
        let visible = |r: &&InstanceRecord| r.visible_at <= now;
        let missing: Vec<&String> = request
            .instance_ids
            .iter()
            .filter(|id| st.instances.get(*id).filter(visible).is_none())
            .collect();
        if !missing.is_empty() {
            let ids: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            return Err(CloudError::new(
                "InvalidInstanceID.NotFound",
                format!("The instance IDs '{}' do not exist", ids.join(", ")),
            ));
        }
        let all: Vec<Instance> = st
            .instances
            .values()
            .filter(visible)
            .map(|r| &r.instance)
            .filter(|i| request.instance_ids.is_empty() || request.instance_ids.contains(&i.id))
            .filter(|i| request.tags.iter().all(|(k, v)| i.tags.get(k) == Some(v)))
            .filter(|i| request.tag_keys.iter().all(|k| i.tags.contains_key(k)))
            .filter(|i| request.states.is_empty() || request.states.contains(&i.state))
            .cloned()
            .collect();
        let start = match &request.next_token {
            None => 0,
            Some(t) => t
                .strip_prefix("page-")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= all.len())
                .ok_or_else(|| {
                    CloudError::new("InvalidParameterValue", format!("Invalid NextToken: {t}"))
                })?,
        };
        let size = request.max_results.map_or(all.len(), |m| m as usize);
        let end = (start + size).min(all.len());
        let next_token = (end < all.len()).then(|| format!("page-{end}"));
        Ok(DescribeInstancesOutput {
            instances: all[start..end].to_vec(),
            next_token,
        })
    }

    async fn terminate_instances(&self, instance_ids: Vec<String>) -> Result<(), CloudError> {
        self.api_call("TerminateInstances").await?;
        let now = self.clock.now();
        let region = self.config.region.clone();
        let mut st = self.lock();
        unknown_instance(&st, &instance_ids, now)?;
        let State {
            instances,
            queue,
            violations,
            ..
        } = &mut *st;
        let mut lines = Vec::new();
        for id in &instance_ids {
            let Some(rec) = instances.get_mut(id) else {
                continue;
            };
            if rec.foreign || rec.node_group {
                violations.push(format!(
                    "terminated {} instance {id} (tags: {:?})",
                    if rec.foreign { "foreign" } else { "node group" },
                    rec.instance.tags
                ));
            }
            if matches!(
                rec.instance.state,
                InstanceState::Pending | InstanceState::Running
            ) {
                rec.instance.state = InstanceState::ShuttingDown;
                rec.instance.state_reason = Some(StateReason {
                    code: "Client.UserInitiatedShutdown".into(),
                    message: "Client.UserInitiatedShutdown: User initiated shutdown".into(),
                });
                rec.transition_at = add(now, self.config.shutdown_latency);
                queue.send(sqs::state_change(&region, id, "shutting-down", now), now);
                lines.push(format!("shutting-down {id}"));
            }
        }
        drop(st);
        for l in lines {
            self.journal.record("cloud", l);
        }
        Ok(())
    }

    async fn create_tags(
        &self,
        resource_ids: Vec<String>,
        tags: BTreeMap<String, String>,
    ) -> Result<(), CloudError> {
        self.api_call("CreateTags").await?;
        let now = self.clock.now();
        let mut st = self.lock();
        unknown_instance(&st, &resource_ids, now)?;
        for id in &resource_ids {
            if let Some(rec) = st.instances.get_mut(id) {
                rec.instance.tags.extend(tags.clone());
            }
        }
        Ok(())
    }

    async fn receive_messages(
        &self,
        queue_url: &str,
        max: u32,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueueMessage>, CloudError> {
        let latency = sample(&mut self.lock().rng, self.config.api_latency);
        self.clock.sleep(latency).await;
        if queue_url != self.config.queue_url {
            return Err(CloudError::new(
                "AWS.SimpleQueueService.NonExistentQueue",
                format!("The specified queue does not exist: {queue_url}"),
            ));
        }
        let now = self.clock.now();
        self.lock().queue.receive(max, visibility_timeout, now)
    }

    async fn delete_message(
        &self,
        queue_url: &str,
        receipt_handle: &str,
    ) -> Result<(), CloudError> {
        let latency = sample(&mut self.lock().rng, self.config.api_latency);
        self.clock.sleep(latency).await;
        if queue_url != self.config.queue_url {
            return Err(CloudError::new(
                "AWS.SimpleQueueService.NonExistentQueue",
                format!("The specified queue does not exist: {queue_url}"),
            ));
        }
        self.lock().queue.delete(receipt_handle)
    }
}
