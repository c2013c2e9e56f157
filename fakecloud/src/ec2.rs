//! The in-memory EC2: subnets, spot prices, CreateFleet, instances moving pending -> running -> terminated.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use dovetail::clock::Clock;
use dovetail::cloud::{
    CapacityType, Cloud, CloudError, CreateFleetOutput, CreateFleetRequest,
    DescribeInstancesRequest, FleetError, Instance, InstanceState, InstanceTypeInfo,
    InstanceTypeOffering, SpotPrice, Subnet,
};
use dovetail::journal::Journal;
use jiff::Timestamp;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

use crate::catalog::{Catalog, CatalogEntry};

/// How the fake cloud behaves; every range is sampled from the seeded RNG.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub region: String,
    pub zones: Vec<String>,
    /// Time from CreateFleet to `running`.
    pub launch_latency: (Duration, Duration),
    /// Time from TerminateInstances to `terminated`.
    pub shutdown_latency: Duration,
    /// Latency of every API call.
    pub api_latency: Duration,
    /// Free addresses per subnet (one subnet per zone).
    pub subnet_size: u32,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            region: "us-east-1".to_string(),
            zones: vec![
                "us-east-1a".into(),
                "us-east-1b".into(),
                "us-east-1c".into(),
            ],
            launch_latency: (Duration::from_secs(3), Duration::from_secs(12)),
            shutdown_latency: Duration::from_secs(30),
            api_latency: Duration::from_millis(50),
            subnet_size: 4091,
        }
    }
}

/// An instance with what the simulation needs beyond the EC2 view.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    pub instance: Instance,
    pub price: f64,
    pub launched_at: Timestamp,
    /// When the instance reaches its next state (running, or terminated).
    pub transition_at: Timestamp,
    pub private_dns_name: String,
}

struct SubnetState {
    id: String,
    zone: String,
    cidr_base: [u8; 3],
    next_host: u32,
    free: u32,
}

struct State {
    rng: ChaCha8Rng,
    instances: BTreeMap<String, InstanceRecord>,
    subnets: Vec<SubnetState>,
    spot_prices: BTreeMap<(String, String), f64>,
}

/// The fake EC2. Cheap to clone; clones share one state.
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
    let span = (hi - lo).as_millis() as u64;
    lo + Duration::from_millis(rng.next_u64() % (span + 1))
}

fn add(ts: Timestamp, d: Duration) -> Timestamp {
    ts.checked_add(d).unwrap_or(ts)
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
        let mut spot_prices = BTreeMap::new();
        for (name, entry) in &catalog.types {
            for zone in &config.zones {
                // Spot trades 30-70% below on-demand; one fixed price per pool for now.
                let discount = 0.30 + (rng.next_u32() % 4001) as f64 / 10_000.0;
                let price =
                    (entry.on_demand_price * (1.0 - discount) * 10_000.0).round() / 10_000.0;
                spot_prices.insert((name.clone(), zone.clone()), price.max(0.0001));
            }
        }
        let subnets = config
            .zones
            .iter()
            .enumerate()
            .map(|(i, zone)| SubnetState {
                id: format!("subnet-{:017x}", rng.next_u64() >> 4),
                zone: zone.clone(),
                cidr_base: [10, 0, (i as u8) * 16],
                next_host: 4,
                free: config.subnet_size,
            })
            .collect();
        FakeCloud {
            config: Arc::new(config),
            catalog: Arc::new(catalog),
            clock,
            journal,
            state: Arc::new(Mutex::new(State {
                rng,
                instances: BTreeMap::new(),
                subnets,
                spot_prices,
            })),
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

    /// Every instance the cloud knows, by id (for the simulator's kubelets and observer).
    pub fn instances(&self) -> Vec<InstanceRecord> {
        self.lock().instances.values().cloned().collect()
    }

    /// Move instances whose transition time has come: pending -> running, shutting-down -> terminated.
    pub fn step(&self) {
        let now = self.clock.now();
        let mut lines = Vec::new();
        {
            let mut st = self.lock();
            for rec in st.instances.values_mut() {
                if rec.transition_at > now {
                    continue;
                }
                match rec.instance.state {
                    InstanceState::Pending => {
                        rec.instance.state = InstanceState::Running;
                        lines.push(format!(
                            "running {} {}",
                            rec.instance.id, rec.private_dns_name
                        ));
                    }
                    InstanceState::ShuttingDown => {
                        rec.instance.state = InstanceState::Terminated;
                        lines.push(format!("terminated {}", rec.instance.id));
                    }
                    _ => {}
                }
            }
        }
        for l in lines {
            self.journal.record("cloud", l);
        }
    }

    async fn api_call(&self) {
        self.clock.sleep(self.config.api_latency).await;
    }

    fn price(&self, st: &State, instance_type: &str, zone: &str, ct: CapacityType) -> Option<f64> {
        match ct {
            CapacityType::OnDemand => self.entry(instance_type).map(|e| e.on_demand_price),
            CapacityType::Spot => st
                .spot_prices
                .get(&(instance_type.to_string(), zone.to_string()))
                .copied(),
        }
    }
}

#[async_trait]
impl Cloud for FakeCloud {
    async fn describe_instance_types(&self) -> Result<Vec<InstanceTypeInfo>, CloudError> {
        self.api_call().await;
        Ok(self
            .catalog
            .types
            .values()
            .map(|e| InstanceTypeInfo {
                name: e.name.clone(),
                arch: e.arch.clone(),
                vcpu: e.vcpu,
                memory_mib: e.memory_mib,
                hypervisor: e.hypervisor.clone(),
                max_enis: e.max_enis,
                ipv4_per_eni: e.ipv4_per_eni,
                gpu_count: e.gpu_count,
                gpu_name: e.gpu_name.clone(),
                supported_usage_classes: vec![CapacityType::OnDemand, CapacityType::Spot],
            })
            .collect())
    }

    async fn describe_instance_type_offerings(
        &self,
    ) -> Result<Vec<InstanceTypeOffering>, CloudError> {
        self.api_call().await;
        let mut out = Vec::new();
        for name in self.catalog.types.keys() {
            for zone in &self.config.zones {
                out.push(InstanceTypeOffering {
                    instance_type: name.clone(),
                    zone: zone.clone(),
                });
            }
        }
        Ok(out)
    }

    async fn describe_spot_price_history(&self) -> Result<Vec<SpotPrice>, CloudError> {
        self.api_call().await;
        let st = self.lock();
        Ok(st
            .spot_prices
            .iter()
            .map(|((t, z), p)| SpotPrice {
                instance_type: t.clone(),
                zone: z.clone(),
                price: *p,
            })
            .collect())
    }

    async fn on_demand_prices(&self) -> Result<BTreeMap<String, f64>, CloudError> {
        self.api_call().await;
        Ok(self
            .catalog
            .types
            .iter()
            .map(|(n, e)| (n.clone(), e.on_demand_price))
            .collect())
    }

    async fn describe_subnets(&self) -> Result<Vec<Subnet>, CloudError> {
        self.api_call().await;
        let st = self.lock();
        Ok(st
            .subnets
            .iter()
            .map(|s| Subnet {
                id: s.id.clone(),
                zone: s.zone.clone(),
                available_ip_addresses: s.free,
                tags: BTreeMap::new(),
            })
            .collect())
    }

    async fn create_fleet(
        &self,
        request: CreateFleetRequest,
    ) -> Result<CreateFleetOutput, CloudError> {
        self.api_call().await;
        if request.overrides.is_empty() {
            return Err(CloudError::new(
                "InvalidParameterValue",
                "CreateFleet needs at least one override",
            ));
        }
        if request.target_capacity != 1 {
            return Err(CloudError::new(
                "InvalidParameterValue",
                "this fake supports TargetCapacity 1",
            ));
        }
        let now = self.clock.now();
        let mut st = self.lock();
        let mut errors = Vec::new();
        // lowest-price (on-demand) and price-capacity-optimized (spot) both land on the cheapest pool with
        // capacity while pools are unlimited; ties go to the override's priority, then its order.
        let mut ranked: Vec<(f64, f64, usize)> = Vec::new();
        for (i, o) in request.overrides.iter().enumerate() {
            let known_subnet = st
                .subnets
                .iter()
                .any(|s| s.id == o.subnet_id && s.zone == o.zone);
            match self.price(&st, &o.instance_type, &o.zone, request.capacity_type) {
                Some(p) if known_subnet => ranked.push((p, o.priority.unwrap_or(f64::MAX), i)),
                Some(_) => errors.push(FleetError {
                    code: "InvalidSubnetID.NotFound".into(),
                    message: format!("subnet {} does not exist in {}", o.subnet_id, o.zone),
                    instance_type: o.instance_type.clone(),
                    zone: o.zone.clone(),
                }),
                None => errors.push(FleetError {
                    code: "Unsupported".into(),
                    message: format!("{} is not offered in {}", o.instance_type, o.zone),
                    instance_type: o.instance_type.clone(),
                    zone: o.zone.clone(),
                }),
            }
        }
        ranked.sort_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then(a.1.total_cmp(&b.1))
                .then(a.2.cmp(&b.2))
        });
        let Some(&(price, _, idx)) = ranked.first() else {
            return Ok(CreateFleetOutput {
                instances: Vec::new(),
                errors,
            });
        };
        let o = request.overrides[idx].clone();
        let State {
            rng,
            subnets,
            instances,
            ..
        } = &mut *st;
        let Some(subnet) = subnets.iter_mut().find(|s| s.id == o.subnet_id) else {
            return Ok(CreateFleetOutput {
                instances: Vec::new(),
                errors,
            });
        };
        if subnet.free == 0 {
            errors.push(FleetError {
                code: "InsufficientFreeAddressesInSubnet".into(),
                message: format!("subnet {} has no free addresses", subnet.id),
                instance_type: o.instance_type.clone(),
                zone: o.zone.clone(),
            });
            return Ok(CreateFleetOutput {
                instances: Vec::new(),
                errors,
            });
        }
        subnet.free -= 1;
        let host = subnet.next_host;
        subnet.next_host += 1;
        let [a, b, c] = subnet.cidr_base;
        let ip = format!("{a}.{b}.{}.{}", u32::from(c) + host / 256, host % 256);
        let id = format!("i-{:017x}", rng.next_u64() >> 4);
        let latency = sample(rng, self.config.launch_latency);
        let instance = Instance {
            id: id.clone(),
            instance_type: o.instance_type.clone(),
            zone: o.zone.clone(),
            capacity_type: request.capacity_type,
            state: InstanceState::Pending,
            private_ip: ip.clone(),
            tags: request.tags.clone(),
        };
        let rec = InstanceRecord {
            instance: instance.clone(),
            price,
            launched_at: now,
            transition_at: add(now, latency),
            private_dns_name: format!("ip-{}.ec2.internal", ip.replace('.', "-")),
        };
        instances.insert(id.clone(), rec);
        drop(st);
        let owner = request
            .tags
            .get("karpenter.sh/nodeclaim")
            .map(|n| format!(" for nodeclaim/{n}"))
            .unwrap_or_default();
        self.journal.record(
            "cloud",
            format!(
                "launch {id} {} {} {} {price:.4}/h{owner}",
                o.instance_type, o.zone, request.capacity_type
            ),
        );
        Ok(CreateFleetOutput {
            instances: vec![instance],
            errors,
        })
    }

    async fn describe_instances(
        &self,
        request: DescribeInstancesRequest,
    ) -> Result<Vec<Instance>, CloudError> {
        self.api_call().await;
        let st = self.lock();
        for id in &request.instance_ids {
            if !st.instances.contains_key(id) {
                return Err(CloudError::new(
                    "InvalidInstanceID.NotFound",
                    format!("The instance ID '{id}' does not exist"),
                ));
            }
        }
        Ok(st
            .instances
            .values()
            .map(|r| &r.instance)
            .filter(|i| request.instance_ids.is_empty() || request.instance_ids.contains(&i.id))
            .filter(|i| request.tags.iter().all(|(k, v)| i.tags.get(k) == Some(v)))
            .filter(|i| request.states.is_empty() || request.states.contains(&i.state))
            .cloned()
            .collect())
    }

    async fn terminate_instances(&self, instance_ids: Vec<String>) -> Result<(), CloudError> {
        self.api_call().await;
        let now = self.clock.now();
        let mut st = self.lock();
        if let Some(id) = instance_ids
            .iter()
            .find(|id| !st.instances.contains_key(*id))
        {
            return Err(CloudError::new(
                "InvalidInstanceID.NotFound",
                format!("The instance ID '{id}' does not exist"),
            ));
        }
        for id in &instance_ids {
            if let Some(rec) = st.instances.get_mut(id)
                && matches!(
                    rec.instance.state,
                    InstanceState::Pending | InstanceState::Running
                )
            {
                rec.instance.state = InstanceState::ShuttingDown;
                rec.transition_at = add(now, self.config.shutdown_latency);
            }
        }
        Ok(())
    }
}
