//! The Cloud seam: the EC2 operations the AWS provider logic needs, in Dovetail's own types.
//!
//! Types mirror the EC2 API (CreateFleet with overrides, DescribeInstances, ...) closely enough that the real
//! aws-sdk adapter is a field-by-field mapping; everything above the API (which overrides to send, what an
//! error code means) is controller code.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

/// `on-demand` or `spot`, as EC2 and the `karpenter.sh/capacity-type` label spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CapacityType {
    OnDemand,
    Spot,
}

impl CapacityType {
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityType::OnDemand => "on-demand",
            CapacityType::Spot => "spot",
        }
    }

    pub fn parse(s: &str) -> Option<CapacityType> {
        match s {
            "on-demand" => Some(CapacityType::OnDemand),
            "spot" => Some(CapacityType::Spot),
            _ => None,
        }
    }
}

impl fmt::Display for CapacityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// DescribeInstanceTypes, reduced to what scheduling needs.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceTypeInfo {
    pub name: String,
    pub arch: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub hypervisor: String,
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
    pub gpu_count: u32,
    pub gpu_name: String,
    pub supported_usage_classes: Vec<CapacityType>,
}

/// DescribeInstanceTypeOfferings (location type availability-zone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceTypeOffering {
    pub instance_type: String,
    pub zone: String,
}

/// One DescribeSpotPriceHistory entry (the latest per type and zone).
#[derive(Debug, Clone, PartialEq)]
pub struct SpotPrice {
    pub instance_type: String,
    pub zone: String,
    pub price: f64,
}

/// One subnet, as DescribeSubnets reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub zone: String,
    pub available_ip_addresses: u32,
    pub tags: BTreeMap<String, String>,
}

/// A CreateFleet override: one (instance type, subnet) pair the fleet may launch.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetOverride {
    pub instance_type: String,
    pub subnet_id: String,
    pub zone: String,
    /// Lower is preferred when the strategy honours priorities.
    pub priority: Option<f64>,
}

/// A CreateFleet request of type `instant`, one capacity type per call.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateFleetRequest {
    pub client_token: String,
    pub capacity_type: CapacityType,
    pub launch_template_name: String,
    pub overrides: Vec<FleetOverride>,
    pub target_capacity: u32,
    pub tags: BTreeMap<String, String>,
}

/// One per-override error in a CreateFleet answer (EC2 reports them beside partial success).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetError {
    pub code: String,
    pub message: String,
    pub instance_type: String,
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateFleetOutput {
    pub instances: Vec<Instance>,
    pub errors: Vec<FleetError>,
}

/// EC2 instance states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    pub state: InstanceState,
    pub private_ip: String,
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    /// The Kubernetes providerID of this instance: `aws:///<zone>/<instance-id>`.
    pub fn provider_id(&self) -> String {
        format!("aws:///{}/{}", self.zone, self.id)
    }
}

/// DescribeInstances filters (all given filters must match).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DescribeInstancesRequest {
    pub instance_ids: Vec<String>,
    /// `tag:<key>` = value.
    pub tags: BTreeMap<String, String>,
    pub states: Vec<InstanceState>,
}

/// An EC2 error answer: the code is what the controller classifies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CloudError {
    pub code: String,
    pub message: String,
}

impl CloudError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        CloudError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// The EC2 API as the controller needs it.
#[async_trait]
pub trait Cloud: Send + Sync + 'static {
    async fn describe_instance_types(&self) -> Result<Vec<InstanceTypeInfo>, CloudError>;
    async fn describe_instance_type_offerings(
        &self,
    ) -> Result<Vec<InstanceTypeOffering>, CloudError>;
    async fn describe_spot_price_history(&self) -> Result<Vec<SpotPrice>, CloudError>;
    /// On-demand prices (the AWS Pricing API's GetProducts, reduced to type -> USD/hour).
    async fn on_demand_prices(&self) -> Result<BTreeMap<String, f64>, CloudError>;
    async fn describe_subnets(&self) -> Result<Vec<Subnet>, CloudError>;
    async fn create_fleet(
        &self,
        request: CreateFleetRequest,
    ) -> Result<CreateFleetOutput, CloudError>;
    async fn describe_instances(
        &self,
        request: DescribeInstancesRequest,
    ) -> Result<Vec<Instance>, CloudError>;
    async fn terminate_instances(&self, instance_ids: Vec<String>) -> Result<(), CloudError>;
}
