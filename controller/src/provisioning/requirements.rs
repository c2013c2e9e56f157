//! Node selector requirements (In, NotIn, Exists, DoesNotExist, Gt, Lt) matched against label sets.

use std::collections::BTreeMap;

use crate::crds::NodeSelectorRequirementWithMinValues as Requirement;

/// Whether `labels` satisfy one requirement. A key the labels do not define satisfies only NotIn and
/// DoesNotExist, as in Kubernetes.
pub fn matches(req: &Requirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&req.key);
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| req.values.contains(v)),
        "NotIn" => value.is_none_or(|v| !req.values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" | "Gte" | "Lte" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                req.values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            match req.operator.as_str() {
                "Gt" => v > bound,
                "Lt" => v < bound,
                "Gte" => v >= bound,
                _ => v <= bound,
            }
        }
        _ => false,
    }
}

pub fn matches_all(reqs: &[Requirement], labels: &BTreeMap<String, String>) -> bool {
    reqs.iter().all(|r| matches(r, labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, op: &str, values: &[&str]) -> Requirement {
        Requirement {
            key: key.into(),
            operator: op.into(),
            values: values.iter().map(|s| s.to_string()).collect(),
            min_values: None,
        }
    }

    #[test]
    fn operators() {
        let labels: BTreeMap<String, String> = [
            ("cat".to_string(), "c".to_string()),
            ("cpu".to_string(), "8".to_string()),
        ]
        .into();
        assert!(matches(&req("cat", "In", &["c", "m"]), &labels));
        assert!(!matches(&req("cat", "NotIn", &["c"]), &labels));
        assert!(matches(&req("missing", "NotIn", &["c"]), &labels));
        assert!(matches(&req("cat", "Exists", &[]), &labels));
        assert!(matches(&req("missing", "DoesNotExist", &[]), &labels));
        assert!(matches(&req("cpu", "Gt", &["4"]), &labels));
        assert!(!matches(&req("cpu", "Lt", &["8"]), &labels));
        assert!(!matches(&req("cpu", "Bogus", &["8"]), &labels));
    }
}
