//! NodePool validation the API server cannot do (pure): requirements that do not parse, that no value of
//! a label every node has can meet, or that no catalog type meets; a disruption budget that does not parse.

use crate::cloudprovider::InstanceType;
use crate::crds::{NodePool, labels};
use crate::scheduling::Requirements;

/// Labels every node has: a requirement on one of them that admits no value can never be met.
const ALWAYS_SET: [&str; 5] = [
    labels::INSTANCE_TYPE,
    labels::ZONE,
    labels::CAPACITY_TYPE,
    labels::ARCH,
    labels::OS,
];

/// A failed check: the condition's reason and a message naming the field.
pub type Problem = (&'static str, String);

/// The static checks of a pool's spec; `types` is the instance-type catalog (empty until it is read,
/// when the catalog check waits). Returns the parsed requirements, so callers parse them once.
pub fn validate(
    pool: &NodePool,
    types: &[InstanceType],
    gates: &crate::context::FeatureGates,
) -> Result<Requirements, Problem> {
    fields(pool).map_err(|e| ("InvalidField", e))?;
    if pool.spec.replicas.is_some() && !gates.static_capacity {
        return Err((
            "StaticCapacityDisabled",
            "spec.replicas: a static NodePool needs the StaticCapacity feature gate (FEATURE_GATES=StaticCapacity=true)".into(),
        ));
    }
    let field = "spec.template.spec.requirements";
    let reqs = Requirements::from_node_selector(&pool.spec.template.spec.requirements)
        .map_err(|e| ("InvalidRequirements", format!("{field}: {e}")))?;
    for key in ALWAYS_SET {
        if let Some(r) = reqs.get(key)
            && r.does_not_exist()
        {
            return Err((
                "ImpossibleRequirements",
                format!("{field}: no value of `{key}` satisfies every requirement on it"),
            ));
        }
    }
    if !types.is_empty() && !types.iter().any(|it| type_possible(it, &reqs)) {
        return Err((
            "NoInstanceTypes",
            format!(
                "{field}: no instance type in the catalog meets them ({})",
                reqs.0
                    .values()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let budgets = pool
        .spec
        .disruption
        .as_ref()
        .map(|d| d.budgets.as_slice())
        .unwrap_or_default();
    // Evaluating every budget parses all of them; the moment and counts do not matter here.
    super::budgets::allowed(
        budgets,
        super::budgets::Reason::Empty,
        Default::default(),
        jiff::Timestamp::UNIX_EPOCH,
    )
    .map_err(|e| ("InvalidBudget", e))?;
    Ok(reqs)
}

/// What the CRD's schema says of single fields, checked again here for clusters whose CRDs are older or
/// looser than Dovetail's: a value outside its enum or pattern is an error, never a silent default.
fn fields(pool: &NodePool) -> Result<(), String> {
    use crate::crds::nodepool::policy;
    let spec = &pool.spec;
    if spec.replicas.is_some_and(|r| r < 0) {
        return Err("spec.replicas: must be 0 or more".into());
    }
    if let Some(d) = &spec.disruption {
        if let Some(p) = d.consolidation_policy.as_deref()
            && !policy::ALL.contains(&p)
        {
            return Err(format!(
                "spec.disruption.consolidationPolicy: `{p}` is not one of {}",
                policy::ALL.join(", ")
            ));
        }
        if let Some(after) = d.consolidate_after.as_deref() {
            crate::duration::parse_or_never(after)
                .map_err(|e| format!("spec.disruption.consolidateAfter: {e}"))?;
        }
        for (i, b) in d.budgets.iter().enumerate() {
            if let Some(r) = b
                .reasons
                .iter()
                .find(|r| !["Underutilized", "Empty", "Drifted"].contains(&r.as_str()))
            {
                return Err(format!(
                    "spec.disruption.budgets[{i}].reasons: `{r}` is not one of Underutilized, Empty, Drifted"
                ));
            }
        }
    }
    let t = &spec.template.spec;
    for (field, value) in [
        ("expireAfter", &t.expire_after),
        ("terminationGracePeriod", &t.termination_grace_period),
    ] {
        if let Some(v) = value.as_deref() {
            crate::duration::parse_or_never(v)
                .map_err(|e| format!("spec.template.spec.{field}: {e}"))?;
        }
    }
    for (list, taints) in [("taints", &t.taints), ("startupTaints", &t.startup_taints)] {
        for (i, taint) in taints.iter().enumerate() {
            if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&taint.effect.as_str()) {
                return Err(format!(
                    "spec.template.spec.{list}[{i}].effect: `{}` is not one of NoSchedule, PreferNoSchedule, NoExecute",
                    taint.effect
                ));
            }
        }
    }
    Ok(())
}

/// Whether some offering of the type meets the requirements, available now or not (an ICE'd offering
/// comes back; a requirement that rules out every type does not).
fn type_possible(it: &InstanceType, reqs: &Requirements) -> bool {
    let labels_ok = reqs.0.values().all(|r| match it.labels.get(&r.key) {
        Some(v) => r.has(v),
        None => true,
    });
    let zone = reqs.get(labels::ZONE);
    let ct = reqs.get(labels::CAPACITY_TYPE);
    labels_ok
        && it.offerings.iter().any(|o| {
            zone.is_none_or(|r| r.has(&o.zone))
                && ct.is_none_or(|r| r.has(o.capacity_type.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates() -> crate::context::FeatureGates {
        crate::context::FeatureGates::default()
    }
    use std::collections::BTreeMap;

    use crate::cloudprovider::{CapacityType, Offering};

    fn pool(yaml: &str) -> NodePool {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const BASE: &str = "apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: p}
spec:
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      requirements:
";

    fn catalog() -> Vec<InstanceType> {
        let mut labels = BTreeMap::new();
        labels.insert(labels::INSTANCE_CATEGORY.to_string(), "m".to_string());
        labels.insert(labels::ARCH.to_string(), "amd64".to_string());
        vec![InstanceType {
            name: "m5.large".into(),
            labels,
            capacity: Default::default(),
            allocatable: Default::default(),
            offerings: vec![Offering {
                zone: "us-east-1a".into(),
                capacity_type: CapacityType::Spot,
                price: 0.03,
                available: false,
                reservation: None,
            }],
        }]
    }

    #[test]
    fn a_satisfiable_pool_passes_even_when_its_offerings_are_unavailable_now() {
        let p = pool(&format!(
            "{BASE}        - {{key: karpenter.k8s.aws/instance-category, operator: In, values: [m]}}\n"
        ));
        assert!(validate(&p, &catalog(), &gates()).is_ok());
    }

    #[test]
    fn requirements_no_type_meets_are_named() {
        let p = pool(&format!(
            "{BASE}        - {{key: karpenter.k8s.aws/instance-category, operator: In, values: [z]}}\n"
        ));
        let (reason, message) = validate(&p, &catalog(), &gates()).unwrap_err();
        assert_eq!(reason, "NoInstanceTypes");
        assert!(message.contains("instance-category"), "{message}");
        // Before the catalog is read only the static checks run.
        assert!(validate(&p, &[], &gates()).is_ok());
    }

    #[test]
    fn contradicting_requirements_on_a_label_every_node_has_are_impossible() {
        let p = pool(&format!(
            "{BASE}        - {{key: karpenter.sh/capacity-type, operator: In, values: [spot]}}\n        - {{key: karpenter.sh/capacity-type, operator: NotIn, values: [spot]}}\n"
        ));
        let (reason, message) = validate(&p, &[], &gates()).unwrap_err();
        assert_eq!(reason, "ImpossibleRequirements");
        assert!(message.contains("karpenter.sh/capacity-type"), "{message}");
    }

    #[test]
    fn enum_typos_are_errors_naming_the_field() {
        let base =
            format!("{BASE}        - {{key: kubernetes.io/arch, operator: In, values: [amd64]}}\n");
        let p = pool(&format!(
            "{base}  disruption:\n    consolidationPolicy: WhenEmtpy\n"
        ));
        let (reason, message) = validate(&p, &[], &gates()).unwrap_err();
        assert_eq!(reason, "InvalidField");
        assert_eq!(
            message,
            "spec.disruption.consolidationPolicy: `WhenEmtpy` is not one of WhenEmpty, WhenEmptyOrUnderutilized, Balanced"
        );
        let p = pool(&format!(
            "{base}  disruption:\n    consolidationPolicy: Balanced\n"
        ));
        assert!(validate(&p, &[], &gates()).is_ok());
        let p = pool(&format!("{base}  replicas: 3\n"));
        let (reason, message) = validate(&p, &[], &gates()).unwrap_err();
        assert_eq!(reason, "StaticCapacityDisabled");
        assert!(
            message.contains("FEATURE_GATES=StaticCapacity=true"),
            "{message}"
        );
        let on = crate::context::FeatureGates {
            static_capacity: true,
            ..gates()
        };
        assert!(validate(&p, &[], &on).is_ok());
        let p = pool(&format!("{base}  replicas: -1\n"));
        assert_eq!(
            validate(&p, &[], &on).unwrap_err().1,
            "spec.replicas: must be 0 or more"
        );
        let p = pool(&format!(
            "{base}      taints: [{{key: a, effect: NoScheduel}}]\n"
        ));
        assert!(
            validate(&p, &[], &gates())
                .unwrap_err()
                .1
                .starts_with("spec.template.spec.taints[0].effect")
        );
    }

    #[test]
    fn a_budget_with_a_bad_cron_is_named() {
        let p = pool(&format!(
            "{BASE}        - {{key: kubernetes.io/arch, operator: In, values: [amd64]}}\n  disruption:\n    budgets:\n      - {{nodes: \"0\", schedule: \"0 25 * * *\", duration: 8h}}\n"
        ));
        let (reason, message) = validate(&p, &catalog(), &gates()).unwrap_err();
        assert_eq!(reason, "InvalidBudget");
        assert!(
            message.starts_with("spec.disruption.budgets[0].schedule"),
            "{message}"
        );
    }
}
