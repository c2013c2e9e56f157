//! The EC2 actions Dovetail's adapter (and a person with the AWS CLI) calls, read from Query parameters,
//! answered from the fake through dovetail's `Cloud` trait, and written as EC2's XML.

use std::collections::BTreeMap;

use base64::Engine;
use dovetail::aws::cloud::{
    BlockDevice, CapacityReservation, CapacityReservationQuery, CapacityReservationSpec,
    CapacityType, Cloud, CloudError, CreateFleetRequest, DescribeInstancesRequest, FleetOverride,
    Image, ImageQuery, Instance, InstanceMetadata, InstanceState, InstanceTypeInfo, LaunchTemplate,
    LaunchTemplateData, OnDemandStrategy, PrimaryInterface, ReservationType, SecurityGroup, Subnet,
    TagFilter,
};

use super::query::{Filter, Filterable, Params, apply, page};
use super::xml::Xml;
use crate::FakeCloud;
use crate::sqs::ACCOUNT;

/// The fake's one VPC.
const VPC: &str = "vpc-0sim0000000000001";

/// The actions served, in the order the adapter first calls them.
pub const ACTIONS: &[&str] = &[
    "DescribeInstanceTypes",
    "DescribeInstanceTypeOfferings",
    "DescribeSpotPriceHistory",
    "DescribeSubnets",
    "DescribeSecurityGroups",
    "DescribeImages",
    "DescribeCapacityReservations",
    "CreateLaunchTemplate",
    "DescribeLaunchTemplates",
    "DeleteLaunchTemplate",
    "CreateFleet",
    "DescribeInstances",
    "TerminateInstances",
    "CreateTags",
];

/// Whether the action changes anything (such calls are written to the trace).
pub fn writes(action: &str) -> bool {
    matches!(
        action,
        "CreateLaunchTemplate"
            | "DeleteLaunchTemplate"
            | "CreateFleet"
            | "TerminateInstances"
            | "CreateTags"
    )
}

fn invalid(message: impl Into<String>) -> CloudError {
    CloudError::new("InvalidParameterValue", message)
}

/// EC2's timestamps: milliseconds, UTC.
fn time(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// One call: the response body, or the error EC2 would answer.
pub async fn call(
    cloud: &FakeCloud,
    action: &str,
    p: &Params,
    request_id: &str,
) -> Result<Vec<u8>, CloudError> {
    if p.bool("DryRun")? == Some(true) {
        // EC2 answers a permitted dry run with this error, and does nothing.
        return Err(CloudError::new(
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        ));
    }
    let mut x = Xml::response(action, request_id);
    match action {
        "DescribeInstanceTypes" => describe_instance_types(cloud, p, &mut x).await?,
        "DescribeInstanceTypeOfferings" => describe_offerings(cloud, p, &mut x).await?,
        "DescribeSpotPriceHistory" => describe_spot_prices(cloud, p, &mut x).await?,
        "DescribeSubnets" => describe_subnets(cloud, p, &mut x).await?,
        "DescribeSecurityGroups" => describe_security_groups(cloud, p, &mut x).await?,
        "DescribeImages" => describe_images(cloud, p, &mut x).await?,
        "DescribeCapacityReservations" => describe_reservations(cloud, p, &mut x).await?,
        "CreateLaunchTemplate" => create_launch_template(cloud, p, &mut x).await?,
        "DescribeLaunchTemplates" => describe_launch_templates(cloud, p, &mut x).await?,
        "DeleteLaunchTemplate" => delete_launch_template(cloud, p, &mut x).await?,
        "CreateFleet" => create_fleet(cloud, p, request_id, &mut x).await?,
        "DescribeInstances" => describe_instances(cloud, p, &mut x).await?,
        "TerminateInstances" => terminate_instances(cloud, p, &mut x).await?,
        "CreateTags" => {
            let ids = p.list("ResourceId");
            if ids.is_empty() {
                p.required("ResourceId.1")?;
            }
            cloud.create_tags(ids, p.tags("Tag")).await?;
            x.leaf("return", "true");
        }
        other => {
            return Err(CloudError::new(
                "InvalidAction",
                format!(
                    "The action {other} is not valid for this web service (this fake EC2 serves {}).",
                    ACTIONS.join(", ")
                ),
            ));
        }
    }
    Ok(x.finish(action))
}

fn next_token(x: &mut Xml, next: Option<String>) {
    x.opt("nextToken", next);
}

// ---- instance types, offerings, prices ----------------------------------------------------------------

/// EC2's name for an architecture.
fn ec2_arch(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        other => other,
    }
}

impl Filterable for InstanceTypeInfo {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        Some(match name {
            "instance-type" => vec![self.name.clone()],
            "processor-info.supported-architecture" => vec![ec2_arch(&self.arch).to_string()],
            "vcpu-info.default-vcpus" => vec![self.vcpu.to_string()],
            "memory-info.size-in-mib" => vec![self.memory_mib.to_string()],
            "hypervisor" => vec![self.hypervisor.clone()],
            "supported-usage-class" => self
                .supported_usage_classes
                .iter()
                .map(|c| c.as_str().to_string())
                .collect(),
            "network-info.maximum-network-interfaces" => vec![self.max_enis.to_string()],
            "network-info.ipv4-addresses-per-interface" => vec![self.ipv4_per_eni.to_string()],
            "instance-storage-supported" => vec![(self.instance_store_disks > 0).to_string()],
            _ => return None,
        })
    }
}

async fn describe_instance_types(
    cloud: &FakeCloud,
    p: &Params,
    x: &mut Xml,
) -> Result<(), CloudError> {
    let wanted = p.list("InstanceType");
    let mut types = cloud.describe_instance_types().await?;
    if let Some(unknown) = wanted.iter().find(|w| !types.iter().any(|t| &t.name == *w)) {
        return Err(CloudError::new(
            "InvalidInstanceType",
            format!("The following supplied instance types do not exist: [{unknown}]"),
        ));
    }
    if !wanted.is_empty() {
        types.retain(|t| wanted.contains(&t.name));
    }
    let types = apply(types, &p.filters()?)?;
    // EC2 answers at most 100 types a page.
    let (types, next) = page(types, p, (5, 100), Some(100))?;
    x.open("instanceTypeSet");
    for t in &types {
        x.open("item");
        x.leaf("instanceType", &t.name);
        x.leaf("currentGeneration", "true");
        x.items(
            "supportedUsageClasses",
            t.supported_usage_classes.iter().map(|c| c.as_str()),
        );
        x.nonempty("hypervisor", &t.hypervisor);
        x.open("processorInfo");
        x.items("supportedArchitectures", [ec2_arch(&t.arch)]);
        x.close("processorInfo");
        x.open("vCpuInfo");
        x.leaf("defaultVCpus", t.vcpu);
        x.close("vCpuInfo");
        x.open("memoryInfo");
        x.leaf("sizeInMiB", t.memory_mib);
        x.close("memoryInfo");
        x.leaf("instanceStorageSupported", t.instance_store_disks > 0);
        if t.instance_store_disks > 0 {
            x.open("instanceStorageInfo");
            x.open("disks");
            x.open("item");
            x.leaf("count", t.instance_store_disks);
            x.leaf("type", "ssd");
            x.close("item");
            x.close("disks");
            x.close("instanceStorageInfo");
        }
        if let Some(ebs) = t.ebs_attachments {
            x.open("ebsInfo");
            x.leaf("maximumEbsAttachments", ebs.maximum);
            x.leaf(
                "attachmentLimitType",
                if ebs.dedicated { "dedicated" } else { "shared" },
            );
            x.close("ebsInfo");
        }
        x.open("networkInfo");
        x.leaf("maximumNetworkInterfaces", t.max_enis);
        x.leaf("ipv4AddressesPerInterface", t.ipv4_per_eni);
        x.close("networkInfo");
        if t.gpu_count > 0 {
            x.open("gpuInfo");
            x.open("gpus");
            x.open("item");
            x.leaf("name", &t.gpu_name);
            x.leaf("count", t.gpu_count);
            x.close("item");
            x.close("gpus");
            x.close("gpuInfo");
        }
        x.close("item");
    }
    x.close("instanceTypeSet");
    next_token(x, next);
    Ok(())
}

/// An offering as a Describe call lists it.
struct Offering {
    instance_type: String,
    location: String,
}

impl Filterable for Offering {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        match name {
            "instance-type" => Some(vec![self.instance_type.clone()]),
            "location" => Some(vec![self.location.clone()]),
            _ => None,
        }
    }
}

async fn describe_offerings(cloud: &FakeCloud, p: &Params, x: &mut Xml) -> Result<(), CloudError> {
    let location_type = p.get("LocationType").unwrap_or("region");
    let offerings = cloud.describe_instance_type_offerings().await?;
    let region = &cloud.config().region;
    let mut listed: Vec<Offering> = match location_type {
        "availability-zone" => offerings
            .into_iter()
            .map(|o| Offering {
                instance_type: o.instance_type,
                location: o.zone,
            })
            .collect(),
        "region" => offerings
            .into_iter()
            .map(|o| Offering {
                instance_type: o.instance_type,
                location: region.clone(),
            })
            .collect(),
        other => {
            return Err(invalid(format!(
                "Value ({other}) for parameter locationType is invalid. This fake serves region and availability-zone."
            )));
        }
    };
    listed.dedup_by(|a, b| a.instance_type == b.instance_type && a.location == b.location);
    let listed = apply(listed, &p.filters()?)?;
    let (listed, next) = page(listed, p, (5, 1000), Some(1000))?;
    x.open("instanceTypeOfferingSet");
    for o in &listed {
        x.open("item");
        x.leaf("instanceType", &o.instance_type);
        x.leaf("locationType", location_type);
        x.leaf("location", &o.location);
        x.close("item");
    }
    x.close("instanceTypeOfferingSet");
    next_token(x, next);
    Ok(())
}

/// The product descriptions a Linux spot price is listed under.
const LINUX: &[&str] = &["Linux/UNIX", "Linux/UNIX (Amazon VPC)"];

struct PricePoint {
    instance_type: String,
    zone: String,
    price: f64,
}

impl Filterable for PricePoint {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        match name {
            "instance-type" => Some(vec![self.instance_type.clone()]),
            "availability-zone" => Some(vec![self.zone.clone()]),
            "product-description" => Some(LINUX.iter().map(|s| s.to_string()).collect()),
            _ => None,
        }
    }
}

async fn describe_spot_prices(
    cloud: &FakeCloud,
    p: &Params,
    x: &mut Xml,
) -> Result<(), CloudError> {
    let products = p.list("ProductDescription");
    let types = p.list("InstanceType");
    let zone = p.get("AvailabilityZone");
    let mut points: Vec<PricePoint> =
        if products.is_empty() || products.iter().any(|d| LINUX.contains(&d.as_str())) {
            cloud
                .describe_spot_price_history()
                .await?
                .into_iter()
                .map(|s| PricePoint {
                    instance_type: s.instance_type,
                    zone: s.zone,
                    price: s.price,
                })
                .collect()
        } else {
            // Only Linux prices are modelled: other products have no history.
            Vec::new()
        };
    points.retain(|s| {
        (types.is_empty() || types.contains(&s.instance_type)) && zone.is_none_or(|z| z == s.zone)
    });
    let points = apply(points, &p.filters()?)?;
    let (points, next) = page(points, p, (5, 1000), Some(1000))?;
    // Only the latest price is kept: it is listed as of now.
    let now = time(cloud.now());
    x.open("spotPriceHistorySet");
    for s in &points {
        x.open("item");
        x.leaf("instanceType", &s.instance_type);
        x.leaf("productDescription", "Linux/UNIX");
        x.leaf("spotPrice", format!("{:.6}", s.price));
        x.leaf("timestamp", &now);
        x.leaf("availabilityZone", &s.zone);
        x.close("item");
    }
    x.close("spotPriceHistorySet");
    next_token(x, next);
    Ok(())
}

// ---- capacity reservations ------------------------------------------------------------------------------

impl Filterable for CapacityReservation {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        Some(match name {
            "capacity-reservation-id" => vec![self.id.clone()],
            "instance-type" => vec![self.instance_type.clone()],
            "availability-zone" => vec![self.zone.clone()],
            "owner-id" => vec![self.owner_id.clone()],
            "state" => vec![self.state.clone()],
            "instance-match-criteria" => vec![self.instance_match_criteria.clone()],
            "reservation-type" => vec![self.reservation_type.clone()],
            _ => return None,
        })
    }
    fn tags(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.tags)
    }
}

async fn describe_reservations(
    cloud: &FakeCloud,
    p: &Params,
    x: &mut Xml,
) -> Result<(), CloudError> {
    let ids = p.list("CapacityReservationId");
    if !ids.is_empty() && p.int("MaxResults")?.is_some() {
        return Err(invalid(
            "MaxResults cannot be used together with CapacityReservationIds",
        ));
    }
    // The seam's call (latency, faults, unknown ids) answers active reservations only, as Karpenter asks;
    // EC2 shows every state unless filtered.
    cloud
        .describe_capacity_reservations(CapacityReservationQuery {
            ids: ids.clone(),
            ..Default::default()
        })
        .await?;
    let mut all = cloud.capacity_reservations();
    if !ids.is_empty() {
        all.retain(|r| ids.contains(&r.id));
    }
    let found = apply(all, &p.filters()?)?;
    let (found, next) = page(found, p, (1, 1000), None)?;
    x.open("capacityReservationSet");
    for r in &found {
        x.open("item");
        x.leaf("capacityReservationId", &r.id);
        x.leaf("ownerId", &r.owner_id);
        x.leaf("instanceType", &r.instance_type);
        x.leaf("instancePlatform", "Linux/UNIX");
        x.leaf("availabilityZone", &r.zone);
        x.leaf("tenancy", "default");
        x.leaf("totalInstanceCount", r.total_instance_count);
        x.leaf("availableInstanceCount", r.available_instance_count);
        x.leaf("instanceMatchCriteria", &r.instance_match_criteria);
        x.leaf("reservationType", &r.reservation_type);
        x.leaf("interruptible", r.interruptible);
        x.leaf("state", &r.state);
        x.opt("startDate", r.start_date.map(time));
        x.opt("endDate", r.end_date.map(time));
        x.leaf(
            "endDateType",
            if r.end_date.is_some() {
                "limited"
            } else {
                "unlimited"
            },
        );
        x.tags(&r.tags);
        x.close("item");
    }
    x.close("capacityReservationSet");
    next_token(x, next);
    Ok(())
}

// ---- subnets, security groups, images -----------------------------------------------------------------

impl Filterable for Subnet {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        Some(match name {
            "subnet-id" => vec![self.id.clone()],
            "availability-zone" => vec![self.zone.clone()],
            "available-ip-address-count" => vec![self.available_ip_addresses.to_string()],
            "state" => vec!["available".into()],
            "vpc-id" => vec![VPC.into()],
            _ => return None,
        })
    }
    fn tags(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.tags)
    }
}

async fn describe_subnets(cloud: &FakeCloud, p: &Params, x: &mut Xml) -> Result<(), CloudError> {
    let ids = p.list("SubnetId");
    let mut subnets = cloud.describe_subnets().await?;
    if let Some(missing) = ids.iter().find(|i| !subnets.iter().any(|s| &s.id == *i)) {
        return Err(CloudError::new(
            "InvalidSubnetID.NotFound",
            format!("The subnet ID '{missing}' does not exist"),
        ));
    }
    if !ids.is_empty() {
        subnets.retain(|s| ids.contains(&s.id));
    }
    let subnets = apply(subnets, &p.filters()?)?;
    let (subnets, next) = page(subnets, p, (5, 1000), None)?;
    x.open("subnetSet");
    for s in &subnets {
        x.open("item");
        x.leaf("subnetId", &s.id);
        x.leaf("state", "available");
        x.leaf("vpcId", VPC);
        x.leaf("availabilityZone", &s.zone);
        x.leaf("availableIpAddressCount", s.available_ip_addresses);
        x.leaf("ownerId", ACCOUNT);
        x.tags(&s.tags);
        x.close("item");
    }
    x.close("subnetSet");
    next_token(x, next);
    Ok(())
}

impl Filterable for SecurityGroup {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        Some(match name {
            "group-id" => vec![self.id.clone()],
            "group-name" => vec![self.name.clone()],
            "vpc-id" => vec![VPC.into()],
            "owner-id" => vec![ACCOUNT.into()],
            _ => return None,
        })
    }
    fn tags(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.tags)
    }
}

async fn describe_security_groups(
    cloud: &FakeCloud,
    p: &Params,
    x: &mut Xml,
) -> Result<(), CloudError> {
    let filter = TagFilter {
        ids: p.list("GroupId"),
        names: p.list("GroupName"),
        tags: BTreeMap::new(),
    };
    let groups = cloud.describe_security_groups(filter.clone()).await?;
    if let Some(missing) = filter
        .ids
        .iter()
        .find(|i| !groups.iter().any(|g| &g.id == *i))
    {
        return Err(CloudError::new(
            "InvalidGroup.NotFound",
            format!("The security group '{missing}' does not exist"),
        ));
    }
    let groups = apply(groups, &p.filters()?)?;
    let (groups, next) = page(groups, p, (5, 1000), None)?;
    x.open("securityGroupInfo");
    for g in &groups {
        x.open("item");
        x.leaf("ownerId", ACCOUNT);
        x.leaf("groupId", &g.id);
        x.leaf("groupName", &g.name);
        x.leaf("groupDescription", &g.name);
        x.leaf("vpcId", VPC);
        x.tags(&g.tags);
        x.close("item");
    }
    x.close("securityGroupInfo");
    next_token(x, next);
    Ok(())
}

impl Filterable for Image {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        Some(match name {
            "image-id" => vec![self.id.clone()],
            "name" => vec![self.name.clone()],
            "architecture" => vec![self.arch.clone()],
            "owner-id" => vec![self.owner_id.clone()],
            "owner-alias" => self.owner_alias.iter().cloned().collect(),
            "state" => vec!["available".into()],
            "image-type" => vec!["machine".into()],
            "creation-date" => vec![self.creation_date.clone()],
            _ => return None,
        })
    }
    fn tags(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.tags)
    }
}

async fn describe_images(cloud: &FakeCloud, p: &Params, x: &mut Xml) -> Result<(), CloudError> {
    let ids = p.list("ImageId");
    let query = ImageQuery {
        filter: TagFilter {
            ids: ids.clone(),
            ..Default::default()
        },
        owners: p.list("Owner"),
    };
    let mut images = cloud.describe_images(query).await?;
    // Deprecated images are listed when asked for by id or with IncludeDeprecated.
    if ids.is_empty() && p.bool("IncludeDeprecated")? != Some(true) {
        let now = cloud.now();
        images.retain(|i| {
            i.deprecation_time
                .as_deref()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .is_none_or(|t| t > now)
        });
    }
    let images = apply(images, &p.filters()?)?;
    let (images, next) = page(images, p, (5, 1000), None)?;
    x.open("imagesSet");
    for i in &images {
        x.open("item");
        x.leaf("imageId", &i.id);
        x.leaf("imageState", "available");
        x.leaf("imageOwnerId", &i.owner_id);
        x.leaf("creationDate", &i.creation_date);
        x.leaf("isPublic", i.owner_alias.is_some());
        x.leaf("architecture", &i.arch);
        x.leaf("imageType", "machine");
        x.opt("imageOwnerAlias", i.owner_alias.as_deref());
        x.leaf("name", &i.name);
        x.leaf("rootDeviceType", "ebs");
        x.leaf("virtualizationType", "hvm");
        x.opt("deprecationTime", i.deprecation_time.as_deref());
        x.tags(&i.tags);
        x.close("item");
    }
    x.close("imagesSet");
    next_token(x, next);
    Ok(())
}

// ---- launch templates ---------------------------------------------------------------------------------

/// The tags of the `TagSpecification.N` entries for one resource type.
fn tags_for(p: &Params, prefix: &str, resource: &str) -> BTreeMap<String, String> {
    p.structs(prefix)
        .into_iter()
        .filter(|s| s.get("ResourceType") == Some(resource))
        .flat_map(|s| s.tags("Tag"))
        .collect()
}

fn launch_template_data(p: &Params) -> Result<LaunchTemplateData, CloudError> {
    let d = p.sub("LaunchTemplateData");
    let user_data = match d.get("UserData") {
        None => String::new(),
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                CloudError::new(
                    "InvalidUserData.Malformed",
                    "User data is invalid: it must be base64-encoded text",
                )
            })?,
    };
    let block_devices = d
        .structs("BlockDeviceMapping")
        .into_iter()
        .map(|b| {
            let e = b.sub("Ebs");
            Ok(BlockDevice {
                device_name: b.required("DeviceName")?.to_string(),
                volume_size_gib: e.int("VolumeSize")?.map(|v| v as u32),
                volume_type: e.get("VolumeType").map(str::to_string),
                iops: e.int("Iops")?,
                throughput: e.int("Throughput")?,
                encrypted: e.bool("Encrypted")?,
                kms_key_id: e.get("KmsKeyId").map(str::to_string),
                snapshot_id: e.get("SnapshotId").map(str::to_string),
                delete_on_termination: e.bool("DeleteOnTermination")?,
                volume_initialization_rate: e.int("VolumeInitializationRate")?.map(|v| v as i32),
            })
        })
        .collect::<Result<Vec<_>, CloudError>>()?;
    let interfaces = d.structs("NetworkInterface");
    let mut security_group_ids = d.list("SecurityGroupId");
    let network_interface = match interfaces.first() {
        None => None,
        Some(ni) => {
            if !security_group_ids.is_empty() {
                return Err(CloudError::new(
                    "InvalidParameterCombination",
                    "Network interfaces and an instance-level security groups may not be specified on the same request",
                ));
            }
            security_group_ids = ni.list("SecurityGroupId");
            let ct = ni.sub("ConnectionTrackingSpecification");
            let tracking = [
                ct.int("TcpEstablishedTimeout")?,
                ct.int("UdpStreamTimeout")?,
                ct.int("UdpTimeout")?,
            ]
            .map(|v| v.map(|v| v as i32));
            Some(PrimaryInterface {
                associate_public_ip_address: ni.bool("AssociatePublicIpAddress")?,
                ipv4_prefix_count: ni.int("Ipv4PrefixCount")?.map(|v| v as i32),
                connection_tracking: tracking.iter().any(Option::is_some).then_some((
                    tracking[0],
                    tracking[1],
                    tracking[2],
                )),
            })
        }
    };
    let profile = d.sub("IamInstanceProfile");
    let instance_profile = match (profile.get("Name"), profile.get("Arn")) {
        (Some(name), _) => name.to_string(),
        (None, Some(arn)) => arn.rsplit('/').next().unwrap_or_default().to_string(),
        (None, None) => String::new(),
    };
    let m = d.sub("MetadataOptions");
    let defaults = InstanceMetadata::default();
    Ok(LaunchTemplateData {
        image_id: d.get("ImageId").unwrap_or_default().to_string(),
        security_group_ids,
        block_devices,
        user_data,
        instance_profile,
        tags: tags_for(&d, "TagSpecification", "instance"),
        metadata: InstanceMetadata {
            http_endpoint: m
                .get("HttpEndpoint")
                .map_or(defaults.http_endpoint, str::to_string),
            http_protocol_ipv6: m
                .get("HttpProtocolIpv6")
                .map_or(defaults.http_protocol_ipv6, str::to_string),
            http_put_response_hop_limit: m
                .int("HttpPutResponseHopLimit")?
                .unwrap_or(defaults.http_put_response_hop_limit),
            http_tokens: m
                .get("HttpTokens")
                .map_or(defaults.http_tokens, str::to_string),
        },
        detailed_monitoring: d.bool("Monitoring.Enabled")?.unwrap_or(false),
        network_interface,
        nested_virtualization: d.get("CpuOptions.NestedVirtualization").map(str::to_string),
        capacity_reservation: {
            let c = d.sub("CapacityReservationSpecification");
            let target = c
                .get("CapacityReservationTarget.CapacityReservationId")
                .map(str::to_string);
            match c.get("CapacityReservationPreference") {
                Some(pref) => Some(CapacityReservationSpec {
                    preference: pref.to_string(),
                    target_id: target,
                }),
                // A target alone implies EC2's `capacity-reservations-only`.
                None => target.map(|t| CapacityReservationSpec {
                    preference: "capacity-reservations-only".into(),
                    target_id: Some(t),
                }),
            }
        },
        market_type: d
            .get("InstanceMarketOptions.MarketType")
            .map(str::to_string),
    })
}

fn write_launch_template(x: &mut Xml, lt: &LaunchTemplate, created: &str) {
    x.leaf("launchTemplateId", &lt.id);
    x.leaf("launchTemplateName", &lt.name);
    x.leaf("createTime", created);
    x.leaf("createdBy", format!("arn:aws:iam::{ACCOUNT}:role/dovetail"));
    x.leaf("defaultVersionNumber", 1);
    x.leaf("latestVersionNumber", 1);
    x.tags(&lt.data.tags);
}

async fn create_launch_template(
    cloud: &FakeCloud,
    p: &Params,
    x: &mut Xml,
) -> Result<(), CloudError> {
    let name = p.required("LaunchTemplateName")?.to_string();
    if !p.has("LaunchTemplateData") {
        p.required("LaunchTemplateData")?;
    }
    let data = launch_template_data(p)?;
    let lt = cloud.create_launch_template(name, data).await?;
    x.open("launchTemplate");
    write_launch_template(x, &lt, &time(cloud.now()));
    x.close("launchTemplate");
    Ok(())
}

impl Filterable for LaunchTemplate {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        match name {
            "launch-template-name" => Some(vec![self.name.clone()]),
            _ => None,
        }
    }
    fn tags(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.data.tags)
    }
}

/// The name of the template an id or a name refers to.
async fn template_name(cloud: &FakeCloud, p: &Params) -> Result<String, CloudError> {
    if let Some(name) = p.get("LaunchTemplateName") {
        return Ok(name.to_string());
    }
    let id = p.get("LaunchTemplateId").ok_or_else(|| {
        CloudError::new(
            "MissingParameter",
            "The request must contain the parameter LaunchTemplateName or LaunchTemplateId",
        )
    })?;
    cloud
        .describe_launch_templates(Vec::new())
        .await?
        .into_iter()
        .find(|t| t.id == id)
        .map(|t| t.name)
        .ok_or_else(|| {
            CloudError::new(
                "InvalidLaunchTemplateId.NotFound",
                format!("The specified launch template, with template ID {id}, does not exist."),
            )
        })
}

async fn describe_launch_templates(
    cloud: &FakeCloud,
    p: &Params,
    x: &mut Xml,
) -> Result<(), CloudError> {
    let ids = p.list("LaunchTemplateId");
    let mut templates = cloud
        .describe_launch_templates(p.list("LaunchTemplateName"))
        .await?;
    if let Some(missing) = ids.iter().find(|i| !templates.iter().any(|t| &t.id == *i)) {
        return Err(CloudError::new(
            "InvalidLaunchTemplateId.NotFound",
            format!("The specified launch template, with template ID {missing}, does not exist."),
        ));
    }
    if !ids.is_empty() {
        templates.retain(|t| ids.contains(&t.id));
    }
    let templates = apply(templates, &p.filters()?)?;
    let (templates, next) = page(templates, p, (1, 200), None)?;
    let created = time(cloud.now());
    x.open("launchTemplates");
    for lt in &templates {
        x.open("item");
        write_launch_template(x, lt, &created);
        x.close("item");
    }
    x.close("launchTemplates");
    next_token(x, next);
    Ok(())
}

async fn delete_launch_template(
    cloud: &FakeCloud,
    p: &Params,
    x: &mut Xml,
) -> Result<(), CloudError> {
    let name = template_name(cloud, p).await?;
    let found = cloud
        .describe_launch_templates(vec![name.clone()])
        .await
        .ok()
        .and_then(|mut t| t.pop());
    cloud.delete_launch_template(name.clone()).await?;
    x.open("launchTemplate");
    if let Some(lt) = found {
        write_launch_template(x, &lt, &time(cloud.now()));
    } else {
        x.leaf("launchTemplateName", &name);
    }
    x.close("launchTemplate");
    Ok(())
}

// ---- fleets and instances -----------------------------------------------------------------------------

async fn create_fleet(
    cloud: &FakeCloud,
    p: &Params,
    request_id: &str,
    x: &mut Xml,
) -> Result<(), CloudError> {
    match p.get("Type") {
        Some("instant") => {}
        other => {
            return Err(CloudError::new(
                "Unsupported",
                format!(
                    "Fleet type {} is not supported by this fake EC2: only instant fleets are",
                    other.unwrap_or("maintain (the default)")
                ),
            ));
        }
    }
    let target = p.sub("TargetCapacitySpecification");
    let (capacity_type, reservation) = match target.required("DefaultTargetCapacityType")? {
        "spot" => (CapacityType::Spot, None),
        "on-demand" => (CapacityType::OnDemand, None),
        "capacity-block" => (CapacityType::OnDemand, Some(ReservationType::CapacityBlock)),
        "reserved-capacity" => (CapacityType::OnDemand, Some(ReservationType::Interruptible)),
        other => {
            return Err(invalid(format!(
                "Value ({other}) for parameter DefaultTargetCapacityType is invalid (spot, on-demand, capacity-block, reserved-capacity)."
            )));
        }
    };
    let on_demand_strategy = match p.sub("OnDemandOptions").get("AllocationStrategy") {
        None | Some("lowest-price") => OnDemandStrategy::LowestPrice,
        Some("prioritized") => OnDemandStrategy::Prioritized,
        Some(other) => {
            return Err(invalid(format!(
                "Value ({other}) for parameter OnDemandOptions.AllocationStrategy is invalid (lowest-price, prioritized)."
            )));
        }
    };
    let target_capacity = target
        .int("TotalTargetCapacity")?
        .filter(|n| *n > 0)
        .ok_or_else(|| invalid("TotalTargetCapacity must be a positive number"))?;
    let subnets = cloud.describe_subnets().await?;
    let mut overrides = Vec::new();
    for config in p.structs("LaunchTemplateConfigs") {
        let spec = config.sub("LaunchTemplateSpecification");
        let template = template_name(cloud, &spec).await?;
        let listed = config.structs("Overrides");
        if listed.is_empty() {
            return Err(CloudError::new(
                "Unsupported",
                "This fake EC2 launches from overrides only: give each launch template config its Overrides (instance type and subnet)",
            ));
        }
        for o in listed {
            let instance_type = o.required("InstanceType")?.to_string();
            let subnet_id = o.get("SubnetId").unwrap_or_default().to_string();
            let zone = match o.get("AvailabilityZone") {
                Some(z) => z.to_string(),
                None => subnets
                    .iter()
                    .find(|s| s.id == subnet_id)
                    .map(|s| s.zone.clone())
                    .ok_or_else(|| {
                        CloudError::new(
                            "InvalidSubnetID.NotFound",
                            format!("The subnet ID '{subnet_id}' does not exist"),
                        )
                    })?,
            };
            overrides.push(FleetOverride {
                launch_template_name: template.clone(),
                instance_type,
                subnet_id,
                zone,
                priority: o.float("Priority")?,
            });
        }
    }
    if overrides.is_empty() {
        p.required("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName")?;
    }
    let request = CreateFleetRequest {
        client_token: p.get("ClientToken").unwrap_or_default().to_string(),
        context: p.get("Context").map(str::to_string),
        capacity_type,
        reservation,
        on_demand_strategy,
        overrides: overrides.clone(),
        target_capacity: target_capacity as u32,
        tags: tags_for(p, "TagSpecification", "instance"),
    };
    let out = cloud.create_fleet(request).await?;
    let lifecycle = capacity_type.as_str();
    let template_of = |instance_type: &str, zone: &str| {
        overrides
            .iter()
            .find(|o| o.instance_type == instance_type && o.zone == zone)
            .map(|o| o.launch_template_name.clone())
            .unwrap_or_default()
    };
    x.leaf("fleetId", format!("fleet-{}", request_id.replace('-', "")));
    x.open("errorSet");
    for e in &out.errors {
        x.open("item");
        x.open("launchTemplateAndOverrides");
        x.open("launchTemplateSpecification");
        x.leaf("launchTemplateName", template_of(&e.instance_type, &e.zone));
        x.leaf("version", "$Latest");
        x.close("launchTemplateSpecification");
        x.open("overrides");
        x.leaf("instanceType", &e.instance_type);
        x.leaf("availabilityZone", &e.zone);
        x.close("overrides");
        x.close("launchTemplateAndOverrides");
        x.leaf("lifecycle", lifecycle);
        x.leaf("errorCode", &e.code);
        x.leaf("errorMessage", &e.message);
        x.close("item");
    }
    x.close("errorSet");
    // One entry per (type, zone, subnet), as EC2 groups them.
    let mut groups: BTreeMap<(String, String, String), Vec<String>> = BTreeMap::new();
    for i in &out.instances {
        groups
            .entry((i.instance_type.clone(), i.zone.clone(), i.subnet_id.clone()))
            .or_default()
            .push(i.id.clone());
    }
    x.open("fleetInstanceSet");
    for ((instance_type, zone, subnet), ids) in &groups {
        x.open("item");
        x.open("launchTemplateAndOverrides");
        x.open("launchTemplateSpecification");
        x.leaf("launchTemplateName", template_of(instance_type, zone));
        x.leaf("version", "$Latest");
        x.close("launchTemplateSpecification");
        x.open("overrides");
        x.leaf("instanceType", instance_type);
        x.nonempty("subnetId", subnet);
        x.leaf("availabilityZone", zone);
        x.close("overrides");
        x.close("launchTemplateAndOverrides");
        x.leaf("lifecycle", lifecycle);
        x.items("instanceIds", ids);
        x.leaf("instanceType", instance_type);
        x.close("item");
    }
    x.close("fleetInstanceSet");
    Ok(())
}

/// EC2's numeric state codes.
fn state_code(s: InstanceState) -> u32 {
    match s {
        InstanceState::Pending => 0,
        InstanceState::Running => 16,
        InstanceState::ShuttingDown => 32,
        InstanceState::Terminated => 48,
    }
}

impl Filterable for Instance {
    fn values(&self, name: &str) -> Option<Vec<String>> {
        Some(match name {
            "instance-id" => vec![self.id.clone()],
            "instance-type" => vec![self.instance_type.clone()],
            "availability-zone" => vec![self.zone.clone()],
            "subnet-id" => vec![self.subnet_id.clone()],
            "instance-state-name" => vec![self.state.as_str().into()],
            "instance-state-code" => vec![state_code(self.state).to_string()],
            "instance-lifecycle" => self.instance_lifecycle.iter().cloned().collect(),
            "capacity-reservation-id" => self.capacity_reservation_id.iter().cloned().collect(),
            "private-ip-address" => vec![self.private_ip.clone()],
            "private-dns-name" => vec![self.private_dns_name.clone()],
            "image-id" => vec![self.image_id.clone()],
            "vpc-id" => vec![VPC.into()],
            _ => return None,
        })
    }
    fn tags(&self) -> Option<&BTreeMap<String, String>> {
        Some(&self.tags)
    }
}

/// The filters the fake's DescribeInstances takes itself (so its paging and consistency are its own):
/// single-valued tags, tag keys, and state names.
fn native_filters(filters: &[Filter]) -> Option<DescribeInstancesRequest> {
    let mut r = DescribeInstancesRequest::default();
    for f in filters {
        let plain = |v: &String| !v.contains(['*', '?']);
        match (f.name.strip_prefix("tag:"), f.name.as_str()) {
            (Some(key), _) if f.values.len() == 1 && plain(&f.values[0]) => {
                r.tags.insert(key.to_string(), f.values[0].clone());
            }
            (None, "tag-key") if f.values.len() == 1 && plain(&f.values[0]) => {
                r.tag_keys.push(f.values[0].clone())
            }
            (None, "instance-state-name") => {
                for v in &f.values {
                    r.states.push(match v.as_str() {
                        "pending" => InstanceState::Pending,
                        "running" => InstanceState::Running,
                        "shutting-down" => InstanceState::ShuttingDown,
                        "terminated" => InstanceState::Terminated,
                        _ => return None,
                    });
                }
            }
            _ => return None,
        }
    }
    Some(r)
}

fn write_instance(x: &mut Xml, i: &Instance) {
    x.open("item");
    x.leaf("instanceId", &i.id);
    x.nonempty("imageId", &i.image_id);
    x.open("instanceState");
    x.leaf("code", state_code(i.state));
    x.leaf("name", i.state.as_str());
    x.close("instanceState");
    x.leaf("privateDnsName", &i.private_dns_name);
    x.leaf("instanceType", &i.instance_type);
    x.leaf("launchTime", time(i.launch_time));
    x.open("placement");
    x.leaf("availabilityZone", &i.zone);
    x.leaf("tenancy", "default");
    x.close("placement");
    x.nonempty("subnetId", &i.subnet_id);
    x.leaf("vpcId", VPC);
    x.nonempty("privateIpAddress", &i.private_ip);
    x.opt("instanceLifecycle", i.instance_lifecycle.as_deref());
    x.opt(
        "capacityReservationId",
        i.capacity_reservation_id.as_deref(),
    );
    if let Some(pref) = &i.capacity_reservation_preference {
        x.open("capacityReservationSpecification");
        x.leaf("capacityReservationPreference", pref);
        x.close("capacityReservationSpecification");
    }
    if let Some(r) = &i.state_reason {
        x.open("stateReason");
        x.leaf("code", &r.code);
        x.leaf("message", &r.message);
        x.close("stateReason");
    }
    x.leaf("architecture", "x86_64");
    x.leaf("rootDeviceType", "ebs");
    x.leaf("hypervisor", "xen");
    x.tags(&i.tags);
    x.close("item");
}

async fn describe_instances(cloud: &FakeCloud, p: &Params, x: &mut Xml) -> Result<(), CloudError> {
    let ids = p.list("InstanceId");
    let filters = p.filters()?;
    let max_results = p.int("MaxResults")?;
    let (instances, next) = match native_filters(&filters) {
        Some(mut request) => {
            request.instance_ids = ids;
            request.max_results = max_results.map(|m| m.clamp(0, i64::from(u32::MAX)) as u32);
            request.next_token = p.get("NextToken").map(str::to_string);
            let out = cloud.describe_instances(request).await?;
            (out.instances, out.next_token)
        }
        None => {
            if !ids.is_empty() && max_results.is_some() {
                return Err(CloudError::new(
                    "InvalidParameterCombination",
                    "The parameter instancesSet cannot be used with the parameter maxResults",
                ));
            }
            let out = cloud
                .describe_instances(DescribeInstancesRequest {
                    instance_ids: ids,
                    ..Default::default()
                })
                .await?;
            page(apply(out.instances, &filters)?, p, (5, 1000), None)?
        }
    };
    x.open("reservationSet");
    for i in &instances {
        x.open("item");
        x.leaf("reservationId", format!("r-{}", &i.id[2.min(i.id.len())..]));
        x.leaf("ownerId", ACCOUNT);
        x.open("instancesSet");
        write_instance(x, i);
        x.close("instancesSet");
        x.close("item");
    }
    x.close("reservationSet");
    next_token(x, next);
    Ok(())
}

async fn terminate_instances(cloud: &FakeCloud, p: &Params, x: &mut Xml) -> Result<(), CloudError> {
    let ids = p.list("InstanceId");
    if ids.is_empty() {
        p.required("InstanceId.1")?;
    }
    let before: BTreeMap<String, InstanceState> = cloud
        .instances()
        .into_iter()
        .map(|r| (r.instance.id, r.instance.state))
        .collect();
    cloud.terminate_instances(ids.clone()).await?;
    let after: BTreeMap<String, InstanceState> = cloud
        .instances()
        .into_iter()
        .map(|r| (r.instance.id, r.instance.state))
        .collect();
    x.open("instancesSet");
    for id in &ids {
        x.open("item");
        x.leaf("instanceId", id);
        for (tag, states) in [("currentState", &after), ("previousState", &before)] {
            let s = states.get(id).copied().unwrap_or(InstanceState::Terminated);
            x.open(tag);
            x.leaf("code", state_code(s));
            x.leaf("name", s.as_str());
            x.close(tag);
        }
        x.close("item");
    }
    x.close("instancesSet");
    Ok(())
}
