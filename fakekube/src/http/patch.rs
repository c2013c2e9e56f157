//! The patch formats a PATCH may carry: JSON merge patch, JSON patch, strategic merge patch (built-in kinds,
//! with their patch merge keys and directives), and server-side apply (create or update, the manager's
//! fields recorded in `managedFields`).

use serde_json::{Map, Value, json};

use crate::merge::merge_patch;

/// The content types of PATCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// How a list field of a built-in kind merges under a strategic merge patch: by the value of a key, as a
/// set of scalars, or (absent from this table) replaced whole.
fn list_strategy(parent: &str, field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "conditions" | "addresses" => "type",
        "ownerReferences" => "uid",
        "ports" if parent == "service" => "port",
        "ports" => "containerPort",
        "finalizers" => "$set",
        _ => return None,
    })
}

/// Apply a strategic merge patch (kubectl's patch for built-in kinds) to `target`, an object of `kind`.
pub fn strategic_merge(target: &mut Value, patch: &Value, kind: &str) -> Result<(), String> {
    // A Service's `spec.ports` merge by `port`; a container's `ports` by `containerPort`.
    merge_map(
        target,
        patch,
        if kind == "Service" { "Service" } else { "" },
    )
}

fn merge_map(target: &mut Value, patch: &Value, parent: &str) -> Result<(), String> {
    let Some(patch_map) = patch.as_object() else {
        *target = patch.clone();
        return Ok(());
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch_map.clone();
            p.shift_remove("$patch");
            *target = strip_directives(Value::Object(p));
            return Ok(());
        }
        Some("delete") => {
            *target = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other}")),
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let retain: Option<Vec<String>> =
        patch_map
            .get("$retainKeys")
            .and_then(Value::as_array)
            .map(|keys| {
                keys.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            });
    let Some(target_map) = target.as_object_mut() else {
        return Ok(());
    };
    for (k, v) in patch_map {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove: Vec<&Value> = v.as_array().into_iter().flatten().collect();
            if let Some(list) = target_map.get_mut(field).and_then(Value::as_array_mut) {
                list.retain(|x| !remove.contains(&x));
            }
            continue;
        }
        if v.is_null() {
            target_map.shift_remove(k);
            continue;
        }
        let context = if parent == "Service" && k == "spec" {
            "service"
        } else {
            k.as_str()
        };
        match (v, list_strategy(parent, k)) {
            (Value::Array(items), Some(key)) => {
                let slot = target_map.entry(k.clone()).or_insert(json!([]));
                merge_list(slot, items, key, k)?;
            }
            (Value::Object(_), _) => {
                let slot = target_map.entry(k.clone()).or_insert(Value::Null);
                merge_map(slot, v, context)?;
                if slot.is_null() {
                    target_map.shift_remove(k);
                }
            }
            _ => {
                target_map.insert(k.clone(), strip_directives(v.clone()));
            }
        }
    }
    if let Some(keep) = retain {
        target_map.retain(|k, _| keep.contains(k));
    }
    Ok(())
}

/// Merge a patch list into a list: by `key` (elements with `$patch: delete` removed), as a set (`$set`), or
/// replaced whole when the patch list holds `{"$patch": "replace"}`.
fn merge_list(target: &mut Value, items: &[Value], key: &str, field: &str) -> Result<(), String> {
    if items.iter().any(|i| i["$patch"] == "replace") {
        *target = Value::Array(
            items
                .iter()
                .filter(|i| i["$patch"] != "replace")
                .cloned()
                .map(strip_directives)
                .collect(),
        );
        return Ok(());
    }
    if !target.is_array() {
        *target = json!([]);
    }
    let Some(list) = target.as_array_mut() else {
        return Ok(());
    };
    if key == "$set" {
        for item in items {
            if !list.contains(item) {
                list.push(item.clone());
            }
        }
        return Ok(());
    }
    for item in items {
        let Some(id) = item.get(key).filter(|v| !v.is_null()) else {
            return Err(format!(
                "{field}: an element is missing its merge key `{key}`"
            ));
        };
        let at = list.iter().position(|x| x.get(key) == Some(id));
        if item["$patch"] == "delete" {
            if let Some(at) = at {
                list.remove(at);
            }
            continue;
        }
        match at {
            Some(at) => merge_map(&mut list[at], item, field)?,
            None => list.push(strip_directives(item.clone())),
        }
    }
    Ok(())
}

/// A value with every `$`-directive taken out (what is stored must be plain).
fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(strip_directives).collect()),
        other => other,
    }
}

/// Apply `patch` of `patch_type` (not Apply) to a copy of `current`.
pub fn apply_patch(
    current: &Value,
    kind: &str,
    patch_type: PatchType,
    body: &[u8],
) -> Result<Value, String> {
    let mut updated = current.clone();
    match patch_type {
        PatchType::Merge | PatchType::Strategic => {
            let patch: Value = serde_json::from_slice(body)
                .map_err(|e| format!("the patch is not valid JSON: {e}"))?;
            if patch_type == PatchType::Merge {
                merge_patch(&mut updated, &patch);
            } else {
                strategic_merge(&mut updated, &patch, kind)?;
            }
        }
        PatchType::Json => {
            let patch: json_patch::Patch = serde_json::from_slice(body)
                .map_err(|e| format!("the JSON patch does not decode: {e}"))?;
            json_patch::patch(&mut updated, &patch).map_err(|e| e.to_string())?;
        }
        PatchType::Apply => return Err("server-side apply is not a patch of a copy".into()),
    }
    Ok(updated)
}

/// The fields an applied configuration sets, in managedFields' `FieldsV1` form (`f:spec`, `k:{"name":"x"}`).
pub fn fields_v1(v: &Value, parent: &str) -> Value {
    let Some(map) = v.as_object() else {
        return json!({});
    };
    let mut out = Map::new();
    for (k, child) in map {
        if matches!(k.as_str(), "apiVersion" | "kind") {
            continue;
        }
        if parent.is_empty() && k == "metadata" {
            let mut meta = Map::new();
            for (mk, mv) in child.as_object().into_iter().flatten() {
                if matches!(mk.as_str(), "labels" | "annotations") {
                    meta.insert(format!("f:{mk}"), fields_v1(mv, mk));
                }
            }
            if !meta.is_empty() {
                out.insert("f:metadata".into(), Value::Object(meta));
            }
            continue;
        }
        let set = match child {
            Value::Object(_) => fields_v1(child, k),
            Value::Array(items) => match list_strategy(parent, k) {
                Some(key) if key != "$set" => {
                    let mut m = Map::new();
                    for item in items {
                        let id = json!({key: item[key]});
                        let mut inner = fields_v1(item, k);
                        if let Some(o) = inner.as_object_mut() {
                            o.insert(".".into(), json!({}));
                        }
                        m.insert(format!("k:{id}"), inner);
                    }
                    Value::Object(m)
                }
                _ => json!({}),
            },
            _ => json!({}),
        };
        out.insert(format!("f:{k}"), set);
    }
    Value::Object(out)
}

/// Server-side apply onto an existing object: the applied configuration merged in (lists with merge keys by
/// key), and fields this manager applied before but no longer names removed.
pub fn server_side_apply(current: &Value, applied: &Value, manager: &str, kind: &str) -> Value {
    let mut updated = current.clone();
    let previous = current["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["manager"] == manager && m["operation"] == "Apply")
        .map(|m| m["fieldsV1"].clone());
    let now = fields_v1(applied, "");
    if let Some(previous) = previous {
        remove_dropped(&mut updated, &previous, &now);
    }
    let _ = strategic_merge(&mut updated, applied, kind);
    updated
}

/// Remove what `before` owned and `after` does not (leaves and whole keyed list elements).
fn remove_dropped(target: &mut Value, before: &Value, after: &Value) {
    let Some(before) = before.as_object() else {
        return;
    };
    for (k, owned) in before {
        if k == "." {
            continue;
        }
        let still = after.get(k);
        if let Some(field) = k.strip_prefix("f:") {
            match still {
                None => {
                    if let Some(m) = target.as_object_mut() {
                        m.shift_remove(field);
                    }
                }
                Some(still) => {
                    if let Some(child) = target.get_mut(field) {
                        remove_dropped(child, owned, still);
                    }
                }
            }
        } else if let Some(id) = k.strip_prefix("k:") {
            let Ok(id) = serde_json::from_str::<Value>(id) else {
                continue;
            };
            let Some(list) = target.as_array_mut() else {
                continue;
            };
            let matches = |x: &Value| {
                id.as_object()
                    .is_some_and(|m| m.iter().all(|(ik, iv)| x.get(ik) == Some(iv)))
            };
            match still {
                None => list.retain(|x| !matches(x)),
                Some(still) => {
                    if let Some(x) = list.iter_mut().find(|x| matches(x)) {
                        remove_dropped(x, owned, still);
                    }
                }
            }
        }
    }
}

/// Record `manager`'s ownership of `fields` in `obj`'s managedFields (replacing its previous entry for the
/// same operation).
pub fn record_manager(obj: &mut Value, manager: &str, operation: &str, fields: Value, time: &str) {
    let api_version = obj["apiVersion"].clone();
    let entry = json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    });
    let meta = &mut obj["metadata"];
    if !meta["managedFields"].is_array() {
        meta["managedFields"] = json!([]);
    }
    if let Some(list) = meta["managedFields"].as_array_mut() {
        list.retain(|m| !(m["manager"] == manager && m["operation"] == operation));
        list.push(entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategic_merge_merges_containers_by_name_and_honours_directives() {
        let mut d = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "s:1"},
        ], "tolerations": [{"key": "x"}]}}}});
        strategic_merge(
            &mut d,
            &json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
                "containers": [
                    {"name": "app", "image": "a:2", "env": [{"name": "B", "value": "2"}]},
                    {"name": "side", "$patch": "delete"},
                ],
                "tolerations": [{"key": "y"}],
            }}}}),
            "Deployment",
        )
        .unwrap();
        let spec = &d["spec"]["template"]["spec"];
        assert_eq!(spec["containers"].as_array().unwrap().len(), 1);
        assert_eq!(spec["containers"][0]["image"], "a:2");
        assert_eq!(spec["containers"][0]["env"].as_array().unwrap().len(), 2);
        // Lists without a merge key are replaced.
        assert_eq!(spec["tolerations"], json!([{"key": "y"}]));
        assert!(!d.to_string().contains('$'));
    }

    #[test]
    fn strategic_merge_sets_finalizers_and_deletes_from_primitive_lists() {
        let mut n = json!({"metadata": {"finalizers": ["a", "b"]}});
        strategic_merge(&mut n, &json!({"metadata": {"finalizers": ["c"]}}), "Node").unwrap();
        assert_eq!(n["metadata"]["finalizers"], json!(["a", "b", "c"]));
        strategic_merge(
            &mut n,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
            "Node",
        )
        .unwrap();
        assert_eq!(n["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn apply_removes_what_the_manager_no_longer_names() {
        let first = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1, "y": 2}});
        let mut obj = first.clone();
        record_manager(&mut obj, "me", "Apply", fields_v1(&first, ""), "t");
        let second = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": 3}});
        let out = server_side_apply(&obj, &second, "me", "ConfigMap");
        assert_eq!(out["spec"], json!({"x": 3}));
        assert_eq!(out["metadata"]["labels"], json!({"a": "1"}));
    }
}
