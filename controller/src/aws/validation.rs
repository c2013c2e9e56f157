//! EC2NodeClass checks the controller makes itself (pure), for clusters whose CRDs are older or looser than
//! Dovetail's: what Karpenter's CEL rules and kubelet validation refuse, named by field.

use crate::crds::EC2NodeClass;

const ALIAS_FAMILIES: [&str; 6] = [
    "al2",
    "al2023",
    "bottlerocket",
    "windows2019",
    "windows2022",
    "windows2025",
];
use crate::crds::schema::EVICTION_SIGNALS;
const RESERVABLE: [&str; 4] = ["cpu", "memory", "ephemeral-storage", "pid"];

/// The first problem with the class's spec, as `field: what is wrong`.
pub fn validate(class: &EC2NodeClass) -> Result<(), String> {
    let spec = &class.spec;
    if spec.role.is_some() == spec.instance_profile.is_some() {
        return Err("spec: set exactly one of `role` and `instanceProfile`".into());
    }
    for (field, empty) in [
        (
            "spec.subnetSelectorTerms",
            spec.subnet_selector_terms.is_empty(),
        ),
        (
            "spec.securityGroupSelectorTerms",
            spec.security_group_selector_terms.is_empty(),
        ),
        ("spec.amiSelectorTerms", spec.ami_selector_terms.is_empty()),
    ] {
        if empty {
            return Err(format!("{field}: at least one term is required"));
        }
    }
    let mut has_alias = false;
    for (i, term) in spec.ami_selector_terms.iter().enumerate() {
        if let Some(alias) = &term.alias {
            has_alias = true;
            let family = alias.split('@').next().unwrap_or_default();
            if !alias.contains('@') || !ALIAS_FAMILIES.contains(&family) {
                return Err(format!(
                    "spec.amiSelectorTerms[{i}].alias: `{alias}` is not `family@version` with family one of {}",
                    ALIAS_FAMILIES.join(", ")
                ));
            }
        }
    }
    if !has_alias && spec.ami_family.is_none() {
        return Err(
            "spec.amiFamily: required when no amiSelectorTerms alias names the image family".into(),
        );
    }
    if spec.family() == Some("Bottlerocket")
        && let Some(own) = &spec.user_data
        && let Err(e) = own.parse::<toml_edit::DocumentMut>()
    {
        return Err(format!(
            "spec.userData: a Bottlerocket node reads TOML, and this is not: {}",
            e.to_string().lines().next().unwrap_or_default()
        ));
    }
    let Some(k) = &spec.kubelet else {
        return Ok(());
    };
    for (field, map) in [
        ("evictionHard", &k.eviction_hard),
        ("evictionSoft", &k.eviction_soft),
        ("evictionSoftGracePeriod", &k.eviction_soft_grace_period),
    ] {
        if let Some(bad) = map.keys().find(|s| !EVICTION_SIGNALS.contains(&s.as_str())) {
            return Err(format!(
                "spec.kubelet.{field}: `{bad}` is not an eviction signal ({})",
                EVICTION_SIGNALS.join(", ")
            ));
        }
    }
    for (field, map) in [
        ("kubeReserved", &k.kube_reserved),
        ("systemReserved", &k.system_reserved),
    ] {
        for (key, value) in map {
            if !RESERVABLE.contains(&key.as_str()) {
                return Err(format!(
                    "spec.kubelet.{field}: `{key}` cannot be reserved (only {})",
                    RESERVABLE.join(", ")
                ));
            }
            if (key != "pid" && crate::quantity::parse(value).is_err()) || value.starts_with('-') {
                return Err(format!(
                    "spec.kubelet.{field}[{key}]: `{value}` is not a non-negative quantity"
                ));
            }
        }
    }
    // A soft threshold and its grace period come in pairs.
    for (field, map, other, missing) in [
        (
            "evictionSoft",
            &k.eviction_soft,
            &k.eviction_soft_grace_period,
            "evictionSoftGracePeriod",
        ),
        (
            "evictionSoftGracePeriod",
            &k.eviction_soft_grace_period,
            &k.eviction_soft,
            "evictionSoft threshold",
        ),
    ] {
        if let Some(s) = map.keys().find(|s| !other.contains_key(*s)) {
            return Err(format!("spec.kubelet.{field}[{s}]: has no {missing}"));
        }
    }
    if let (Some(high), Some(low)) = (
        k.image_gc_high_threshold_percent,
        k.image_gc_low_threshold_percent,
    ) && high <= low
    {
        return Err(format!(
            "spec.kubelet.imageGCHighThresholdPercent: {high} must be greater than imageGCLowThresholdPercent {low}"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crds::ec2nodeclass::test_class as class;

    #[test]
    fn a_usual_class_passes_and_each_mistake_is_named() {
        assert_eq!(validate(&class("  role: r\n")), Ok(()));
        for (extra, field) in [
            ("  role: r\n  instanceProfile: p\n", "spec: set exactly one"),
            ("", "spec: set exactly one"),
            (
                "  role: r\n  kubelet: {evictionHard: {memory.avail: 1Gi}}\n",
                "spec.kubelet.evictionHard: `memory.avail`",
            ),
            (
                "  role: r\n  kubelet: {kubeReserved: {gpu: '1'}}\n",
                "spec.kubelet.kubeReserved: `gpu`",
            ),
            (
                "  role: r\n  kubelet: {evictionSoft: {memory.available: 5%}}\n",
                "spec.kubelet.evictionSoft[memory.available]",
            ),
            (
                "  role: r\n  kubelet: {imageGCHighThresholdPercent: 50, imageGCLowThresholdPercent: 60}\n",
                "spec.kubelet.imageGCHighThresholdPercent",
            ),
        ] {
            let e = validate(&class(extra)).expect_err(extra);
            assert!(e.starts_with(field), "{extra}: {e}");
        }
        // Bottlerocket reads TOML user data; a shell script is a mistake it would only show at boot.
        let mut br = class("  role: r\n  userData: \"#!/bin/bash\\necho hi\"\n");
        assert_eq!(validate(&br), Ok(()), "fine for AL2023");
        br.spec.ami_selector_terms[0].alias = Some("bottlerocket@latest".into());
        let e = validate(&br).err().unwrap_or_default();
        assert!(
            e.starts_with("spec.userData: a Bottlerocket node reads TOML"),
            "{e}"
        );
    }
}
