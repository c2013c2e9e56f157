//! Label selectors (`matchLabels` + `matchExpressions`) as the API server evaluates them.

use serde_json::Value;

/// Whether `labels` satisfy a LabelSelector. An empty or missing selector matches everything.
pub fn matches(selector: &Value, labels: &Value) -> bool {
    let ok_labels = selector["matchLabels"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let ok_exprs = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let actual = labels.get(key).and_then(Value::as_str);
            match e["operator"].as_str() {
                Some("In") => actual.is_some_and(|a| values.contains(&a)),
                Some("NotIn") => actual.is_none_or(|a| !values.contains(&a)),
                Some("Exists") => actual.is_some(),
                Some("DoesNotExist") => actual.is_none(),
                _ => false,
            }
        })
    });
    ok_labels && ok_exprs
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn labels_and_expressions() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(super::matches(
            &json!({"matchLabels": {"app": "web"}}),
            &labels
        ));
        assert!(!super::matches(
            &json!({"matchLabels": {"app": "db"}}),
            &labels
        ));
        assert!(super::matches(
            &json!({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}),
            &labels
        ));
        assert!(super::matches(
            &json!({"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}),
            &labels
        ));
        assert!(super::matches(&json!({}), &labels));
    }
}
