//! Unknown fields of built-in kinds, as kube-apiserver's decoding treats them: dropped, or — with
//! `fieldValidation=Strict`, kubectl's default — refused (400) naming each field.

use serde_json::Value;

use super::resources::{ForType, with_builtin_type};

/// Remove from `obj` every field its Kubernetes type does not have; the paths removed, in order (empty
/// for kinds without a built-in type, or a body that does not decode — other checks answer for those).
pub fn prune_unknown(kind: &str, obj: &mut Value) -> Vec<String> {
    struct Prune<'a>(&'a mut Value);
    impl ForType for Prune<'_> {
        type Out = Vec<String>;
        fn call<T>(self) -> Vec<String>
        where
            T: serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema,
        {
            let Ok(typed) = serde_json::from_value::<T>(self.0.clone()) else {
                return Vec::new();
            };
            let Ok(known) = serde_json::to_value(&typed) else {
                return Vec::new();
            };
            let mut unknown = Vec::new();
            prune(self.0, &known, "", &mut unknown);
            unknown
        }
    }
    with_builtin_type(kind, Prune(obj)).unwrap_or_default()
}

fn prune(v: &mut Value, known: &Value, path: &str, unknown: &mut Vec<String>) {
    match (v, known) {
        (Value::Object(m), Value::Object(k)) => {
            let mut gone = Vec::new();
            for (key, child) in m.iter_mut() {
                let here = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kc) => prune(child, kc, &here, unknown),
                    None if child.is_null() => {}
                    None => {
                        unknown.push(here);
                        gone.push(key.clone());
                    }
                }
            }
            for key in gone {
                m.shift_remove(&key);
            }
        }
        (Value::Array(items), Value::Array(k)) => {
            for (i, (item, ki)) in items.iter_mut().zip(k).enumerate() {
                prune(item, ki, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_of_a_deployment_are_named_and_removed() {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"any.key/is": "fine"}},
            "spec": {"replicass": 3, "selector": {"matchLabels": {"app": "web"}}, "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx", "imagePullPolicyy": "Always"}]},
            }},
        });
        let unknown = prune_unknown("Deployment", &mut d);
        assert_eq!(
            unknown,
            [
                "spec.replicass",
                "spec.template.spec.containers[0].imagePullPolicyy"
            ]
        );
        assert!(d["spec"]["replicass"].is_null());
        assert_eq!(d["metadata"]["labels"]["any.key/is"], "fine");
        assert!(prune_unknown("NodePool", &mut json!({"spec": {"x": 1}})).is_empty());
    }
}
