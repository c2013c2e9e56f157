//! The admission plugins that read other objects, run on create after validation: DefaultStorageClass
//! (a claim naming no class gets the default one), Priority (a pod's `priorityClassName` becomes its
//! `priority`) and RuntimeClass (a pod's runtime class adds its overhead and scheduling constraints).

use serde_json::{Value, json};

use crate::store::Store;

/// The annotation that marks the default StorageClass.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

/// Mutate `obj` as the plugins would, or say why it is refused (the API server's 403 / 422).
pub fn admit(store: &Store, kind: &str, obj: &mut Value) -> Result<(), String> {
    match kind {
        "PersistentVolumeClaim" => {
            default_storage_class(store, obj);
            Ok(())
        }
        "Pod" => {
            priority(store, obj)?;
            runtime_class(store, obj)
        }
        _ => Ok(()),
    }
}

/// The default StorageClass: the newest one annotated as default (ties by name), as the plugin picks.
pub fn default_class(store: &Store) -> Option<String> {
    store
        .iter("StorageClass")
        .filter(|c| c["metadata"]["annotations"][DEFAULT_CLASS_ANNOTATION] == "true")
        .max_by(|a, b| {
            let created = |v: &Value| {
                v["metadata"]["creationTimestamp"]
                    .as_str()
                    .map(str::to_string)
            };
            created(a).cmp(&created(b)).then_with(|| {
                b["metadata"]["name"]
                    .as_str()
                    .cmp(&a["metadata"]["name"].as_str())
            })
        })
        .and_then(|c| c["metadata"]["name"].as_str().map(str::to_string))
}

fn default_storage_class(store: &Store, claim: &mut Value) {
    // Only a claim that names no class at all: `storageClassName: ""` asks for no class on purpose.
    if claim["spec"].get("storageClassName").is_some() || !claim["spec"].is_object() {
        return;
    }
    if let Some(name) = default_class(store) {
        claim["spec"]["storageClassName"] = json!(name);
    }
}

fn priority(store: &Store, pod: &mut Value) -> Result<(), String> {
    let Some(spec) = pod.get_mut("spec").filter(|s| s.is_object()) else {
        return Ok(());
    };
    let class = spec["priorityClassName"].as_str().map(str::to_string);
    let value = match &class {
        Some(name) => {
            // The two classes every cluster has.
            let builtin = match name.as_str() {
                "system-node-critical" => Some(2_000_001_000),
                "system-cluster-critical" => Some(2_000_000_000),
                _ => None,
            };
            match builtin.or_else(|| store.get("PriorityClass", "", name)?["value"].as_i64()) {
                Some(v) => v,
                None => {
                    return Err(format!(
                        "spec.priorityClassName: no PriorityClass with name {name} was found"
                    ));
                }
            }
        }
        None => store
            .iter("PriorityClass")
            .filter(|c| c["globalDefault"] == true)
            .filter_map(|c| c["value"].as_i64())
            .min()
            .unwrap_or(0),
    };
    if let Some(given) = spec["priority"].as_i64()
        && given != value
    {
        return Err(format!(
            "spec.priority: Forbidden: the integer value of priority ({given}) must not be provided in pod spec; \
             priority admission controller computed {value} from the given PriorityClass name"
        ));
    }
    spec["priority"] = json!(value);
    Ok(())
}

fn runtime_class(store: &Store, pod: &mut Value) -> Result<(), String> {
    let Some(name) = pod["spec"]["runtimeClassName"].as_str().map(str::to_string) else {
        return Ok(());
    };
    let Some(class) = store.get("RuntimeClass", "", &name).cloned() else {
        return Err(format!(
            "spec.runtimeClassName: pod rejected: RuntimeClass \"{name}\" not found"
        ));
    };
    let spec = &mut pod["spec"];
    if let Some(fixed) = class["overhead"]["podFixed"].as_object() {
        if spec.get("overhead").is_some_and(|o| o != &json!(fixed)) {
            return Err(format!(
                "spec.overhead: Invalid value: the pod's overhead does not match RuntimeClass {name}'s"
            ));
        }
        spec["overhead"] = json!(fixed);
    }
    let scheduling = &class["scheduling"];
    for (k, v) in scheduling["nodeSelector"].as_object().into_iter().flatten() {
        if spec["nodeSelector"].get(k).is_some_and(|mine| mine != v) {
            return Err(format!(
                "spec.nodeSelector[{k}]: conflicts with RuntimeClass {name}'s scheduling.nodeSelector"
            ));
        }
        spec["nodeSelector"][k] = v.clone();
    }
    if let Some(tolerations) = scheduling["tolerations"].as_array() {
        let mut mine = spec["tolerations"].as_array().cloned().unwrap_or_default();
        for t in tolerations {
            if !mine.contains(t) {
                mine.push(t.clone());
            }
        }
        spec["tolerations"] = json!(mine);
    }
    Ok(())
}
