//! EC2 instance types into the scheduler's instance types: labels, allocatable after Karpenter's AWS
//! overhead formulas, and priced offerings.

use std::collections::BTreeMap;

use super::cloud::{CapacityType, InstanceTypeInfo, InstanceTypeOffering, SpotPrice};
use crate::cloudprovider::{InstanceType, Offering};
use crate::crds::{EC2NodeClass, labels};
use crate::quantity::Milli;
use crate::resources::{CPU, EPHEMERAL_STORAGE, MEMORY, PODS, Resources};

const MIB: i128 = 1024 * 1024;

/// Pods the VPC CNI can address: ENIs x (IPv4 per ENI - 1) + 2.
pub fn eni_limited_pods(info: &InstanceTypeInfo) -> i128 {
    info.max_enis as i128 * (info.ipv4_per_eni as i128 - 1) + 2
}

/// Karpenter's default kube-reserved CPU: 6% of the first core, 1% of the second, 0.5% of cores 3-4 and
/// 0.25% of the rest, each band rounded down to whole millicores.
fn kube_reserved_millicores(vcpu: u32) -> i128 {
    let cores = vcpu as i128;
    // (first core of the band, last core, per-mille-of-a-core reserved per core in tenths of a millicore)
    let bands: [(i128, i128, i128); 4] = [(0, 1, 600), (1, 2, 100), (2, 4, 50), (4, i128::MAX, 25)];
    bands
        .iter()
        .map(|&(lo, hi, tenth_milli_per_core)| {
            let in_band = cores.min(hi).saturating_sub(lo).max(0);
            in_band * tenth_milli_per_core / 10
        })
        .sum()
}

/// Security-groups-for-pods branch interfaces, as the VPC resource controller advertises them on a node.
pub const POD_ENI: &str = "vpc.amazonaws.com/pod-eni";

/// Whether the image family sizes nodes like Amazon Linux (kube-reserved memory from the ENI-limited pod
/// count, `podsPerCore` honoured) or like Bottlerocket (from the node's max pods; no `podsPerCore`).
fn bottlerocket(class: Option<&EC2NodeClass>) -> bool {
    class.is_some_and(|c| c.spec.family() == Some("Bottlerocket"))
}

/// An eviction threshold as memory or storage held back: a percentage of capacity (100% turns the
/// threshold off) or a quantity.
fn eviction(capacity: Milli, value: &str) -> Milli {
    match value.strip_suffix('%') {
        Some(p) => {
            let pct: f64 = p.parse().unwrap_or(0.0);
            let pct = if pct >= 100.0 { 0.0 } else { pct };
            Milli::from_units((capacity.units() as f64 / 100.0 * pct).ceil() as i128)
        }
        None => crate::quantity::parse(value).unwrap_or_default(),
    }
}

/// How many EBS volumes pods on a new node of this type can attach, as the EBS CSI driver will report it
/// in the node's CSINode: the type's own limit less the root volume; on a shared-limit (Nitro) type also
/// less the primary network interface and each NVMe instance-store disk, within the Nitro cap of 28 slots.
/// None when EC2 does not say (no limit is assumed, as the scheduler does without a CSINode count).
pub fn ebs_volume_limit(info: &InstanceTypeInfo) -> Option<u32> {
    const NITRO_SLOTS: u32 = 28;
    let ebs = info.ebs_attachments?;
    // Dedicated limits are the volumes' own; Xen types do not count network interfaces against theirs.
    let slots = if ebs.dedicated || info.hypervisor == "xen" {
        ebs.maximum
    } else {
        ebs.maximum
            .min(NITRO_SLOTS)
            .saturating_sub(1 + info.instance_store_disks)
    };
    Some(slots.saturating_sub(1))
}

/// Capacity and allocatable the way Karpenter's AWS provider estimates them before a node exists, under the
/// node class's kubelet settings (`maxPods`, `podsPerCore`, `kubeReserved`, `systemReserved`,
/// `evictionHard`) when it has any.
pub fn capacity_and_allocatable(
    info: &InstanceTypeInfo,
    class: Option<&EC2NodeClass>,
) -> (Resources, Resources) {
    let kubelet = class.and_then(|c| c.spec.kubelet.as_ref());
    let bottlerocket = bottlerocket(class);
    let eni_pods = eni_limited_pods(info);
    let mut pods = kubelet
        .and_then(|k| k.max_pods)
        .map_or(eni_pods, i128::from);
    if let Some(per_core) = kubelet.and_then(|k| k.pods_per_core).filter(|p| *p > 0)
        && !bottlerocket
    {
        pods = pods.min(i128::from(per_core) * info.vcpu as i128);
    }
    let mut mem_mib = info.memory_mib as i128;
    if info.arch == "arm64" {
        mem_mib -= 64;
    }
    let vm_overhead_mib = (mem_mib * 75 + 999) / 1000;
    let mem_capacity_mib = mem_mib - vm_overhead_mib;
    let storage = Milli::from_units(20 * 1024 * MIB);

    let mut capacity = Resources::default();
    capacity.set(CPU, Milli(info.vcpu as i128 * 1000));
    capacity.set(MEMORY, Milli::from_units(mem_capacity_mib * MIB));
    capacity.set(PODS, Milli::from_units(pods));
    capacity.set(EPHEMERAL_STORAGE, storage);
    if info.gpu_count > 0 {
        capacity.set("nvidia.com/gpu", Milli::from_units(info.gpu_count as i128));
    }
    if info.branch_interfaces > 0 {
        capacity.set(POD_ENI, Milli::from_units(info.branch_interfaces as i128));
    }
    if let Some(volumes) = ebs_volume_limit(info) {
        capacity.set(
            crate::resources::EBS_ATTACHMENTS,
            Milli::from_units(i128::from(volumes)),
        );
    }

    // kube-reserved: CPU by bands, 11 MiB per pod + 255 MiB (pods counted as the ENI limit on Amazon
    // Linux, as the node's max pods on Bottlerocket), 1 GiB of disk; each overridden by `kubeReserved`.
    let memory_pods = if bottlerocket { pods } else { eni_pods };
    let mut kube = Resources::default();
    kube.set(CPU, Milli(kube_reserved_millicores(info.vcpu)));
    kube.set(MEMORY, Milli::from_units((11 * memory_pods + 255) * MIB));
    kube.set(EPHEMERAL_STORAGE, Milli::from_units(1024 * MIB));
    let mut system = Resources::default();
    // Eviction: 100 MiB of memory and 10% of the root volume held back, or what `evictionHard` says.
    let mut evict = Resources::default();
    evict.set(MEMORY, Milli::from_units(100 * MIB));
    evict.set(EPHEMERAL_STORAGE, eviction(storage, "10%"));
    if let Some(k) = kubelet {
        for (reserved, map) in [
            (&mut kube, &k.kube_reserved),
            (&mut system, &k.system_reserved),
        ] {
            for (name, value) in map {
                if name != "pid"
                    && let Ok(q) = crate::quantity::parse(value)
                {
                    reserved.set(name, q);
                }
            }
        }
        if let Some(v) = k.eviction_hard.get("memory.available") {
            evict.set(MEMORY, eviction(capacity.get(MEMORY), v));
        }
        if let Some(v) = k.eviction_hard.get("nodefs.available") {
            evict.set(EPHEMERAL_STORAGE, eviction(storage, v));
        }
    }

    let mut allocatable = capacity.clone();
    allocatable.sub(&kube);
    allocatable.sub(&system);
    allocatable.sub(&evict);
    (capacity, allocatable)
}

fn type_labels(info: &InstanceTypeInfo) -> BTreeMap<String, String> {
    let (family, size) = info.name.split_once('.').unwrap_or((&info.name, ""));
    let category: String = family
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let generation: String = family
        .chars()
        .skip_while(|c| c.is_ascii_alphabetic())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    let mut l = BTreeMap::new();
    l.insert(labels::INSTANCE_TYPE.to_string(), info.name.clone());
    l.insert(labels::ARCH.to_string(), info.arch.clone());
    l.insert(labels::OS.to_string(), "linux".to_string());
    l.insert(labels::INSTANCE_FAMILY.to_string(), family.to_string());
    l.insert(labels::INSTANCE_SIZE.to_string(), size.to_string());
    l.insert(labels::INSTANCE_CATEGORY.to_string(), category);
    l.insert(labels::INSTANCE_GENERATION.to_string(), generation);
    l.insert(labels::INSTANCE_CPU.to_string(), info.vcpu.to_string());
    l.insert(
        labels::INSTANCE_MEMORY.to_string(),
        info.memory_mib.to_string(),
    );
    if !info.hypervisor.is_empty() {
        l.insert(
            labels::INSTANCE_HYPERVISOR.to_string(),
            info.hypervisor.clone(),
        );
    }
    if info.gpu_count > 0 {
        l.insert(
            labels::INSTANCE_GPU_COUNT.to_string(),
            info.gpu_count.to_string(),
        );
        l.insert(labels::INSTANCE_GPU_NAME.to_string(), info.gpu_name.clone());
    }
    l
}

/// Join DescribeInstanceTypes, offerings and prices into the scheduler's instance types, sorted by name.
pub fn build(
    infos: &[InstanceTypeInfo],
    offerings: &[InstanceTypeOffering],
    on_demand: &BTreeMap<String, f64>,
    spot: &[SpotPrice],
) -> Vec<InstanceType> {
    let mut zones_by_type: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for o in offerings {
        zones_by_type
            .entry(&o.instance_type)
            .or_default()
            .push(&o.zone);
    }
    let spot_by: BTreeMap<(&str, &str), f64> = spot
        .iter()
        .map(|s| ((s.instance_type.as_str(), s.zone.as_str()), s.price))
        .collect();
    let mut out: Vec<InstanceType> = infos
        .iter()
        .filter_map(|info| {
            let od_price = *on_demand.get(&info.name)?;
            let mut zones = zones_by_type
                .get(info.name.as_str())
                .cloned()
                .unwrap_or_default();
            zones.sort_unstable();
            zones.dedup();
            let mut offers = Vec::new();
            for zone in zones {
                if info
                    .supported_usage_classes
                    .contains(&CapacityType::OnDemand)
                {
                    offers.push(Offering {
                        zone: zone.to_string(),
                        capacity_type: CapacityType::OnDemand,
                        price: od_price,
                        available: true,
                        reservation: None,
                    });
                }
                if info.supported_usage_classes.contains(&CapacityType::Spot)
                    && let Some(price) = spot_by.get(&(info.name.as_str(), zone))
                {
                    offers.push(Offering {
                        zone: zone.to_string(),
                        capacity_type: CapacityType::Spot,
                        price: *price,
                        available: true,
                        reservation: None,
                    });
                }
            }
            let (capacity, allocatable) = capacity_and_allocatable(info, None);
            Some(InstanceType {
                name: info.name.clone(),
                labels: type_labels(info),
                capacity,
                allocatable,
                offerings: offers,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantity::parse;

    fn info(
        name: &str,
        arch: &str,
        vcpu: u32,
        memory_mib: u64,
        enis: u32,
        ips: u32,
    ) -> InstanceTypeInfo {
        InstanceTypeInfo {
            name: name.into(),
            arch: arch.into(),
            vcpu,
            memory_mib,
            hypervisor: "nitro".into(),
            max_enis: enis,
            ipv4_per_eni: ips,
            gpu_count: 0,
            gpu_name: String::new(),
            supported_usage_classes: vec![CapacityType::OnDemand, CapacityType::Spot],
            branch_interfaces: 0,
            ebs_attachments: Some(crate::aws::cloud::EbsAttachments {
                maximum: 28,
                dedicated: false,
            }),
            instance_store_disks: 0,
        }
    }

    #[test]
    fn ebs_room_is_what_the_csi_driver_will_report() {
        use crate::aws::cloud::EbsAttachments;
        let with = |hypervisor: &str, maximum, dedicated, disks| InstanceTypeInfo {
            hypervisor: hypervisor.into(),
            ebs_attachments: Some(EbsAttachments { maximum, dedicated }),
            instance_store_disks: disks,
            ..info("x.large", "amd64", 2, 8192, 3, 10)
        };
        // m5.large: 28 shared slots less the primary ENI and the root volume.
        assert_eq!(ebs_volume_limit(&with("nitro", 28, false, 0)), Some(26));
        // g5.xlarge: and its NVMe instance-store disk.
        assert_eq!(ebs_volume_limit(&with("nitro", 28, false, 1)), Some(25));
        // m5.metal reports 31, within the Nitro cap of 28.
        assert_eq!(ebs_volume_limit(&with("", 31, false, 0)), Some(26));
        // m7i.large: a dedicated 32, less the root volume only.
        assert_eq!(ebs_volume_limit(&with("nitro", 32, true, 0)), Some(31));
        // p3 (Xen): 39 less the root volume.
        assert_eq!(ebs_volume_limit(&with("xen", 39, false, 0)), Some(38));
        let unknown = InstanceTypeInfo {
            ebs_attachments: None,
            ..info("x.large", "amd64", 2, 8192, 3, 10)
        };
        assert_eq!(ebs_volume_limit(&unknown), None);
        let (capacity, _) = capacity_and_allocatable_of(&with("nitro", 28, false, 0));
        assert_eq!(
            capacity.get(crate::resources::EBS_ATTACHMENTS),
            Milli::from_units(26)
        );
        assert!(
            !capacity
                .to_quantities()
                .contains_key(crate::resources::EBS_ATTACHMENTS),
            "never written to the API"
        );
    }

    fn capacity_and_allocatable_of(info: &InstanceTypeInfo) -> (Resources, Resources) {
        capacity_and_allocatable(info, None)
    }

    // Expected figures are the allocatable values Karpenter documents for these types.
    #[test]
    fn allocatable_matches_karpenters_published_figures() {
        let (_, a) = capacity_and_allocatable_of(&info("m5.large", "amd64", 2, 8192, 3, 10));
        assert_eq!(a.get(CPU), Milli(1930));
        assert_eq!(a.get(MEMORY), parse("6903Mi").unwrap());
        assert_eq!(a.get(PODS), Milli::from_units(29));
        assert_eq!(a.get(EPHEMERAL_STORAGE), parse("17Gi").unwrap());

        let (_, a) = capacity_and_allocatable_of(&info("c5.xlarge", "amd64", 4, 8192, 4, 15));
        assert_eq!(a.get(CPU), Milli(3920));
        assert_eq!(a.get(PODS), Milli::from_units(58));
        assert_eq!(a.get(MEMORY), parse("6584Mi").unwrap());
    }

    #[test]
    fn arm64_loses_64mib_before_overhead() {
        let (_, amd) = capacity_and_allocatable_of(&info("x", "amd64", 2, 8192, 3, 10));
        let (_, arm) = capacity_and_allocatable_of(&info("x", "arm64", 2, 8192, 3, 10));
        assert!(arm.get(MEMORY) < amd.get(MEMORY));
    }
}
