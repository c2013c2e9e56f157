//! How the fake cloud behaves: latencies, pool depths, quotas; every range is sampled from the seeded RNG.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub region: String,
    pub zones: Vec<String>,
    /// The cluster whose discovery tags subnets and security groups carry (`karpenter.sh/discovery`).
    pub cluster_name: String,
    /// Time from CreateFleet to `running`.
    pub launch_latency: (Duration, Duration),
    /// Time from TerminateInstances (or a reclaim) to `terminated`.
    pub shutdown_latency: Duration,
    /// Latency of every API call.
    pub api_latency: (Duration, Duration),
    /// How long a new instance stays invisible to DescribeInstances (eventual consistency).
    pub visibility_lag: (Duration, Duration),
    /// Free addresses per subnet (one subnet per zone).
    pub subnet_size: u32,
    /// Chance that a type is offered in a zone (every type is offered in at least one zone).
    pub offering_probability: f64,
    /// Instances each spot pool can still supply, drawn per pool.
    pub spot_depth: (u32, u32),
    /// Instances each on-demand pool can still supply.
    pub on_demand_depth: u32,
    /// Running vCPU quotas ("Running On-Demand Standard instances", "All Standard Spot Instance Requests").
    pub on_demand_vcpu_quota: u32,
    pub spot_vcpu_quota: u32,
    /// Launch templates the account may hold.
    pub launch_template_quota: u32,
    /// How often spot prices move.
    pub spot_price_interval: Duration,
    /// Instances of other owners present from the start (untagged, or another cluster's).
    pub foreign_instances: u32,
    /// The interruption queue's URL.
    pub queue_url: String,
    /// Subnets as declared (none: one per zone with `subnet_size` addresses, tagged for discovery).
    pub subnets: Vec<SubnetSpec>,
    /// Security groups as declared (none: the cluster's node group, tagged for discovery, and `default`).
    pub security_groups: Vec<SecurityGroupSpec>,
    /// Images of the account (or anyone's) beside Amazon's published EKS images.
    pub images: Vec<dovetail::aws::cloud::Image>,
    /// Changes to the seeded offerings and spot prices, applied in order.
    pub offerings: Vec<OfferingRule>,
    /// Instances of the cluster's node groups, running from the start (one entry per instance).
    pub existing_instances: Vec<ExistingInstance>,
    /// Capacity reservations of the account (On-Demand Capacity Reservations and Capacity Blocks).
    pub capacity_reservations: Vec<crate::reservations::ReservationSpec>,
}

/// A node group's instance: its nodes register with the labels and taints its tags give
/// (`k8s.io/cluster-autoscaler/node-template/...`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingInstance {
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: dovetail::aws::cloud::CapacityType,
    pub tags: std::collections::BTreeMap<String, String>,
}

/// One declared subnet; its id is drawn when not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetSpec {
    pub id: Option<String>,
    pub zone: String,
    pub tags: std::collections::BTreeMap<String, String>,
    pub available_ip_addresses: u32,
}

/// One declared security group; its id is drawn when not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupSpec {
    pub id: Option<String>,
    pub name: String,
    pub tags: std::collections::BTreeMap<String, String>,
}

/// Types matching `instance_types` (`*` wildcards; empty: all) in `zones` (empty: all): offered or not,
/// and their spot price there.
#[derive(Debug, Clone, PartialEq)]
pub struct OfferingRule {
    pub instance_types: Vec<String>,
    pub zones: Vec<String>,
    pub offered: Option<bool>,
    pub spot_price: Option<f64>,
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
            cluster_name: "sim".to_string(),
            launch_latency: (Duration::from_secs(3), Duration::from_secs(12)),
            shutdown_latency: Duration::from_secs(30),
            api_latency: (Duration::from_millis(30), Duration::from_millis(80)),
            visibility_lag: (Duration::ZERO, Duration::from_secs(3)),
            subnet_size: 4091,
            offering_probability: 0.9,
            spot_depth: (20, 200),
            on_demand_depth: 1000,
            on_demand_vcpu_quota: 20_000,
            spot_vcpu_quota: 20_000,
            launch_template_quota: 5000,
            spot_price_interval: Duration::from_secs(3600),
            foreign_instances: 3,
            queue_url: "https://sqs.us-east-1.amazonaws.com/123456789012/sim".to_string(),
            subnets: Vec::new(),
            security_groups: Vec::new(),
            images: Vec::new(),
            offerings: Vec::new(),
            existing_instances: Vec::new(),
            capacity_reservations: Vec::new(),
        }
    }
}
