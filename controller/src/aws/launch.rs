//! The AWS launch path: resolve an EC2NodeClass (subnets, security groups, AMI, block devices), reuse launch
//! templates by content, classify CreateFleet errors, and remember unavailable offerings for a while.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::cloud::{BlockDevice, CapacityType, FleetError, LaunchTemplateData, Subnet, TagFilter};
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

fn gib(size: &str) -> u32 {
    crate::quantity::parse(size)
        .map(|m| (m.units() >> 30) as u32)
        .unwrap_or(20)
}

/// The launch template content for a node class, an image and security groups.
pub fn template_data(
    class: &EC2NodeClass,
    image_id: &str,
    security_groups: &[String],
    tags: &BTreeMap<String, String>,
) -> LaunchTemplateData {
    let block_devices = if class.spec.block_device_mappings.is_empty() {
        vec![BlockDevice {
            device_name: "/dev/xvda".into(),
            volume_size_gib: 20,
            encrypted: true,
            kms_key_id: None,
        }]
    } else {
        class
            .spec
            .block_device_mappings
            .iter()
            .map(|m| {
                let ebs = m.ebs.clone().unwrap_or_default();
                BlockDevice {
                    device_name: m.device_name.clone().unwrap_or_else(|| "/dev/xvda".into()),
                    volume_size_gib: ebs.volume_size.as_deref().map_or(20, gib),
                    encrypted: ebs.encrypted.unwrap_or(false),
                    kms_key_id: ebs.kms_key_id.clone(),
                }
            })
            .collect()
    };
    let mut sgs: Vec<String> = security_groups.to_vec();
    sgs.sort();
    LaunchTemplateData {
        image_id: image_id.to_string(),
        security_group_ids: sgs,
        block_devices,
        user_data: user_data(class),
        instance_profile: class
            .spec
            .instance_profile
            .clone()
            .or_else(|| class.spec.role.clone())
            .unwrap_or_default(),
        tags: tags.clone(),
    }
}

/// The boundary of the MIME multi-part user data (as Karpenter writes it for AL2023).
const BOUNDARY: &str = "//";

/// User data for the node: the class's `userData` as written, and, when the class sets kubelet settings
/// for an AL2023 image, a nodeadm `NodeConfig` part before it carrying them to the kubelet.
pub fn user_data(class: &EC2NodeClass) -> String {
    let own = class.spec.user_data.clone().unwrap_or_default();
    let Some(kubelet) = class
        .spec
        .kubelet
        .as_ref()
        .filter(|_| class.spec.family() == Some("AL2023"))
    else {
        return own;
    };
    let config = serde_json::json!({
        "apiVersion": "node.eks.aws/v1alpha1",
        "kind": "NodeConfig",
        "spec": {"kubelet": {"config": kubelet}},
    });
    let config = serde_saphyr::to_string(&config).unwrap_or_default();
    let mut out = format!(
        "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\n\n--{BOUNDARY}\nContent-Type: application/node.eks.aws\n\n{config}"
    );
    if !own.trim().is_empty() {
        let kind = if own.trim_start().starts_with("apiVersion: node.eks.aws") {
            "application/node.eks.aws"
        } else {
            "text/x-shellscript; charset=\"us-ascii\""
        };
        out.push_str(&format!("\n--{BOUNDARY}\nContent-Type: {kind}\n\n{own}"));
    }
    out.push_str(&format!("\n--{BOUNDARY}--\n"));
    out
}

/// A launch template name derived from its content, so equal content reuses one template instead of
/// creating a new one per launch (Karpenter's launch-template churn).
pub fn template_name(cluster: &str, class: &str, data: &LaunchTemplateData) -> String {
    let h = crate::names::fnv1a(&format!("{data:?}"));
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
    fn kubelet_settings_reach_al2023_nodes_as_a_node_config_part() {
        assert_eq!(user_data(&class("  userData: echo hi\n")), "echo hi");
        let data = user_data(&class(
            "  userData: echo hi\n  kubelet: {maxPods: 42, clusterDNS: [10.0.0.10]}\n",
        ));
        assert!(data.starts_with("MIME-Version: 1.0\n"), "{data}");
        assert!(data.contains("Content-Type: application/node.eks.aws\n\napiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\n"), "{data}");
        assert!(data.contains("maxPods: 42"), "{data}");
        assert!(data.contains("clusterDNS:"), "{data}");
        assert!(
            data.contains(
                "Content-Type: text/x-shellscript; charset=\"us-ascii\"\n\necho hi\n--//--\n"
            ),
            "{data}"
        );
        // Other families do not read a NodeConfig; the settings are reported as not acted on instead.
        let mut bottlerocket = class("  kubelet: {maxPods: 42}\n");
        assert_eq!(bottlerocket.spec.family(), Some("AL2023"));
        bottlerocket.spec.ami_selector_terms[0].alias = Some("bottlerocket@latest".into());
        assert_eq!(bottlerocket.spec.family(), Some("Bottlerocket"));
        assert_eq!(user_data(&bottlerocket), "");
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
