//! Fields of the v1 API that Dovetail accepts but does not act on yet. Each one set in an object is named in
//! its `ValidationSucceeded` condition and once in the trace, so that nothing a user wrote is silently dropped.

use super::{EC2NodeClassSpec, NodePoolSpec};

/// The set fields of a NodePool that Dovetail does not act on (none today: `replicas` is acted on behind
/// the `StaticCapacity` gate, and refused by `nodepool::validation` with the gate off).
pub fn nodepool(_spec: &NodePoolSpec) -> Vec<&'static str> {
    Vec::new()
}

/// The set fields of an EC2NodeClass that Dovetail does not act on (Karpenter's defaults are not counted).
pub fn ec2nodeclass(spec: &EC2NodeClassSpec) -> Vec<&'static str> {
    let mut out = Vec::new();
    // Kubelet settings reach nodes through each family's user data (`aws::userdata`); a Custom image gets
    // the class's `userData` alone, so they size Dovetail's estimate but never reach its kubelet.
    // Bottlerocket has no pods-per-core setting.
    if spec.family() == Some("Bottlerocket")
        && spec
            .kubelet
            .as_ref()
            .is_some_and(|k| k.pods_per_core.is_some())
    {
        out.push("spec.kubelet.podsPerCore");
    }
    let custom = !matches!(
        spec.family(),
        Some("AL2023" | "AL2" | "Bottlerocket" | "Windows2019" | "Windows2022" | "Windows2025")
    );
    if let Some(k) = spec.kubelet.as_ref().filter(|_| custom) {
        let set = [
            ("spec.kubelet.clusterDNS", !k.cluster_dns.is_empty()),
            ("spec.kubelet.maxPods", k.max_pods.is_some()),
            ("spec.kubelet.podsPerCore", k.pods_per_core.is_some()),
            ("spec.kubelet.systemReserved", !k.system_reserved.is_empty()),
            ("spec.kubelet.kubeReserved", !k.kube_reserved.is_empty()),
            ("spec.kubelet.evictionHard", !k.eviction_hard.is_empty()),
            ("spec.kubelet.evictionSoft", !k.eviction_soft.is_empty()),
            (
                "spec.kubelet.evictionSoftGracePeriod",
                !k.eviction_soft_grace_period.is_empty(),
            ),
            (
                "spec.kubelet.evictionMaxPodGracePeriod",
                k.eviction_max_pod_grace_period.is_some(),
            ),
            (
                "spec.kubelet.imageGCHighThresholdPercent",
                k.image_gc_high_threshold_percent.is_some(),
            ),
            (
                "spec.kubelet.imageGCLowThresholdPercent",
                k.image_gc_low_threshold_percent.is_some(),
            ),
            ("spec.kubelet.cpuCFSQuota", k.cpu_cfs_quota.is_some()),
        ];
        out.extend(set.iter().filter(|(_, on)| *on).map(|(f, _)| *f));
    }
    // Launch template settings (metadata options, monitoring, the primary interface, CPU options, block
    // devices), `context`, `ssmParameter` and every family's user data are acted on; what is left needs
    // what Dovetail lacks yet: instance-store RAID, EFA interfaces, placement groups. Capacity reservation
    // terms are acted on with the ReservedCapacity gate on (`aws::nodeclass` drops them from this list).
    let set = [
        (
            "spec.instanceStorePolicy",
            spec.instance_store_policy.is_some(),
        ),
        (
            "spec.networkInterfaces",
            !spec.network_interfaces.is_empty(),
        ),
        (
            "spec.placementGroupSelector",
            spec.placement_group_selector.is_some(),
        ),
        (
            "spec.capacityReservationSelectorTerms",
            !spec.capacity_reservation_selector_terms.is_empty(),
        ),
    ];
    out.extend(set.iter().filter(|(_, on)| *on).map(|(f, _)| *f));
    out
}

/// The sentence a condition and the trace carry; empty when every field is acted on.
pub fn sentence(fields: &[&str]) -> String {
    if fields.is_empty() {
        String::new()
    } else {
        format!("not acted on by Dovetail: {}", fields.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_class_has_nothing_unacted_and_each_extra_is_named() {
        let mut class = super::super::ec2nodeclass::test_class(
            "  role: r\n  metadataOptions: {httpEndpoint: enabled, httpProtocolIPv6: disabled, httpPutResponseHopLimit: 1, httpTokens: required}\n",
        );
        assert!(ec2nodeclass(&class.spec).is_empty());
        class.spec.ip_prefix_count = Some(1);
        class.spec.detailed_monitoring = Some(true);
        class.spec.instance_store_policy = Some("RAID0".into());
        class.spec.kubelet = Some(super::super::ec2nodeclass::KubeletConfiguration {
            eviction_max_pod_grace_period: Some(60),
            ..Default::default()
        });
        // AL2023 nodes get the kubelet settings (NodeConfig user data).
        assert_eq!(
            sentence(&ec2nodeclass(&class.spec)),
            "not acted on by Dovetail: spec.instanceStorePolicy"
        );
        // Bottlerocket nodes get them too (TOML), all but pods-per-core, which Bottlerocket lacks.
        class.spec.ami_selector_terms[0].alias = Some("bottlerocket@latest".into());
        assert_eq!(
            sentence(&ec2nodeclass(&class.spec)),
            "not acted on by Dovetail: spec.instanceStorePolicy"
        );
        if let Some(k) = class.spec.kubelet.as_mut() {
            k.pods_per_core = Some(4);
        }
        assert_eq!(
            sentence(&ec2nodeclass(&class.spec)),
            "not acted on by Dovetail: spec.kubelet.podsPerCore, spec.instanceStorePolicy"
        );
        // A Custom image boots from the class's userData alone.
        class.spec.ami_selector_terms[0].alias = None;
        class.spec.ami_selector_terms[0].id = Some("ami-1".into());
        class.spec.ami_family = Some("Custom".into());
        assert_eq!(
            sentence(&ec2nodeclass(&class.spec)),
            "not acted on by Dovetail: spec.kubelet.podsPerCore, spec.kubelet.evictionMaxPodGracePeriod, spec.instanceStorePolicy"
        );
    }
}
