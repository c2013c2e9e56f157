//! NodePool validation the API server cannot do — a missing or unready EC2NodeClass, requirements no
//! instance type can meet, a disruption budget that does not parse — reported as Karpenter's
//! `ValidationSucceeded`, `NodeClassReady` and `Ready` conditions. A pool that is not Ready launches
//! nothing.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::conditions::Desired;
use crate::crds::{NodePool, labels};
use crate::instancetype::InstanceType;
use crate::kube::{Kind, ObjectKey};
use crate::run::Controller;
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
pub fn validate(pool: &NodePool, types: &[InstanceType]) -> Result<Requirements, Problem> {
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
    crate::disruption::budgets::allowed(
        budgets,
        crate::disruption::budgets::Reason::Empty,
        Default::default(),
        jiff::Timestamp::UNIX_EPOCH,
    )
    .map_err(|e| ("InvalidBudget", e))?;
    Ok(reqs)
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

impl Controller {
    /// Why the pool's EC2NodeClass cannot launch: missing, or resolved to nothing usable. None while it
    /// is fine or not yet resolved.
    fn node_class_problem(&self, pool: &NodePool) -> Option<Problem> {
        let class = &pool.spec.template.spec.node_class_ref.name;
        if !self.state.nodeclasses.contains_key(class) {
            return Some((
                "NodeClassNotFound",
                format!("spec.template.spec.nodeClassRef: EC2NodeClass `{class}` not found"),
            ));
        }
        let problem = self.class_cache.get(class)?.not_ready()?;
        Some((
            "NodeClassNotReady",
            format!("EC2NodeClass `{class}` is not ready: {problem}"),
        ))
    }

    /// Write each pool's conditions where they changed; a pool turning not Ready (or Ready again) is a
    /// trace line.
    pub(crate) async fn reconcile_nodepool_status(&mut self) {
        let pools: Vec<NodePool> = self
            .state
            .nodepools
            .values()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        for pool in pools {
            let name = pool.metadata.name.clone().unwrap_or_default();
            let invalid = validate(&pool, &self.instance_types).err();
            let class = self.node_class_problem(&pool);
            let class_known = self
                .class_cache
                .get(&pool.spec.template.spec.node_class_ref.name)
                .is_some();
            let class_ok = match &class {
                Some(_) => Some(false),
                None if class_known => Some(true),
                None => None,
            };
            let ready = match (&invalid, class_ok) {
                (Some(_), _) | (_, Some(false)) => Some(false),
                (None, Some(true)) => Some(true),
                (None, None) => None,
            };
            let why = invalid.clone().or(class.clone());
            let message = |p: &Option<Problem>| p.as_ref().map(|p| p.1.clone()).unwrap_or_default();
            let reason = |p: &Option<Problem>, default| p.as_ref().map_or(default, |p| p.0);
            let wanted: Vec<Desired> = vec![
                (
                    "ValidationSucceeded",
                    Some(invalid.is_none()),
                    reason(&invalid, "Invalid"),
                    message(&invalid),
                ),
                (
                    "NodeClassReady",
                    class_ok,
                    reason(&class, "AwaitingReconciliation"),
                    message(&class),
                ),
                (
                    "Ready",
                    ready,
                    reason(&why, "AwaitingReconciliation"),
                    message(&why),
                ),
            ];
            let old: Vec<Value> = pool
                .status
                .as_ref()
                .map(|s| {
                    s.conditions
                        .iter()
                        .filter_map(|c| serde_json::to_value(c).ok())
                        .collect()
                })
                .unwrap_or_default();
            let now = self.ctx.clock.now().to_string();
            let conditions = crate::conditions::merge(&old, &wanted, &now);
            let essence = |list: &[Value]| -> BTreeMap<String, (Value, Value, Value)> {
                list.iter()
                    .map(|c| {
                        (
                            c["type"].as_str().unwrap_or_default().to_string(),
                            (
                                c["status"].clone(),
                                c["reason"].clone(),
                                c["message"].clone(),
                            ),
                        )
                    })
                    .collect()
            };
            if essence(&old) == essence(&conditions) {
                continue;
            }
            let was_ready = old
                .iter()
                .find(|c| c["type"] == "Ready")
                .map(|c| c["status"].clone());
            match (&why, was_ready) {
                (Some((reason, message)), _) if ready == Some(false) => self.ctx.journal.record(
                    "nodepool",
                    format!(
                        "nodepool/{name} not ready ({reason}): {message}; launching nothing from it"
                    ),
                ),
                (_, Some(s)) if s == "False" && ready == Some(true) => self
                    .ctx
                    .journal
                    .record("nodepool", format!("nodepool/{name} ready again")),
                _ => {}
            }
            match self
                .ctx
                .kube
                .patch_status(
                    Kind::NodePool,
                    &ObjectKey::cluster(&name),
                    json!({"status": {"conditions": conditions}}),
                )
                .await
            {
                Ok(updated) => {
                    let _ = self
                        .state
                        .apply_event(Kind::NodePool, crate::kube::WatchEvent::Modified(updated));
                }
                Err(e) => self.ctx.journal.record(
                    "nodepool",
                    format!("nodepool/{name}: status not written: {e}; retrying next pass"),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::CapacityType;
    use crate::instancetype::Offering;

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
            }],
        }]
    }

    #[test]
    fn a_satisfiable_pool_passes_even_when_its_offerings_are_unavailable_now() {
        let p = pool(&format!(
            "{BASE}        - {{key: karpenter.k8s.aws/instance-category, operator: In, values: [m]}}\n"
        ));
        assert!(validate(&p, &catalog()).is_ok());
    }

    #[test]
    fn requirements_no_type_meets_are_named() {
        let p = pool(&format!(
            "{BASE}        - {{key: karpenter.k8s.aws/instance-category, operator: In, values: [z]}}\n"
        ));
        let (reason, message) = validate(&p, &catalog()).unwrap_err();
        assert_eq!(reason, "NoInstanceTypes");
        assert!(message.contains("instance-category"), "{message}");
        // Before the catalog is read only the static checks run.
        assert!(validate(&p, &[]).is_ok());
    }

    #[test]
    fn contradicting_requirements_on_a_label_every_node_has_are_impossible() {
        let p = pool(&format!(
            "{BASE}        - {{key: karpenter.sh/capacity-type, operator: In, values: [spot]}}\n        - {{key: karpenter.sh/capacity-type, operator: NotIn, values: [spot]}}\n"
        ));
        let (reason, message) = validate(&p, &[]).unwrap_err();
        assert_eq!(reason, "ImpossibleRequirements");
        assert!(message.contains("karpenter.sh/capacity-type"), "{message}");
    }

    #[test]
    fn a_budget_with_a_bad_cron_is_named() {
        let p = pool(&format!(
            "{BASE}        - {{key: kubernetes.io/arch, operator: In, values: [amd64]}}\n  disruption:\n    budgets:\n      - {{nodes: \"0\", schedule: \"0 25 * * *\", duration: 8h}}\n"
        ));
        let (reason, message) = validate(&p, &catalog()).unwrap_err();
        assert_eq!(reason, "InvalidBudget");
        assert!(
            message.starts_with("spec.disruption.budgets[0].schedule"),
            "{message}"
        );
    }
}
