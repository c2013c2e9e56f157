//! What the API server does to an object on its way into the store besides storing it: resource quantities
//! are decoded into their typed form and written back canonically (an unquoted `cpu: 1` is one cpu, `1000m`
//! comes back as `1`), a container's requests default to its limits, and quantities that are not quantities,
//! negative, or requests above limits are refused naming the field.

use serde_json::{Value, json};

use crate::quantity::{canonical, milli};

/// Normalise `obj` of `kind` in place, or say which field is invalid (the API server's 422).
pub fn admit(kind: &str, obj: &mut Value) -> Result<(), String> {
    crate::validation::validate(kind, obj)?;
    // Only fields that are there are touched: indexing a JSON object mutably would add nulls.
    match kind {
        "Pod" => match obj.pointer_mut("/spec") {
            Some(spec) => pod_spec(spec, "spec", true),
            None => Ok(()),
        },
        "Deployment" | "DaemonSet" | "Job" | "ReplicaSet" => {
            match obj.pointer_mut("/spec/template/spec") {
                // Defaulting is the Pod's: a template keeps its requests as written.
                Some(spec) => pod_spec(spec, "spec.template.spec", false),
                None => Ok(()),
            }
        }
        "Node" => {
            for list in ["capacity", "allocatable"] {
                if let Some(l) = obj.pointer_mut(&format!("/status/{list}")) {
                    quantities(l, &format!("status.{list}"))?;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Decode and re-encode every quantity of a resource list; a number is read as the quantity it spells.
fn quantities(list: &mut Value, field: &str) -> Result<(), String> {
    let Some(map) = list.as_object_mut() else {
        return Ok(());
    };
    for (name, q) in map.iter_mut() {
        let text = match &*q {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(format!(
                    "{field}[{name}]: Invalid value: {other}: a quantity is a string or a number"
                ));
            }
        };
        let Some(stored) = canonical(&text) else {
            return Err(format!(
                "{field}[{name}]: Invalid value: \"{text}\": quantities must match the regular expression \
                 '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
            ));
        };
        if stored.starts_with('-') {
            return Err(format!(
                "{field}[{name}]: Invalid value: \"{text}\": must be greater than or equal to 0"
            ));
        }
        *q = json!(stored);
    }
    Ok(())
}

fn pod_spec(spec: &mut Value, field: &str, default_requests: bool) -> Result<(), String> {
    for group in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(group).and_then(Value::as_array_mut) else {
            continue;
        };
        for (i, c) in containers.iter_mut().enumerate() {
            let at = format!("{field}.{group}[{i}].resources");
            let Some(resources) = c.get_mut("resources") else {
                continue;
            };
            for list in ["limits", "requests"] {
                if let Some(l) = resources.get_mut(list) {
                    quantities(l, &format!("{at}.{list}"))?;
                }
            }
            check_requests_within_limits(resources, &at, default_requests)?;
        }
    }
    match spec.get_mut("overhead") {
        Some(o) => quantities(o, &format!("{field}.overhead")),
        None => Ok(()),
    }
}

/// A request above its limit is refused; with `default`, a resource with a limit and no request is
/// requested at its limit.
fn check_requests_within_limits(
    resources: &mut Value,
    at: &str,
    default: bool,
) -> Result<(), String> {
    let Some(limits) = resources
        .get("limits")
        .and_then(Value::as_object)
        .cloned()
        .filter(|l| !l.is_empty())
    else {
        return Ok(());
    };
    for (name, limit) in limits {
        let request = resources
            .get("requests")
            .and_then(|r| r.get(&name))
            .cloned()
            .unwrap_or(Value::Null);
        if request.is_null() {
            if !default {
                continue;
            }
            if !resources["requests"].is_object() {
                resources["requests"] = json!({});
            }
            resources["requests"][&name] = limit;
        } else if let (Some(r), Some(l)) = (
            request.as_str().and_then(milli),
            limit.as_str().and_then(milli),
        ) && r > l
        {
            return Err(format!(
                "{at}.requests[{name}]: Invalid value: \"{}\": must be less than or equal to {name} limit of {}",
                request.as_str().unwrap_or_default(),
                limit.as_str().unwrap_or_default()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::admit;
    use serde_json::json;

    #[test]
    fn quantities_come_back_typed_and_canonical() {
        let mut pod = json!({"spec": {"containers": [{"name": "c", "resources": {
            "requests": {"cpu": 1, "memory": "1024Mi"},
            "limits": {"cpu": "1500m", "nvidia.com/gpu": 1},
        }}], "overhead": {"cpu": 0.25}}});
        admit("Pod", &mut pod).unwrap();
        let r = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(r["requests"]["cpu"], "1");
        assert_eq!(r["requests"]["memory"], "1Gi");
        assert_eq!(r["limits"]["cpu"], "1500m");
        // requests default to limits
        assert_eq!(r["requests"]["nvidia.com/gpu"], "1");
        assert_eq!(pod["spec"]["overhead"]["cpu"], "250m");
    }

    #[test]
    fn bad_quantities_are_refused_naming_the_field() {
        for (resources, field) in [
            (
                json!({"requests": {"cpu": "lots"}}),
                "spec.containers[0].resources.requests[cpu]",
            ),
            (
                json!({"requests": {"memory": "-1Gi"}}),
                "spec.containers[0].resources.requests[memory]",
            ),
            (
                json!({"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}),
                "spec.containers[0].resources.requests[cpu]",
            ),
        ] {
            let mut pod = json!({"spec": {"containers": [{"name": "c", "resources": resources}]}});
            let err = admit("Pod", &mut pod).unwrap_err();
            assert!(err.starts_with(field), "{err}");
        }
        let mut ds = json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": true}}}]}}}});
        let err = admit("DaemonSet", &mut ds).unwrap_err();
        assert!(
            err.starts_with("spec.template.spec.containers[0].resources.requests[cpu]"),
            "{err}"
        );
    }
}
