//! The install manifests: the committed CRDs are what the Rust types generate, and `kubectl kustomize
//! deploy/` renders objects that all parse into their Kubernetes types.

use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

#[test]
fn committed_crds_are_what_the_types_generate() {
    for dir in ["deploy/crds", "deploy/chart/crds"] {
        let path = dovetail_tests::root().join(dir);
        for (file, generated) in dovetail::crds::definitions_yaml().expect("CRDs render") {
            let committed = std::fs::read_to_string(path.join(file)).unwrap_or_default();
            assert!(
                committed == generated,
                "{dir}/{file} is stale: run `cargo xtask crds` and commit the result"
            );
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(doc: &Value) -> Result<(), String> {
    serde_json::from_value::<T>(doc.clone())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// `kubectl kustomize deploy/`, as documents; None (after saying so) where kubectl is missing outside CI.
fn kustomize() -> Option<Vec<Value>> {
    let out = match Command::new("kubectl")
        .args(["kustomize", "deploy/"])
        .current_dir(dovetail_tests::root())
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: kubectl is not installed here ({e}); CI runs this check");
            return None;
        }
        Err(e) => panic!("kubectl is needed to render deploy/: {e}"),
    };
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    Some(serde_saphyr::from_multiple(&text).expect("rendered YAML parses"))
}

#[test]
fn the_kustomize_base_renders_and_every_object_parses() {
    let Some(docs) = kustomize() else {
        return;
    };
    let mut kinds = Vec::new();
    for doc in &docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let parsed = match kind.as_str() {
            "Namespace" => parse::<Namespace>(doc),
            "CustomResourceDefinition" => parse::<CustomResourceDefinition>(doc),
            "ServiceAccount" => parse::<ServiceAccount>(doc),
            "ClusterRole" => parse::<ClusterRole>(doc),
            "ClusterRoleBinding" => parse::<ClusterRoleBinding>(doc),
            "Role" => parse::<Role>(doc),
            "RoleBinding" => parse::<RoleBinding>(doc),
            "Deployment" => parse::<Deployment>(doc),
            "PodDisruptionBudget" => parse::<PodDisruptionBudget>(doc),
            other => Err(format!("unexpected kind {other}")),
        };
        if let Err(e) = parsed {
            panic!("{kind} {}: {e}", doc["metadata"]["name"]);
        }
        kinds.push(kind);
    }
    for want in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.iter().any(|k| k == want), "no {want} in {kinds:?}");
    }
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "CustomResourceDefinition")
            .count(),
        dovetail::crds::definitions().len(),
        "every CRD Dovetail reads"
    );
    // Namespaced objects land in the controller's namespace; the ServiceAccount carries the IRSA role.
    let sa = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap();
    assert_eq!(sa["metadata"]["namespace"], "dovetail");
    assert!(sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].is_string());
}

/// Render the chart as `helm template --namespace NS` would, for the part of Helm's template language the
/// chart keeps to: `{{ .Values.path }}` and `{{ .Release.Namespace }}`. Anything else fails the test, so
/// the chart stays checkable here without helm.
fn render_chart(namespace: &str) -> Vec<Value> {
    let chart = dovetail_tests::root().join("deploy/chart");
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart.join("values.yaml")).unwrap())
            .expect("values.yaml parses");
    let mut docs = Vec::new();
    for dir in ["crds", "templates"] {
        let mut files: Vec<_> = std::fs::read_dir(chart.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            let mut out = String::new();
            let mut rest = text.as_str();
            while let Some(start) = rest.find("{{") {
                out.push_str(&rest[..start]);
                let end = rest[start..].find("}}").expect("closed action") + start;
                let action = rest[start + 2..end].trim();
                let value = if action == ".Release.Namespace" {
                    namespace.to_string()
                } else if let Some(path) = action.strip_prefix(".Values.") {
                    let v = path.split('.').fold(&values, |v, k| &v[k]);
                    match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => panic!("{}: `{action}` is {other}, not a scalar", file.display()),
                    }
                } else {
                    panic!(
                        "{}: `{{{{ {action} }}}}` is outside what this check renders",
                        file.display()
                    );
                };
                out.push_str(&value);
                rest = &rest[end + 2..];
            }
            out.push_str(rest);
            let parsed: Vec<Value> = serde_saphyr::from_multiple(&out)
                .unwrap_or_else(|e| panic!("{} renders to bad YAML: {e}", file.display()));
            docs.extend(parsed.into_iter().filter(|d| !d.is_null()));
        }
    }
    docs
}

/// The object without the labels kustomize's `labels:` adds everywhere (the chart's CRDs are raw files).
fn without_common_labels(object: &Value) -> Value {
    let mut o = object.clone();
    if let Some(labels) = o["metadata"]["labels"].as_object_mut() {
        labels.remove("app.kubernetes.io/name");
        labels.remove("app.kubernetes.io/part-of");
        if labels.is_empty() {
            o["metadata"].as_object_mut().unwrap().remove("labels");
        }
    }
    o
}

/// Where two JSON values first differ, as a path.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| {
                first_difference(
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                    format!("{at}.{k}"),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, format!("{at}[{i}]"))),
        // YAML writers differ on 100 vs 100.0; the schema means the same number.
        (Value::Number(x), Value::Number(y)) => {
            (x.as_f64() != y.as_f64()).then(|| format!("{at} ({a} vs {b})"))
        }
        _ => (a != b).then(|| format!("{at} ({a} vs {b})")),
    }
}

#[test]
fn the_helm_chart_renders_the_same_objects_as_the_kustomize_base() {
    let chart = render_chart("dovetail");
    let key = |d: &Value| {
        format!(
            "{}/{}",
            d["kind"].as_str().unwrap_or_default(),
            d["metadata"]["name"].as_str().unwrap_or_default()
        )
    };
    let Some(base) = kustomize() else {
        return;
    };
    let base: std::collections::BTreeMap<String, &Value> = base
        .iter()
        .filter(|d| d["kind"] != "Namespace")
        .map(|d| (key(d), d))
        .collect();
    let charted: std::collections::BTreeMap<String, &Value> =
        chart.iter().map(|d| (key(d), d)).collect();
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        charted.keys().collect::<Vec<_>>(),
        "the chart and the kustomize base hold different objects"
    );
    for (k, object) in &base {
        let (a, b) = (
            without_common_labels(object),
            without_common_labels(charted[k]),
        );
        if let Some(path) = first_difference(&a, &b, String::new()) {
            panic!(
                "{k} differs at {path} between deploy/ and deploy/chart/ (with the chart's default values)"
            );
        }
    }
    // A value set at install time reaches the object.
    assert!(
        chart
            .iter()
            .any(|d| d["kind"] == "Deployment" && d["spec"]["replicas"] == 2)
    );
}
