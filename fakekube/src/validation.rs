//! Kubernetes' own validation of built-in kinds, the part a manifest meets first: label keys and values,
//! replica counts, a Deployment's selector against its template, and node selector requirements (operator
//! and values) in pods' required node affinity. Messages follow the API server's (`field: Invalid value:
//! ...`, `Required value`, `Unsupported value`).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

static NAME: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$").ok());
static SUBDOMAIN: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$").ok()
});

fn name_part(s: &str) -> bool {
    s.len() <= 63 && NAME.as_ref().is_some_and(|r| r.is_match(s))
}

fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && SUBDOMAIN.as_ref().is_some_and(|r| r.is_match(s))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63 characters.
fn label_key_ok(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => dns_subdomain(prefix) && name_part(name),
        None => name_part(key),
    }
}

fn labels(v: &Value, field: &str) -> Result<(), String> {
    for (k, val) in v.as_object().into_iter().flatten() {
        if !label_key_ok(k) {
            return Err(format!(
                "{field}: Invalid value: {k:?}: a label key is an optional DNS subdomain prefix and '/', then a name of at most 63 alphanumeric characters, '-', '_' or '.', starting and ending alphanumeric"
            ));
        }
        let s = val.as_str().unwrap_or_default();
        if !s.is_empty() && !name_part(s) {
            return Err(format!(
                "{field}[{k}]: Invalid value: {s:?}: a label value is empty or at most 63 alphanumeric characters, '-', '_' or '.', starting and ending alphanumeric"
            ));
        }
    }
    Ok(())
}

fn node_selector_requirements(terms: &Value, field: &str) -> Result<(), String> {
    for (t, term) in terms.as_array().into_iter().flatten().enumerate() {
        for list in ["matchExpressions", "matchFields"] {
            for (i, r) in term[list].as_array().into_iter().flatten().enumerate() {
                let at = format!("{field}[{t}].{list}[{i}]");
                let op = r["operator"].as_str().unwrap_or_default();
                let values = r["values"].as_array().map_or(0, Vec::len);
                match op {
                    "In" | "NotIn" if values == 0 => {
                        return Err(format!(
                            "{at}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
                        ));
                    }
                    "Exists" | "DoesNotExist" if values > 0 => {
                        return Err(format!(
                            "{at}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                        ));
                    }
                    "Gt" | "Lt"
                        if values != 1
                            || r["values"][0]
                                .as_str()
                                .is_none_or(|v| v.parse::<i64>().is_err()) =>
                    {
                        return Err(format!(
                            "{at}.values: Required value: must be specified single value when `operator` is 'Lt' or 'Gt'"
                        ));
                    }
                    "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => {}
                    other => {
                        return Err(format!(
                            "{at}.operator: Unsupported value: {other:?}: supported values: \"DoesNotExist\", \"Exists\", \"Gt\", \"In\", \"Lt\", \"NotIn\""
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn pod_template(spec: &Value, meta: &Value, field: &str, meta_field: &str) -> Result<(), String> {
    labels(&meta["labels"], &format!("{meta_field}.labels"))?;
    node_selector_requirements(
        &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
        &format!(
            "{field}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
        ),
    )
}

/// What kube-apiserver's validation refuses in `obj` of a built-in `kind`, as its first error.
pub fn validate(kind: &str, obj: &Value) -> Result<(), String> {
    labels(&obj["metadata"]["labels"], "metadata.labels")?;
    match kind {
        "Pod" => pod_template(&obj["spec"], &Value::Null, "spec", "metadata"),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" => {
            if let Some(n) = obj["spec"]["replicas"].as_i64()
                && n < 0
            {
                return Err(format!(
                    "spec.replicas: Invalid value: {n}: must be greater than or equal to 0"
                ));
            }
            let template = &obj["spec"]["template"];
            pod_template(
                &template["spec"],
                &template["metadata"],
                "spec.template.spec",
                "spec.template.metadata",
            )?;
            let wanted = obj["spec"]["selector"]["matchLabels"].as_object();
            let have = template["metadata"]["labels"].as_object();
            if kind != "Job"
                && let Some(wanted) = wanted
                && !wanted
                    .iter()
                    .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
            {
                return Err(
                    "spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`"
                        .to_string(),
                );
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::validate;
    use serde_json::json;

    fn deployment(replicas: i64, selector: &str, label: &str) -> serde_json::Value {
        json!({"metadata": {"name": "web"}, "spec": {"replicas": replicas,
            "selector": {"matchLabels": {"app": selector}},
            "template": {"metadata": {"labels": {"app": label}}, "spec": {"containers": []}}}})
    }

    #[test]
    fn what_the_api_server_refuses_is_named() {
        assert_eq!(validate("Deployment", &deployment(2, "web", "web")), Ok(()));
        assert!(
            validate("Deployment", &deployment(-1, "web", "web"))
                .unwrap_err()
                .starts_with("spec.replicas: Invalid value: -1")
        );
        assert!(
            validate("Deployment", &deployment(1, "web", "api"))
                .unwrap_err()
                .starts_with("spec.template.metadata.labels")
        );
        let bad_key = json!({"metadata": {"name": "p", "labels": {"-team": "x"}}, "spec": {}});
        assert!(
            validate("Pod", &bad_key)
                .unwrap_err()
                .starts_with("metadata.labels: Invalid value: \"-team\"")
        );
        let in_empty = json!({"metadata": {"name": "p"}, "spec": {"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": []}]}]}}}}});
        assert_eq!(
            validate("Pod", &in_empty).unwrap_err(),
            "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        );
        assert!(validate("Pod", &json!({"metadata": {"name": "p", "labels": {"example.com/team": "a.b-c"}}, "spec": {}})).is_ok());
    }
}
