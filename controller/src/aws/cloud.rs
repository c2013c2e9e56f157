//! The Cloud seam: the EC2 operations the AWS provider logic needs, in Dovetail's own types.
//!
//! Types mirror the EC2 API (CreateFleet with overrides, DescribeInstances, ...) closely enough that the real
//! aws-sdk adapter is a field-by-field mapping; everything above the API (which overrides to send, what an
//! error code means) is controller code.

use std::collections::BTreeMap;

use async_trait::async_trait;

pub use crate::cloudprovider::{CapacityType, CloudError, InstanceState};

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
    /// Branch network interfaces for security groups for pods (0: the type cannot trunk). EC2 does not
    /// report it; the adapter takes it from the VPC resource controller's limits (`aws::vpclimits`).
    pub branch_interfaces: u32,
    /// EbsInfo: how many EBS volumes the type can attach, None when EC2 does not say.
    pub ebs_attachments: Option<EbsAttachments>,
    /// NVMe instance-store disks (InstanceStorageInfo): on a shared-limit type each takes a slot.
    pub instance_store_disks: u32,
}

/// EbsInfo's `MaximumEbsAttachments` and `AttachmentLimitType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EbsAttachments {
    pub maximum: u32,
    /// `dedicated`: the limit is the volumes' own; `shared`: network interfaces and instance-store disks
    /// take slots from it too (every other Nitro type).
    pub dedicated: bool,
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
    /// The launch template it launches with (one per image: EC2's LaunchTemplateConfigs group overrides by
    /// it).
    pub launch_template_name: String,
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
    /// The account context to launch in (`spec.context`: Outposts and the like).
    pub context: Option<String>,
    /// `OnDemand` or `Spot` (a reserved launch is on-demand into the reservation its launch template
    /// targets).
    pub capacity_type: CapacityType,
    /// A launch into capacity reservations: which kind, for the fleet's DefaultTargetCapacityType
    /// (`on-demand`, `capacity-block`, `reserved-capacity` for interruptible reservations).
    pub reservation: Option<ReservationType>,
    pub overrides: Vec<FleetOverride>,
    /// `OnDemandOptions.AllocationStrategy`: which on-demand (and reserved) override EC2 launches.
    pub on_demand_strategy: OnDemandStrategy,
    pub target_capacity: u32,
    pub tags: BTreeMap<String, String>,
}

/// EC2 Fleet's on-demand allocation strategies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnDemandStrategy {
    /// The cheapest override that can launch (EC2's default).
    #[default]
    LowestPrice,
    /// The override with the highest priority (lowest number) that can launch; one without a priority
    /// comes last.
    Prioritized,
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

/// The kind of a capacity reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReservationType {
    /// An On-Demand Capacity Reservation (`default`).
    Default,
    /// A Capacity Block (ML capacity bought for a fixed window, reclaimed at its end).
    CapacityBlock,
    /// An interruptible ODCR: capacity its owner lends and may reclaim.
    Interruptible,
}

impl ReservationType {
    /// EC2's ReservationType (an interruptible ODCR is a `default` one with `Interruptible` set).
    pub fn ec2_type(self) -> &'static str {
        match self {
            ReservationType::CapacityBlock => "capacity-block",
            ReservationType::Default | ReservationType::Interruptible => "default",
        }
    }
}

/// DescribeCapacityReservations entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CapacityReservation {
    pub id: String,
    pub instance_type: String,
    pub zone: String,
    pub owner_id: String,
    pub total_instance_count: u32,
    pub available_instance_count: u32,
    /// `open` (any matching launch may run in it) or `targeted` (only launches naming it).
    pub instance_match_criteria: String,
    /// EC2's ReservationType: `default` or `capacity-block`.
    pub reservation_type: String,
    pub interruptible: bool,
    /// `active`, `expired`, `cancelled`, `pending`, `scheduled`, ...
    pub state: String,
    pub start_date: Option<jiff::Timestamp>,
    pub end_date: Option<jiff::Timestamp>,
    pub tags: BTreeMap<String, String>,
}

/// A DescribeCapacityReservations query as Karpenter sends it: `state=active` always, then either ids or
/// the owner, tags (`*` meaning any value: `tag-key`) and instance match criteria.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapacityReservationQuery {
    pub ids: Vec<String>,
    pub owner_id: Option<String>,
    pub tags: BTreeMap<String, String>,
    pub instance_match_criteria: Option<String>,
}

impl CapacityReservationQuery {
    /// Whether a reservation answers the query (EC2's filters, as the fake and the front apply them).
    pub fn matches(&self, r: &CapacityReservation) -> bool {
        r.state == "active"
            && (self.ids.is_empty() || self.ids.contains(&r.id))
            && self.owner_id.as_ref().is_none_or(|o| *o == r.owner_id)
            && self
                .instance_match_criteria
                .as_ref()
                .is_none_or(|m| *m == r.instance_match_criteria)
            && self
                .tags
                .iter()
                .all(|(k, v)| r.tags.get(k).is_some_and(|t| v == "*" || t == v))
    }
}

/// A launch template's CapacityReservationSpecification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityReservationSpec {
    /// `capacity-reservations-only`, `open` or `none`.
    pub preference: String,
    /// CapacityReservationTarget: the one reservation the instance must run in.
    pub target_id: Option<String>,
}

/// Why an instance is in its state, e.g. `Client.InternalError` for a launch a KMS key broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateReason {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub instance_type: String,
    pub zone: String,
    pub subnet_id: String,
    pub capacity_type: CapacityType,
    pub state: InstanceState,
    pub state_reason: Option<StateReason>,
    pub private_ip: String,
    pub private_dns_name: String,
    pub image_id: String,
    pub launch_time: jiff::Timestamp,
    pub tags: BTreeMap<String, String>,
    /// The capacity reservation the instance runs in, if any.
    pub capacity_reservation_id: Option<String>,
    /// Its CapacityReservationSpecification's preference (`open` when the launch left EC2's default).
    pub capacity_reservation_preference: Option<String>,
    /// EC2's InstanceLifecycle: `spot`, `capacity-block`, `interruptible-capacity-reservation`, or none.
    pub instance_lifecycle: Option<String>,
}

impl Instance {
    /// The Kubernetes providerID of this instance: `aws:///<zone>/<instance-id>`.
    pub fn provider_id(&self) -> String {
        format!("aws:///{}/{}", self.zone, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn ec2_wildcards() {
        assert!(glob("c6i.*", "c6i.2xlarge"));
        assert!(glob("*", "anything"));
        assert!(glob("al2023-*-x86_64", "al2023-1.2-x86_64"));
        assert!(!glob("c6i.*", "c6in.large"));
        assert!(glob("exact", "exact"));
    }
}

/// DescribeInstances filters (all given filters must match) and paging.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DescribeInstancesRequest {
    pub instance_ids: Vec<String>,
    /// `tag:<key>` = value.
    pub tags: BTreeMap<String, String>,
    /// `tag-key`: the tag is present, whatever its value.
    pub tag_keys: Vec<String>,
    pub states: Vec<InstanceState>,
    /// Page size (EC2 allows 5..1000); None for one page of everything.
    pub max_results: Option<u32>,
    pub next_token: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DescribeInstancesOutput {
    pub instances: Vec<Instance>,
    pub next_token: Option<String>,
}

/// An EBS block device of a launch template; what is unset is EC2's default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockDevice {
    pub device_name: String,
    /// GiB, rounded up.
    pub volume_size_gib: Option<u32>,
    /// `gp3`, `gp2`, `io1`, `io2`, `st1`, `sc1`, `standard`.
    pub volume_type: Option<String>,
    pub iops: Option<i64>,
    /// MiB/s (gp3).
    pub throughput: Option<i64>,
    pub encrypted: Option<bool>,
    pub kms_key_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub delete_on_termination: Option<bool>,
    /// MiB/s at which a volume from a snapshot is initialized.
    pub volume_initialization_rate: Option<i32>,
}

/// The instance metadata service as the launch template sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceMetadata {
    /// `enabled` / `disabled`.
    pub http_endpoint: String,
    pub http_protocol_ipv6: String,
    pub http_put_response_hop_limit: i64,
    /// `required` (IMDSv2 only) / `optional`.
    pub http_tokens: String,
}

impl Default for InstanceMetadata {
    /// Karpenter's: IMDSv2 only, one hop (pods cannot borrow the node's role).
    fn default() -> Self {
        InstanceMetadata {
            http_endpoint: "enabled".into(),
            http_protocol_ipv6: "disabled".into(),
            http_put_response_hop_limit: 1,
            http_tokens: "required".into(),
        }
    }
}

/// The primary network interface, when the class configures it (the security groups then go on it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrimaryInterface {
    pub associate_public_ip_address: Option<bool>,
    /// /28 IPv4 prefixes assigned at launch (prefix delegation).
    pub ipv4_prefix_count: Option<i32>,
    /// Connection tracking timeouts (seconds): TCP established, UDP stream, UDP.
    pub connection_tracking: Option<(Option<i32>, Option<i32>, Option<i32>)>,
}

/// CreateLaunchTemplate's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchTemplateData {
    pub image_id: String,
    pub security_group_ids: Vec<String>,
    pub block_devices: Vec<BlockDevice>,
    pub user_data: String,
    pub instance_profile: String,
    pub tags: BTreeMap<String, String>,
    pub metadata: InstanceMetadata,
    /// CloudWatch detailed (1-minute) monitoring.
    pub detailed_monitoring: bool,
    pub network_interface: Option<PrimaryInterface>,
    /// CPU option `NestedVirtualization`: `enabled` / `disabled`.
    pub nested_virtualization: Option<String>,
    /// None leaves EC2's default (`open`: the instance runs in any open reservation of its type and zone
    /// with room).
    pub capacity_reservation: Option<CapacityReservationSpec>,
    /// InstanceMarketOptions' MarketType: `capacity-block` or `interruptible-capacity-reservation`.
    pub market_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchTemplate {
    pub id: String,
    pub name: String,
    pub data: LaunchTemplateData,
}

/// DescribeSecurityGroups entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub tags: BTreeMap<String, String>,
}

/// DescribeImages entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub name: String,
    /// EC2's architecture name: `x86_64`, `arm64`, `i386`, `x86_64_mac`, `arm64_mac`.
    pub arch: String,
    /// RFC 3339.
    pub creation_date: String,
    /// When EC2 deprecates (or deprecated) the image, RFC 3339; deprecated images still launch.
    pub deprecation_time: Option<String>,
    pub owner_id: String,
    /// `amazon` for Amazon's public images (EC2's ImageOwnerAlias).
    pub owner_alias: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// A DescribeImages query as Karpenter sends it: ids, names (EC2 wildcards) and tags in `filter`, limited to
/// `owners` (account ids, `self`, `amazon`) when any are given. Only `available` images are returned,
/// deprecated ones included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageQuery {
    pub filter: TagFilter,
    pub owners: Vec<String>,
}

/// Tag filters for Describe* calls: every `tags` pair must match and every `tag_keys` key be present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagFilter {
    pub tags: BTreeMap<String, String>,
    pub ids: Vec<String>,
    pub names: Vec<String>,
}

impl TagFilter {
    pub fn matches(&self, id: &str, name: &str, tags: &BTreeMap<String, String>) -> bool {
        (self.ids.is_empty() || self.ids.iter().any(|i| i == id))
            && (self.names.is_empty() || self.names.iter().any(|n| n == name || glob(n, name)))
            && self
                .tags
                .iter()
                .all(|(k, v)| tags.get(k).is_some_and(|t| v == "*" || t == v))
    }
}

/// EC2 filter wildcards: `*` matches any run of characters.
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    true
}

/// One SQS message as ReceiveMessage returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
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
    async fn describe_security_groups(
        &self,
        filter: TagFilter,
    ) -> Result<Vec<SecurityGroup>, CloudError>;
    async fn describe_images(&self, query: ImageQuery) -> Result<Vec<Image>, CloudError>;
    /// DescribeCapacityReservations, every page (an id EC2 does not know answers NotFound).
    async fn describe_capacity_reservations(
        &self,
        query: CapacityReservationQuery,
    ) -> Result<Vec<CapacityReservation>, CloudError>;
    /// SSM GetParameter: the parameter's value; a missing one is the error `ParameterNotFound`.
    async fn get_parameter(&self, name: &str) -> Result<String, CloudError>;
    async fn create_launch_template(
        &self,
        name: String,
        data: LaunchTemplateData,
    ) -> Result<LaunchTemplate, CloudError>;
    async fn describe_launch_templates(
        &self,
        names: Vec<String>,
    ) -> Result<Vec<LaunchTemplate>, CloudError>;
    async fn delete_launch_template(&self, name: String) -> Result<(), CloudError>;
    async fn create_fleet(
        &self,
        request: CreateFleetRequest,
    ) -> Result<CreateFleetOutput, CloudError>;
    async fn describe_instances(
        &self,
        request: DescribeInstancesRequest,
    ) -> Result<DescribeInstancesOutput, CloudError>;
    async fn terminate_instances(&self, instance_ids: Vec<String>) -> Result<(), CloudError>;
    async fn create_tags(
        &self,
        resource_ids: Vec<String>,
        tags: BTreeMap<String, String>,
    ) -> Result<(), CloudError>;
    /// SQS ReceiveMessage: up to `max` (1..=10) messages, hidden for `visibility_timeout` after delivery.
    async fn receive_messages(
        &self,
        queue_url: &str,
        max: u32,
        visibility_timeout: std::time::Duration,
    ) -> Result<Vec<QueueMessage>, CloudError>;
    /// SQS DeleteMessage.
    async fn delete_message(&self, queue_url: &str, receipt_handle: &str)
    -> Result<(), CloudError>;
}
