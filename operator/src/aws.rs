//! The Cloud seam on aws-sdk-ec2, aws-sdk-sqs and aws-sdk-ssm: field-by-field mappings, paging, and EC2's error codes
//! passed through as the seam's (the controller classifies them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ec2::types as ec2;
use dovetail::aws::cloud::ImageQuery;
use dovetail::aws::cloud::{
    CapacityReservation, CapacityReservationQuery, CapacityType, Cloud, CloudError,
    CreateFleetOutput, CreateFleetRequest, DescribeInstancesOutput, DescribeInstancesRequest,
    FleetError, Image, Instance, InstanceState, InstanceTypeInfo, InstanceTypeOffering,
    LaunchTemplate, LaunchTemplateData, OnDemandStrategy, QueueMessage, ReservationType,
    SecurityGroup, SpotPrice, StateReason, Subnet, TagFilter,
};
use dovetail::metrics::{CLOUDPROVIDER_ERRORS, Metrics};

/// On-demand prices (us-east-1, USD/hour) from the bundled catalog; the Pricing API is not queried.
const CATALOG: &str = include_str!("../../data/ec2-instance-types.csv");

/// Attempts at reading a just-launched instance back (EC2 is eventually consistent).
const DESCRIBE_AFTER_LAUNCH: u32 = 3;

/// Every item of a paginated EC2 call, its error counted under the method's name.
macro_rules! every_item {
    ($self:ident, $call:expr, $method:literal) => {
        $call
            .into_paginator()
            .items()
            .send()
            .collect::<Result<_, _>>()
            .await
            .map_err(|e| seam_error(&$self.metrics, $method, e))?
    };
}

/// EC2, SQS and SSM, as the controller needs them.
#[derive(Clone)]
pub struct AwsCloud {
    ec2: aws_sdk_ec2::Client,
    sqs: aws_sdk_sqs::Client,
    ssm: aws_sdk_ssm::Client,
    metrics: Arc<Metrics>,
}

/// Any SDK error (EC2's or SQS's: the same smithy type) as the seam's: the service's code when it
/// answered, else what went wrong on the way; counted under `method`.
fn seam_error<E: ProvideErrorMetadata + std::error::Error + 'static>(
    metrics: &Metrics,
    method: &'static str,
    e: aws_sdk_ec2::error::SdkError<E>,
) -> CloudError {
    let error = match e.code() {
        Some(code) => CloudError::new(code, e.message().unwrap_or_default()),
        None => CloudError::new("RequestError", DisplayErrorContext(&e).to_string()),
    };
    metrics.inc(
        CLOUDPROVIDER_ERRORS,
        &[("method", method), ("error", &error.code)],
    );
    error
}

fn tags_of(tags: &[ec2::Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn sdk_tags(tags: &BTreeMap<String, String>) -> Vec<ec2::Tag> {
    tags.iter()
        .map(|(k, v)| ec2::Tag::builder().key(k).value(v).build())
        .collect()
}

fn filter(name: &str, values: Vec<String>) -> ec2::Filter {
    ec2::Filter::builder()
        .name(name)
        .set_values(Some(values))
        .build()
}

/// EC2 filters for a Describe* call: ids and names by the given filter names, tags as `tag:<key>`
/// (`*` meaning any value, as `tag-key`).
fn tag_filters(f: &TagFilter, id_filter: &str, name_filter: &str) -> Vec<ec2::Filter> {
    let mut out = Vec::new();
    if !f.ids.is_empty() {
        out.push(filter(id_filter, f.ids.clone()));
    }
    if !f.names.is_empty() {
        out.push(filter(name_filter, f.names.clone()));
    }
    for (k, v) in &f.tags {
        if v == "*" {
            out.push(filter("tag-key", vec![k.clone()]));
        } else {
            out.push(filter(&format!("tag:{k}"), vec![v.clone()]));
        }
    }
    out
}

fn state_of(name: Option<&ec2::InstanceStateName>) -> InstanceState {
    match name {
        Some(ec2::InstanceStateName::Pending) => InstanceState::Pending,
        Some(ec2::InstanceStateName::Running) => InstanceState::Running,
        Some(ec2::InstanceStateName::Terminated) => InstanceState::Terminated,
        // Stopping, stopped and shutting down: on its way out, not a node.
        _ => InstanceState::ShuttingDown,
    }
}

fn timestamp(t: Option<&aws_smithy_types::DateTime>) -> jiff::Timestamp {
    t.and_then(|t| jiff::Timestamp::new(t.secs(), t.subsec_nanos() as i32).ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn instance_of(i: &ec2::Instance) -> Instance {
    Instance {
        id: i.instance_id().unwrap_or_default().to_string(),
        instance_type: i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        zone: i
            .placement()
            .and_then(|p| p.availability_zone())
            .unwrap_or_default()
            .to_string(),
        subnet_id: i.subnet_id().unwrap_or_default().to_string(),
        capacity_type: match i.instance_lifecycle() {
            Some(ec2::InstanceLifecycleType::Spot) => CapacityType::Spot,
            _ => CapacityType::OnDemand,
        },
        state: state_of(i.state().and_then(|s| s.name())),
        state_reason: i.state_reason().map(|r| StateReason {
            code: r.code().unwrap_or_default().to_string(),
            message: r.message().unwrap_or_default().to_string(),
        }),
        private_ip: i.private_ip_address().unwrap_or_default().to_string(),
        private_dns_name: i.private_dns_name().unwrap_or_default().to_string(),
        image_id: i.image_id().unwrap_or_default().to_string(),
        launch_time: timestamp(i.launch_time()),
        tags: tags_of(i.tags()),
        capacity_reservation_id: i.capacity_reservation_id().map(str::to_string),
        capacity_reservation_preference: i
            .capacity_reservation_specification()
            .and_then(|s| s.capacity_reservation_preference())
            .map(|p| p.as_str().to_string()),
        instance_lifecycle: i.instance_lifecycle().map(|l| l.as_str().to_string()),
    }
}

fn capacity_reservation_of(r: &ec2::CapacityReservation) -> CapacityReservation {
    let ts = |t: Option<&aws_smithy_types::DateTime>| t.map(|t| timestamp(Some(t)));
    CapacityReservation {
        id: r.capacity_reservation_id().unwrap_or_default().to_string(),
        instance_type: r.instance_type().unwrap_or_default().to_string(),
        zone: r.availability_zone().unwrap_or_default().to_string(),
        owner_id: r.owner_id().unwrap_or_default().to_string(),
        total_instance_count: r.total_instance_count().unwrap_or(0).max(0) as u32,
        available_instance_count: r.available_instance_count().unwrap_or(0).max(0) as u32,
        instance_match_criteria: r
            .instance_match_criteria()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
        reservation_type: r
            .reservation_type()
            .map_or("default", |t| t.as_str())
            .to_string(),
        interruptible: r.interruptible().unwrap_or(false),
        state: r
            .state()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        start_date: ts(r.start_date()),
        end_date: ts(r.end_date()),
        tags: tags_of(r.tags()),
    }
}

/// The bundled catalog's on-demand prices, by instance type.
pub fn catalog_prices() -> BTreeMap<String, f64> {
    let mut lines = CATALOG.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let name = header.iter().position(|h| *h == "name");
    let price = header
        .iter()
        .position(|h| h.starts_with("od_price_usd_per_hour"));
    let (Some(name), Some(price)) = (name, price) else {
        return BTreeMap::new();
    };
    lines
        .filter_map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            Some((cols.get(name)?.to_string(), cols.get(price)?.parse().ok()?))
        })
        .collect()
}

impl AwsCloud {
    pub fn new(config: &aws_config::SdkConfig, metrics: Arc<Metrics>) -> AwsCloud {
        AwsCloud {
            ec2: aws_sdk_ec2::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
            metrics,
        }
    }

    /// The SDK's default chain (IRSA or Pod Identity in a cluster), with the region if given.
    pub async fn from_environment(region: Option<String>, metrics: Arc<Metrics>) -> AwsCloud {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        AwsCloud::new(&loader.load().await, metrics)
    }

    /// A queue given by name (Karpenter's INTERRUPTION_QUEUE) as its URL; a URL is kept as it is.
    pub async fn queue_url(&self, queue: &str) -> Result<String, CloudError> {
        if queue.starts_with("https://") || queue.starts_with("http://") {
            return Ok(queue.to_string());
        }
        let out = self
            .sqs
            .get_queue_url()
            .queue_name(queue)
            .send()
            .await
            .map_err(|e| seam_error(&self.metrics, "GetQueueUrl", e))?;
        Ok(out.queue_url().unwrap_or_default().to_string())
    }
}

#[async_trait]
impl Cloud for AwsCloud {
    async fn describe_instance_types(&self) -> Result<Vec<InstanceTypeInfo>, CloudError> {
        let items: Vec<ec2::InstanceTypeInfo> = every_item!(
            self,
            self.ec2.describe_instance_types(),
            "DescribeInstanceTypes"
        );
        Ok(items
            .iter()
            .map(|t| {
                let arch = t
                    .processor_info()
                    .map(|p| p.supported_architectures())
                    .unwrap_or_default();
                let gpu = t.gpu_info().and_then(|g| g.gpus().first());
                let name = t
                    .instance_type()
                    .map(|x| x.as_str().to_string())
                    .unwrap_or_default();
                InstanceTypeInfo {
                    branch_interfaces: dovetail::aws::vpclimits::branch_interfaces(&name),
                    name,
                    arch: if arch.contains(&ec2::ArchitectureType::Arm64) {
                        "arm64".into()
                    } else {
                        "amd64".into()
                    },
                    vcpu: t.v_cpu_info().and_then(|v| v.default_v_cpus()).unwrap_or(0) as u32,
                    memory_mib: t.memory_info().and_then(|m| m.size_in_mib()).unwrap_or(0) as u64,
                    hypervisor: t
                        .hypervisor()
                        .map(|h| h.as_str().to_string())
                        .unwrap_or_default(),
                    max_enis: t
                        .network_info()
                        .and_then(|n| n.maximum_network_interfaces())
                        .unwrap_or(0) as u32,
                    ipv4_per_eni: t
                        .network_info()
                        .and_then(|n| n.ipv4_addresses_per_interface())
                        .unwrap_or(0) as u32,
                    gpu_count: gpu.and_then(|g| g.count()).unwrap_or(0) as u32,
                    gpu_name: gpu.and_then(|g| g.name()).unwrap_or_default().to_string(),
                    ebs_attachments: t.ebs_info().and_then(|e| {
                        Some(dovetail::aws::cloud::EbsAttachments {
                            maximum: u32::try_from(e.maximum_ebs_attachments()?).ok()?,
                            dedicated: e.attachment_limit_type()
                                == Some(&ec2::AttachmentLimitType::Dedicated),
                        })
                    }),
                    instance_store_disks: t
                        .instance_storage_info()
                        .map(|s| {
                            s.disks()
                                .iter()
                                .map(|d| d.count().unwrap_or(0).max(0) as u32)
                                .sum()
                        })
                        .unwrap_or(0),
                    supported_usage_classes: t
                        .supported_usage_classes()
                        .iter()
                        .filter_map(|u| CapacityType::parse(u.as_str()))
                        .collect(),
                }
            })
            .collect())
    }

    async fn describe_instance_type_offerings(
        &self,
    ) -> Result<Vec<InstanceTypeOffering>, CloudError> {
        let items: Vec<ec2::InstanceTypeOffering> = every_item!(
            self,
            self.ec2
                .describe_instance_type_offerings()
                .location_type(ec2::LocationType::AvailabilityZone),
            "DescribeInstanceTypeOfferings"
        );
        Ok(items
            .iter()
            .map(|o| InstanceTypeOffering {
                instance_type: o
                    .instance_type()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
                zone: o.location().unwrap_or_default().to_string(),
            })
            .collect())
    }

    async fn describe_spot_price_history(&self) -> Result<Vec<SpotPrice>, CloudError> {
        // With a start time of now, EC2 answers the current price of each type and zone.
        let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
        let items: Vec<ec2::SpotPrice> = every_item!(
            self,
            self.ec2
                .describe_spot_price_history()
                .product_descriptions("Linux/UNIX")
                .start_time(now),
            "DescribeSpotPriceHistory"
        );
        // Keep the newest entry per type and zone.
        let mut latest: BTreeMap<(String, String), (i64, f64)> = BTreeMap::new();
        for p in &items {
            let key = (
                p.instance_type()
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
                p.availability_zone().unwrap_or_default().to_string(),
            );
            let Some(price) = p.spot_price().and_then(|s| s.parse::<f64>().ok()) else {
                continue;
            };
            let at = p.timestamp().map_or(0, |t| t.secs());
            if latest.get(&key).is_none_or(|(t, _)| at >= *t) {
                latest.insert(key, (at, price));
            }
        }
        Ok(latest
            .into_iter()
            .map(|((instance_type, zone), (_, price))| SpotPrice {
                instance_type,
                zone,
                price,
            })
            .collect())
    }

    async fn on_demand_prices(&self) -> Result<BTreeMap<String, f64>, CloudError> {
        Ok(catalog_prices())
    }

    async fn describe_subnets(&self) -> Result<Vec<Subnet>, CloudError> {
        let items: Vec<ec2::Subnet> =
            every_item!(self, self.ec2.describe_subnets(), "DescribeSubnets");
        Ok(items
            .iter()
            .map(|s| Subnet {
                id: s.subnet_id().unwrap_or_default().to_string(),
                zone: s.availability_zone().unwrap_or_default().to_string(),
                available_ip_addresses: s.available_ip_address_count().unwrap_or(0).max(0) as u32,
                tags: tags_of(s.tags()),
            })
            .collect())
    }

    async fn describe_security_groups(
        &self,
        f: TagFilter,
    ) -> Result<Vec<SecurityGroup>, CloudError> {
        let items: Vec<ec2::SecurityGroup> = every_item!(
            self,
            self.ec2
                .describe_security_groups()
                .set_filters(Some(tag_filters(&f, "group-id", "group-name"))),
            "DescribeSecurityGroups"
        );
        Ok(items
            .iter()
            .map(|g| SecurityGroup {
                id: g.group_id().unwrap_or_default().to_string(),
                name: g.group_name().unwrap_or_default().to_string(),
                tags: tags_of(g.tags()),
            })
            .collect())
    }

    async fn describe_images(&self, q: ImageQuery) -> Result<Vec<Image>, CloudError> {
        let mut filters = tag_filters(&q.filter, "image-id", "name");
        filters.push(filter("state", vec!["available".into()]));
        let call = self
            .ec2
            .describe_images()
            .set_filters(Some(filters))
            .set_owners((!q.owners.is_empty()).then(|| q.owners.clone()))
            .include_deprecated(true)
            .max_results(1000);
        let images: Vec<ec2::Image> = every_item!(self, call, "DescribeImages");
        Ok(images
            .iter()
            .map(|i| Image {
                id: i.image_id().unwrap_or_default().to_string(),
                name: i.name().unwrap_or_default().to_string(),
                arch: i
                    .architecture()
                    .map(|a| a.as_str().to_string())
                    .unwrap_or_default(),
                creation_date: i.creation_date().unwrap_or_default().to_string(),
                deprecation_time: i.deprecation_time().map(str::to_string),
                owner_id: i.owner_id().unwrap_or_default().to_string(),
                owner_alias: i.image_owner_alias().map(str::to_string),
                tags: tags_of(i.tags()),
            })
            .collect())
    }

    async fn describe_capacity_reservations(
        &self,
        q: CapacityReservationQuery,
    ) -> Result<Vec<CapacityReservation>, CloudError> {
        let mut filters = vec![filter("state", vec!["active".into()])];
        if let Some(owner) = &q.owner_id {
            filters.push(filter("owner-id", vec![owner.clone()]));
        }
        for (k, v) in &q.tags {
            if v == "*" {
                filters.push(filter("tag-key", vec![k.clone()]));
            } else {
                filters.push(filter(&format!("tag:{k}"), vec![v.clone()]));
            }
        }
        if let Some(m) = &q.instance_match_criteria {
            filters.push(filter("instance-match-criteria", vec![m.clone()]));
        }
        // EC2 refuses MaxResults beside ids.
        let call = self
            .ec2
            .describe_capacity_reservations()
            .set_filters(Some(filters))
            .set_capacity_reservation_ids((!q.ids.is_empty()).then(|| q.ids.clone()))
            .set_max_results(q.ids.is_empty().then_some(1000));
        let items: Vec<ec2::CapacityReservation> =
            every_item!(self, call, "DescribeCapacityReservations");
        Ok(items.iter().map(capacity_reservation_of).collect())
    }

    async fn get_parameter(&self, name: &str) -> Result<String, CloudError> {
        let out = self
            .ssm
            .get_parameter()
            .name(name)
            .send()
            .await
            .map_err(|e| seam_error(&self.metrics, "GetParameter", e))?;
        Ok(out
            .parameter()
            .and_then(|p| p.value())
            .unwrap_or_default()
            .to_string())
    }

    async fn create_launch_template(
        &self,
        name: String,
        data: LaunchTemplateData,
    ) -> Result<LaunchTemplate, CloudError> {
        let devices = data
            .block_devices
            .iter()
            .map(|d| {
                ec2::LaunchTemplateBlockDeviceMappingRequest::builder()
                    .device_name(&d.device_name)
                    .ebs(
                        ec2::LaunchTemplateEbsBlockDeviceRequest::builder()
                            .set_volume_size(d.volume_size_gib.map(|g| g as i32))
                            .set_volume_type(d.volume_type.as_deref().map(ec2::VolumeType::from))
                            .set_iops(d.iops.map(|v| v as i32))
                            .set_throughput(d.throughput.map(|v| v as i32))
                            .set_encrypted(d.encrypted)
                            .set_kms_key_id(d.kms_key_id.clone())
                            .set_snapshot_id(d.snapshot_id.clone())
                            .set_delete_on_termination(d.delete_on_termination)
                            .set_volume_initialization_rate(d.volume_initialization_rate)
                            .build(),
                    )
                    .build()
            })
            .collect();
        let m = &data.metadata;
        // With a primary interface configured, the security groups go on it (EC2 refuses both).
        let (top_level_groups, interfaces) = match &data.network_interface {
            None => (Some(data.security_group_ids.clone()), None),
            Some(ni) => {
                let mut spec =
                    ec2::LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                        .device_index(0)
                        .set_groups(Some(data.security_group_ids.clone()))
                        .set_associate_public_ip_address(ni.associate_public_ip_address)
                        .set_ipv4_prefix_count(ni.ipv4_prefix_count);
                if let Some((tcp, udp_stream, udp)) = ni.connection_tracking {
                    spec = spec.connection_tracking_specification(
                        ec2::ConnectionTrackingSpecificationRequest::builder()
                            .set_tcp_established_timeout(tcp)
                            .set_udp_stream_timeout(udp_stream)
                            .set_udp_timeout(udp)
                            .build(),
                    );
                }
                (None, Some(vec![spec.build()]))
            }
        };
        let request = ec2::RequestLaunchTemplateData::builder()
            .image_id(&data.image_id)
            .set_security_group_ids(top_level_groups)
            .set_network_interfaces(interfaces)
            .set_block_device_mappings(Some(devices))
            .user_data(aws_smithy_types::base64::encode(data.user_data.as_bytes()))
            .iam_instance_profile(
                ec2::LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                    .name(&data.instance_profile)
                    .build(),
            )
            .metadata_options(
                ec2::LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(ec2::LaunchTemplateHttpTokensState::from(
                        m.http_tokens.as_str(),
                    ))
                    .http_put_response_hop_limit(m.http_put_response_hop_limit as i32)
                    .http_endpoint(ec2::LaunchTemplateInstanceMetadataEndpointState::from(
                        m.http_endpoint.as_str(),
                    ))
                    .http_protocol_ipv6(ec2::LaunchTemplateInstanceMetadataProtocolIpv6::from(
                        m.http_protocol_ipv6.as_str(),
                    ))
                    .build(),
            )
            .monitoring(
                ec2::LaunchTemplatesMonitoringRequest::builder()
                    .enabled(data.detailed_monitoring)
                    .build(),
            )
            .set_capacity_reservation_specification(data.capacity_reservation.as_ref().map(|c| {
                ec2::LaunchTemplateCapacityReservationSpecificationRequest::builder()
                    .capacity_reservation_preference(ec2::CapacityReservationPreference::from(
                        c.preference.as_str(),
                    ))
                    .set_capacity_reservation_target(c.target_id.as_ref().map(|id| {
                        ec2::CapacityReservationTarget::builder()
                            .capacity_reservation_id(id)
                            .build()
                    }))
                    .build()
            }))
            .set_instance_market_options(data.market_type.as_deref().map(|m| {
                ec2::LaunchTemplateInstanceMarketOptionsRequest::builder()
                    .market_type(ec2::MarketType::from(m))
                    .build()
            }))
            .set_cpu_options(data.nested_virtualization.as_deref().map(|n| {
                ec2::LaunchTemplateCpuOptionsRequest::builder()
                    .nested_virtualization(ec2::NestedVirtualizationSpecification::from(n))
                    .build()
            }))
            .tag_specifications(
                ec2::LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(ec2::ResourceType::Instance)
                    .set_tags(Some(sdk_tags(&data.tags)))
                    .build(),
            )
            .tag_specifications(
                ec2::LaunchTemplateTagSpecificationRequest::builder()
                    .resource_type(ec2::ResourceType::Volume)
                    .set_tags(Some(sdk_tags(&data.tags)))
                    .build(),
            )
            .build();
        let out = self
            .ec2
            .create_launch_template()
            .launch_template_name(&name)
            .launch_template_data(request)
            .tag_specifications(
                ec2::TagSpecification::builder()
                    .resource_type(ec2::ResourceType::LaunchTemplate)
                    .set_tags(Some(sdk_tags(&data.tags)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| seam_error(&self.metrics, "CreateLaunchTemplate", e))?;
        Ok(LaunchTemplate {
            id: out
                .launch_template()
                .and_then(|t| t.launch_template_id())
                .unwrap_or_default()
                .to_string(),
            name,
            data,
        })
    }

    async fn describe_launch_templates(
        &self,
        names: Vec<String>,
    ) -> Result<Vec<LaunchTemplate>, CloudError> {
        let out = self
            .ec2
            .describe_launch_templates()
            .set_launch_template_names(Some(names))
            .send()
            .await
            .map_err(|e| seam_error(&self.metrics, "DescribeLaunchTemplates", e))?;
        // The template's content is not read back (that is DescribeLaunchTemplateVersions); the name
        // carries a hash of it.
        Ok(out
            .launch_templates()
            .iter()
            .map(|t| LaunchTemplate {
                id: t.launch_template_id().unwrap_or_default().to_string(),
                name: t.launch_template_name().unwrap_or_default().to_string(),
                data: LaunchTemplateData {
                    tags: tags_of(t.tags()),
                    ..Default::default()
                },
            })
            .collect())
    }

    async fn delete_launch_template(&self, name: String) -> Result<(), CloudError> {
        self.ec2
            .delete_launch_template()
            .launch_template_name(name)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| seam_error(&self.metrics, "DeleteLaunchTemplate", e))
    }

    async fn create_fleet(
        &self,
        request: CreateFleetRequest,
    ) -> Result<CreateFleetOutput, CloudError> {
        let prioritized = request.on_demand_strategy == OnDemandStrategy::Prioritized;
        // One LaunchTemplateConfig per launch template (one per image), in the order first named.
        let mut configs: Vec<(String, Vec<ec2::FleetLaunchTemplateOverridesRequest>)> = Vec::new();
        for o in &request.overrides {
            let sdk = ec2::FleetLaunchTemplateOverridesRequest::builder()
                .instance_type(ec2::InstanceType::from(o.instance_type.as_str()))
                .subnet_id(&o.subnet_id)
                .availability_zone(&o.zone)
                .set_priority(o.priority)
                .build();
            match configs
                .iter_mut()
                .find(|(n, _)| *n == o.launch_template_name)
            {
                Some((_, list)) => list.push(sdk),
                None => configs.push((o.launch_template_name.clone(), vec![sdk])),
            }
        }
        let configs: Vec<ec2::FleetLaunchTemplateConfigRequest> = configs
            .into_iter()
            .map(|(name, overrides)| {
                ec2::FleetLaunchTemplateConfigRequest::builder()
                    .launch_template_specification(
                        ec2::FleetLaunchTemplateSpecificationRequest::builder()
                            .launch_template_name(name)
                            .version("$Latest")
                            .build(),
                    )
                    .set_overrides(Some(overrides))
                    .build()
            })
            .collect();
        let capacity_type = match (request.capacity_type, request.reservation) {
            (CapacityType::Spot, _) => ec2::DefaultTargetCapacityType::Spot,
            (_, Some(ReservationType::CapacityBlock)) => {
                ec2::DefaultTargetCapacityType::CapacityBlock
            }
            (_, Some(ReservationType::Interruptible)) => {
                ec2::DefaultTargetCapacityType::ReservedCapacity
            }
            _ => ec2::DefaultTargetCapacityType::OnDemand,
        };
        // A Capacity Block takes no on-demand options; an interruptible reservation names its type.
        let on_demand_options =
            matches!(request.reservation, None | Some(ReservationType::Default));
        let tags = sdk_tags(&request.tags);
        let mut call = self
            .ec2
            .create_fleet()
            .r#type(ec2::FleetType::Instant)
            .client_token(&request.client_token)
            .set_context(request.context.clone())
            .set_launch_template_configs(Some(configs))
            .target_capacity_specification(
                ec2::TargetCapacitySpecificationRequest::builder()
                    .total_target_capacity(request.target_capacity as i32)
                    .default_target_capacity_type(capacity_type)
                    .build(),
            )
            .spot_options(
                ec2::SpotOptionsRequest::builder()
                    .allocation_strategy(ec2::SpotAllocationStrategy::PriceCapacityOptimized)
                    .build(),
            )
            .set_on_demand_options(on_demand_options.then(|| {
                ec2::OnDemandOptionsRequest::builder()
                    .allocation_strategy(if prioritized {
                        ec2::FleetOnDemandAllocationStrategy::Prioritized
                    } else {
                        ec2::FleetOnDemandAllocationStrategy::LowestPrice
                    })
                    .build()
            }))
            .set_reserved_capacity_options(
                (request.reservation == Some(ReservationType::Interruptible)).then(|| {
                    ec2::ReservedCapacityOptionsRequest::builder()
                        .reservation_types(
                            ec2::FleetReservationType::InterruptibleCapacityReservation,
                        )
                        .build()
                }),
            );
        for resource in [ec2::ResourceType::Instance, ec2::ResourceType::Volume] {
            call = call.tag_specifications(
                ec2::TagSpecification::builder()
                    .resource_type(resource)
                    .set_tags(Some(tags.clone()))
                    .build(),
            );
        }
        let out = call
            .send()
            .await
            .map_err(|e| seam_error(&self.metrics, "CreateFleet", e))?;
        let errors = out
            .errors()
            .iter()
            .map(|e| {
                let o = e
                    .launch_template_and_overrides()
                    .and_then(|l| l.overrides());
                FleetError {
                    code: e.error_code().unwrap_or_default().to_string(),
                    message: e.error_message().unwrap_or_default().to_string(),
                    instance_type: o
                        .and_then(|o| o.instance_type())
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    zone: o
                        .and_then(|o| o.availability_zone())
                        .unwrap_or_default()
                        .to_string(),
                }
            })
            .collect();
        let mut launched = Vec::new();
        for i in out.instances() {
            let o = i
                .launch_template_and_overrides()
                .and_then(|l| l.overrides());
            for id in i.instance_ids() {
                launched.push(Instance {
                    id: id.clone(),
                    instance_type: i
                        .instance_type()
                        .map(|t| t.as_str().to_string())
                        .unwrap_or_default(),
                    zone: o
                        .and_then(|o| o.availability_zone())
                        .unwrap_or_default()
                        .to_string(),
                    subnet_id: o
                        .and_then(|o| o.subnet_id())
                        .unwrap_or_default()
                        .to_string(),
                    capacity_type: request.capacity_type,
                    state: InstanceState::Pending,
                    state_reason: None,
                    private_ip: String::new(),
                    private_dns_name: String::new(),
                    image_id: String::new(),
                    launch_time: jiff::Timestamp::now(),
                    tags: request.tags.clone(),
                    capacity_reservation_id: None,
                    capacity_reservation_preference: None,
                    instance_lifecycle: None,
                });
            }
        }
        // CreateFleet does not say which image or address an instance got: read them back, a few times
        // while EC2 catches up.
        let ids: Vec<String> = launched.iter().map(|i| i.id.clone()).collect();
        if !ids.is_empty() {
            for attempt in 0..DESCRIBE_AFTER_LAUNCH {
                let found = self
                    .describe_instances(DescribeInstancesRequest {
                        instance_ids: ids.clone(),
                        ..Default::default()
                    })
                    .await;
                if let Ok(found) = found
                    && found.instances.len() == ids.len()
                {
                    launched = found.instances;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
        }
        Ok(CreateFleetOutput {
            instances: launched,
            errors,
        })
    }

    async fn describe_instances(
        &self,
        request: DescribeInstancesRequest,
    ) -> Result<DescribeInstancesOutput, CloudError> {
        let mut filters = Vec::new();
        for (k, v) in &request.tags {
            filters.push(filter(&format!("tag:{k}"), vec![v.clone()]));
        }
        for k in &request.tag_keys {
            filters.push(filter("tag-key", vec![k.clone()]));
        }
        if !request.states.is_empty() {
            filters.push(filter(
                "instance-state-name",
                request
                    .states
                    .iter()
                    .map(|s| s.as_str().to_string())
                    .collect(),
            ));
        }
        let ids = (!request.instance_ids.is_empty()).then(|| request.instance_ids.clone());
        let out = self
            .ec2
            .describe_instances()
            .set_instance_ids(ids)
            .set_filters((!filters.is_empty()).then_some(filters))
            .set_max_results(request.max_results.map(|m| m as i32))
            .set_next_token(request.next_token.clone())
            .send()
            .await
            .map_err(|e| seam_error(&self.metrics, "DescribeInstances", e))?;
        Ok(DescribeInstancesOutput {
            instances: out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .map(instance_of)
                .collect(),
            next_token: out
                .next_token()
                .map(str::to_string)
                .filter(|t| !t.is_empty()),
        })
    }

    async fn terminate_instances(&self, instance_ids: Vec<String>) -> Result<(), CloudError> {
        self.ec2
            .terminate_instances()
            .set_instance_ids(Some(instance_ids))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| seam_error(&self.metrics, "TerminateInstances", e))
    }

    async fn create_tags(
        &self,
        resource_ids: Vec<String>,
        tags: BTreeMap<String, String>,
    ) -> Result<(), CloudError> {
        self.ec2
            .create_tags()
            .set_resources(Some(resource_ids))
            .set_tags(Some(sdk_tags(&tags)))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| seam_error(&self.metrics, "CreateTags", e))
    }

    async fn receive_messages(
        &self,
        queue_url: &str,
        max: u32,
        visibility_timeout: Duration,
    ) -> Result<Vec<QueueMessage>, CloudError> {
        // A short poll: the controller polls on its own timer and must not block its loop.
        let out = self
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .visibility_timeout(visibility_timeout.as_secs() as i32)
            .wait_time_seconds(0)
            .send()
            .await
            .map_err(|e| seam_error(&self.metrics, "ReceiveMessage", e))?;
        Ok(out
            .messages()
            .iter()
            .map(|m| QueueMessage {
                message_id: m.message_id().unwrap_or_default().to_string(),
                receipt_handle: m.receipt_handle().unwrap_or_default().to_string(),
                body: m.body().unwrap_or_default().to_string(),
            })
            .collect())
    }

    async fn delete_message(
        &self,
        queue_url: &str,
        receipt_handle: &str,
    ) -> Result<(), CloudError> {
        self.sqs
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| seam_error(&self.metrics, "DeleteMessage", e))
    }
}
