//! The AWS launch path: resolve an EC2NodeClass (subnets, security groups, AMI, block devices), reuse launch
//! templates by content, classify CreateFleet errors, and remember unavailable offerings for a while.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::cloud::{
    BlockDevice, CapacityType, FleetError, InstanceMetadata, LaunchTemplateData, PrimaryInterface,
    Subnet, TagFilter,
};
use crate::crds::EC2NodeClass;
use crate::crds::ec2nodeclass::SelectorTerm;

/// How long an offering that answered with insufficient capacity is left out (Karpenter: 3 minutes).
pub const UNAVAILABLE_TTL: Duration = Duration::from_secs(180);

/// Fleet error codes that mean "this pool has no room now; try elsewhere" rather than "retry later".
pub fn is_capacity_error(code: &str) -> bool {
    matches!(
        code,
        "InsufficientInstanceCapacity"
            | "MaxSpotInstanceCountExceeded"
            | "VcpuLimitExceeded"
            | "UnfulfillableCapacity"
            | "Unsupported"
            | "InsufficientFreeAddressesInSubnet"
            | "ReservationCapacityExceeded"
    )
}

/// Offerings that recently failed, keyed capacity-type:type:zone, each with its expiry (clock time).
#[derive(Debug, Clone, Default)]
pub struct UnavailableOfferings {
    until: BTreeMap<(CapacityType, String, String), Duration>,
}

impl UnavailableOfferings {
    /// Record the capacity errors of one CreateFleet answer; returns how many offerings were marked.
    pub fn record(&mut self, ct: CapacityType, errors: &[FleetError], now: Duration) -> usize {
        let mut n = 0;
        for e in errors
            .iter()
            .filter(|e| is_capacity_error(&e.code) && !e.instance_type.is_empty())
        {
            self.until.insert(
                (ct, e.instance_type.clone(), e.zone.clone()),
                now + UNAVAILABLE_TTL,
            );
            n += 1;
        }
        n
    }

    /// Mark one offering unavailable (a spot interruption reclaims its pool).
    pub fn mark(&mut self, ct: CapacityType, instance_type: &str, zone: &str, now: Duration) {
        self.until.insert(
            (ct, instance_type.to_string(), zone.to_string()),
            now + UNAVAILABLE_TTL,
        );
    }

    pub fn is_unavailable(
        &self,
        ct: CapacityType,
        instance_type: &str,
        zone: &str,
        now: Duration,
    ) -> bool {
        self.until
            .get(&(ct, instance_type.to_string(), zone.to_string()))
            .is_some_and(|u| now < *u)
    }

    pub fn expire(&mut self, now: Duration) {
        self.until.retain(|_, u| now < *u);
    }
}

fn term_filter(term: &SelectorTerm) -> TagFilter {
    TagFilter {
        tags: term.tags.clone(),
        ids: term.id.iter().cloned().collect(),
        names: term.name.iter().cloned().collect(),
    }
}

/// Selector terms are OR-ed: an item matches if any term matches it.
pub fn select_subnets(class: &EC2NodeClass, subnets: Vec<Subnet>) -> Vec<Subnet> {
    subnets
        .into_iter()
        .filter(|s| {
            class.spec.subnet_selector_terms.iter().any(|t| {
                TagFilter {
                    tags: t.tags.clone(),
                    ids: t.id.iter().cloned().collect(),
                    names: Vec::new(),
                }
                .matches(&s.id, "", &s.tags)
            })
        })
        .collect()
}

pub fn security_group_filters(class: &EC2NodeClass) -> Vec<TagFilter> {
    class
        .spec
        .security_group_selector_terms
        .iter()
        .map(term_filter)
        .collect()
}

/// GiB, rounded up (Karpenter's conversion of a volume size quantity).
fn gib(size: &str) -> Option<u32> {
    crate::quantity::parse(size)
        .ok()
        .map(|m| (m.units() as u128).div_ceil(1 << 30) as u32)
}

/// Karpenter's default EBS volume: 20 GiB gp3, encrypted.
fn default_ebs(device: &str, gib: u32) -> BlockDevice {
    BlockDevice {
        device_name: device.to_string(),
        volume_size_gib: Some(gib),
        volume_type: Some("gp3".into()),
        encrypted: Some(true),
        ..Default::default()
    }
}

/// The image family's block devices when the class names none: a 20 GiB root on Amazon Linux; a 4 GiB OS
/// volume and a 20 GiB data volume on Bottlerocket; a 50 GiB root on Windows.
fn family_block_devices(family: Option<&str>) -> Vec<BlockDevice> {
    match family {
        Some("Bottlerocket") => vec![default_ebs("/dev/xvda", 4), default_ebs("/dev/xvdb", 20)],
        Some(f) if f.starts_with("Windows") => vec![default_ebs("/dev/sda1", 50)],
        _ => vec![default_ebs("/dev/xvda", 20)],
    }
}

/// The launch template content for a node class, an image and security groups: every launch setting of
/// the class (block devices, metadata options, monitoring, the primary interface, CPU options).
pub fn template_data(
    class: &EC2NodeClass,
    cluster: &super::userdata::Cluster,
    image_id: &str,
    security_groups: &[String],
    tags: &BTreeMap<String, String>,
) -> LaunchTemplateData {
    let spec = &class.spec;
    let block_devices = if spec.block_device_mappings.is_empty() {
        family_block_devices(spec.family())
    } else {
        spec.block_device_mappings
            .iter()
            .map(|m| {
                let ebs = m.ebs.clone().unwrap_or_default();
                BlockDevice {
                    device_name: m.device_name.clone().unwrap_or_else(|| "/dev/xvda".into()),
                    volume_size_gib: ebs.volume_size.as_deref().and_then(gib),
                    volume_type: ebs.volume_type.clone(),
                    iops: ebs.iops,
                    throughput: ebs.throughput,
                    encrypted: ebs.encrypted,
                    kms_key_id: ebs.kms_key_id.clone(),
                    snapshot_id: ebs.snapshot_id.clone(),
                    delete_on_termination: ebs.delete_on_termination,
                    volume_initialization_rate: ebs.volume_initialization_rate,
                }
            })
            .collect()
    };
    let mut sgs: Vec<String> = security_groups.to_vec();
    sgs.sort();
    let defaults = InstanceMetadata::default();
    let metadata = spec
        .metadata_options
        .as_ref()
        .map_or(defaults.clone(), |m| InstanceMetadata {
            http_endpoint: m.http_endpoint.clone().unwrap_or(defaults.http_endpoint),
            http_protocol_ipv6: m
                .http_protocol_ipv6
                .clone()
                .unwrap_or(defaults.http_protocol_ipv6),
            http_put_response_hop_limit: m
                .http_put_response_hop_limit
                .unwrap_or(defaults.http_put_response_hop_limit),
            http_tokens: m.http_tokens.clone().unwrap_or(defaults.http_tokens),
        });
    let network_interface = (spec.associate_public_ip_address.is_some()
        || spec.ip_prefix_count.is_some()
        || spec.connection_tracking.is_some())
    .then(|| PrimaryInterface {
        associate_public_ip_address: spec.associate_public_ip_address,
        ipv4_prefix_count: spec.ip_prefix_count,
        connection_tracking: spec.connection_tracking.as_ref().map(|c| {
            (
                c.tcp_established_timeout,
                c.udp_stream_timeout,
                c.udp_timeout,
            )
        }),
    });
    LaunchTemplateData {
        image_id: image_id.to_string(),
        security_group_ids: sgs,
        block_devices,
        user_data: super::userdata::user_data(class, cluster),
        instance_profile: spec
            .instance_profile
            .clone()
            .or_else(|| spec.role.clone())
            .unwrap_or_default(),
        tags: tags.clone(),
        metadata,
        detailed_monitoring: spec.detailed_monitoring == Some(true),
        network_interface,
        nested_virtualization: spec
            .cpu_options
            .as_ref()
            .and_then(|c| c.nested_virtualization.clone()),
        capacity_reservation: None,
        market_type: None,
    }
}

/// A launch template name derived from its content, so equal content reuses one template instead of
/// creating a new one per launch (Karpenter's launch-template churn).
pub fn template_name(cluster: &str, class: &str, data: &LaunchTemplateData) -> String {
    // Fields added since are left out while unset, so an upgrade keeps the names of the templates it
    // already made (and reuses them) rather than creating every one anew.
    let text = format!("{data:?}").replace(", capacity_reservation: None, market_type: None", "");
    let h = crate::names::fnv1a(&text);
    format!("dovetail/{cluster}/{class}/{h:016x}")
}

/// Names of templates the controller knows exist, so it asks EC2 only once per content.
#[derive(Debug, Clone, Default)]
pub struct KnownTemplates(pub BTreeSet<String>);

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str, t: &str, z: &str) -> FleetError {
        FleetError {
            code: code.into(),
            message: String::new(),
            instance_type: t.into(),
            zone: z.into(),
        }
    }

    fn class(extra: &str) -> EC2NodeClass {
        crate::crds::ec2nodeclass::test_class(&format!("  role: r\n{extra}"))
    }

    #[test]
    fn every_launch_setting_of_the_class_reaches_the_template() {
        let plain = template_data(
            &class(""),
            &Default::default(),
            "ami-1",
            &["sg-1".into()],
            &BTreeMap::new(),
        );
        assert_eq!(plain.metadata, InstanceMetadata::default());
        assert!(!plain.detailed_monitoring && plain.network_interface.is_none());
        assert_eq!(
            plain.block_devices,
            [BlockDevice {
                device_name: "/dev/xvda".into(),
                volume_size_gib: Some(20),
                volume_type: Some("gp3".into()),
                encrypted: Some(true),
                ..Default::default()
            }]
        );
        let set = class(concat!(
            "  metadataOptions: {httpTokens: optional, httpPutResponseHopLimit: 2}\n",
            "  detailedMonitoring: true\n",
            "  associatePublicIPAddress: false\n",
            "  ipPrefixCount: 2\n",
            "  connectionTracking: {tcpEstablishedTimeout: 3600}\n",
            "  cpuOptions: {nestedVirtualization: enabled}\n",
            "  blockDeviceMappings:\n",
            "    - {deviceName: /dev/xvda, rootVolume: true, ebs: {volumeSize: 100G, volumeType: io2, iops: 4000, deleteOnTermination: false, snapshotID: snap-1}}\n",
        ));
        let data = template_data(
            &set,
            &Default::default(),
            "ami-1",
            &["sg-1".into()],
            &BTreeMap::new(),
        );
        assert_eq!(
            (
                data.metadata.http_tokens.as_str(),
                data.metadata.http_put_response_hop_limit,
                data.metadata.http_endpoint.as_str()
            ),
            ("optional", 2, "enabled")
        );
        assert!(data.detailed_monitoring);
        assert_eq!(
            data.network_interface,
            Some(PrimaryInterface {
                associate_public_ip_address: Some(false),
                ipv4_prefix_count: Some(2),
                connection_tracking: Some((Some(3600), None, None)),
            })
        );
        assert_eq!(data.nested_virtualization.as_deref(), Some("enabled"));
        let d = &data.block_devices[0];
        // 100 G (decimal) is 93.1 GiB: rounded up, as Karpenter does.
        assert_eq!(
            (
                d.volume_size_gib,
                d.volume_type.as_deref(),
                d.iops,
                d.delete_on_termination,
                d.snapshot_id.as_deref(),
                d.encrypted
            ),
            (
                Some(94),
                Some("io2"),
                Some(4000),
                Some(false),
                Some("snap-1"),
                None
            )
        );
        // Bottlerocket's own default devices: a small OS volume and a data volume.
        let mut br = class("");
        br.spec.ami_selector_terms[0].alias = Some("bottlerocket@latest".into());
        let devices: Vec<(String, Option<u32>)> =
            template_data(&br, &Default::default(), "ami-1", &[], &BTreeMap::new())
                .block_devices
                .into_iter()
                .map(|d| (d.device_name, d.volume_size_gib))
                .collect();
        assert_eq!(
            devices,
            [
                ("/dev/xvda".to_string(), Some(4)),
                ("/dev/xvdb".to_string(), Some(20))
            ]
        );
    }

    #[test]
    fn capacity_errors_are_cached_for_three_minutes() {
        let mut c = UnavailableOfferings::default();
        let now = Duration::from_secs(100);
        let n = c.record(
            CapacityType::Spot,
            &[
                err("InsufficientInstanceCapacity", "c5.large", "a"),
                err("RequestLimitExceeded", "m5.large", "a"),
            ],
            now,
        );
        assert_eq!(n, 1);
        assert!(c.is_unavailable(CapacityType::Spot, "c5.large", "a", now));
        assert!(!c.is_unavailable(CapacityType::OnDemand, "c5.large", "a", now));
        assert!(!c.is_unavailable(CapacityType::Spot, "m5.large", "a", now));
        assert!(!c.is_unavailable(CapacityType::Spot, "c5.large", "a", now + UNAVAILABLE_TTL));
    }

    #[test]
    fn capacity_errors_are_told_from_the_rest() {
        for code in [
            "InsufficientInstanceCapacity",
            "MaxSpotInstanceCountExceeded",
            "VcpuLimitExceeded",
            "UnfulfillableCapacity",
            "InsufficientFreeAddressesInSubnet",
        ] {
            assert!(is_capacity_error(code), "{code}");
        }
        for code in [
            "RequestLimitExceeded",
            "InvalidLaunchTemplateName.NotFoundException",
            "Unavailable",
            "InvalidParameterValue",
        ] {
            assert!(!is_capacity_error(code), "{code}");
        }
    }

    #[test]
    fn equal_content_gets_one_name() {
        let d = LaunchTemplateData {
            image_id: "ami-1".into(),
            ..Default::default()
        };
        assert_eq!(
            template_name("c", "default", &d),
            template_name("c", "default", &d.clone())
        );
        let e = LaunchTemplateData {
            image_id: "ami-2".into(),
            ..Default::default()
        };
        assert_ne!(
            template_name("c", "default", &d),
            template_name("c", "default", &e)
        );
    }
}
