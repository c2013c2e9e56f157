//! The resources this API server serves, as discovery names them: the built-in kinds the simulation holds and
//! every installed CustomResourceDefinition.

use serde_json::{Value, json};

/// One resource (a kind served at a group-version) and how clients may name and use it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub group: String,
    pub version: String,
    pub kind: String,
    pub plural: String,
    pub singular: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources: `status`, `scale`, `eviction`, `binding`.
    pub subresources: Vec<&'static str>,
    /// `additionalPrinterColumns` of a CRD (empty for built-in kinds, which print their own columns).
    pub printer_columns: Vec<Value>,
    /// The CRD's `openAPIV3Schema` (None for built-in kinds).
    pub schema: Option<Value>,
    /// Whether PUT must carry a resourceVersion (custom resources; built-in kinds allow unconditional updates).
    pub needs_version_on_update: bool,
}

impl Resource {
    /// `apps/v1`, or `v1` for the core group.
    pub fn group_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `deployments.apps`, `pods`: how the API server names the resource in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `Deployment.apps`, `Pod`: how the API server names the kind in validation messages.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }

    pub fn has(&self, subresource: &str) -> bool {
        self.subresources.contains(&subresource)
    }

    /// The URL path of the collection, in `namespace` when the resource is namespaced and one is given.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let root = if self.group.is_empty() {
            "/api/v1".to_string()
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{root}/namespaces/{ns}/{}", self.plural),
            _ => format!("{root}/{}", self.plural),
        }
    }
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// (group, version, kind, plural, namespaced, short names, categories, subresources)
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

/// The built-in kinds the simulated cluster holds, as kube-apiserver serves them.
const BUILTIN: [Builtin; 23] = [
    (
        "",
        "v1",
        "Namespace",
        "namespaces",
        false,
        &["ns"],
        &[],
        &["status"],
    ),
    (
        "",
        "v1",
        "Pod",
        "pods",
        true,
        &["po"],
        &["all"],
        &["status", "eviction", "binding"],
    ),
    ("", "v1", "Node", "nodes", false, &["no"], &[], &["status"]),
    (
        "",
        "v1",
        "Service",
        "services",
        true,
        &["svc"],
        &["all"],
        &["status"],
    ),
    ("", "v1", "ConfigMap", "configmaps", true, &["cm"], &[], &[]),
    ("", "v1", "Secret", "secrets", true, &[], &[], &[]),
    (
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        true,
        &["sa"],
        &[],
        &[],
    ),
    ("", "v1", "Event", "events", true, &["ev"], &[], &[]),
    (
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
        &["pvc"],
        &[],
        &["status"],
    ),
    (
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        false,
        &["pv"],
        &[],
        &["status"],
    ),
    (
        "apps",
        "v1",
        "Deployment",
        "deployments",
        true,
        &["deploy"],
        &["all"],
        &["status", "scale"],
    ),
    (
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        true,
        &["rs"],
        &["all"],
        &["status", "scale"],
    ),
    (
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        true,
        &["sts"],
        &["all"],
        &["status", "scale"],
    ),
    (
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        true,
        &["ds"],
        &["all"],
        &["status"],
    ),
    (
        "batch",
        "v1",
        "Job",
        "jobs",
        true,
        &[],
        &["all"],
        &["status"],
    ),
    (
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
        &["pdb"],
        &[],
        &["status"],
    ),
    (
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        true,
        &[],
        &[],
        &[],
    ),
    (
        "storage.k8s.io",
        "v1",
        "StorageClass",
        "storageclasses",
        false,
        &["sc"],
        &[],
        &[],
    ),
    (
        "storage.k8s.io",
        "v1",
        "CSINode",
        "csinodes",
        false,
        &[],
        &[],
        &[],
    ),
    ("", "v1", "PodTemplate", "podtemplates", true, &[], &[], &[]),
    (
        "scheduling.k8s.io",
        "v1",
        "PriorityClass",
        "priorityclasses",
        false,
        &["pc"],
        &[],
        &[],
    ),
    (
        "node.k8s.io",
        "v1",
        "RuntimeClass",
        "runtimeclasses",
        false,
        &[],
        &[],
        &[],
    ),
    (
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
        &["crd", "crds"],
        &[],
        &["status"],
    ),
];

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// Everything served: the built-in kinds, then each CRD's served versions, in a fixed order.
pub fn all<'a>(crds: impl Iterator<Item = &'a Value>) -> Vec<Resource> {
    let mut out: Vec<Resource> = BUILTIN
        .iter()
        .map(
            |(group, version, kind, plural, namespaced, short, categories, subresources)| {
                Resource {
                    group: group.to_string(),
                    version: version.to_string(),
                    kind: kind.to_string(),
                    plural: plural.to_string(),
                    singular: kind.to_lowercase(),
                    namespaced: *namespaced,
                    short_names: strings(short),
                    categories: strings(categories),
                    subresources: subresources.to_vec(),
                    printer_columns: Vec::new(),
                    schema: None,
                    needs_version_on_update: false,
                }
            },
        )
        .collect();
    for crd in crds {
        let spec = &crd["spec"];
        let names = &spec["names"];
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"] == false {
                continue;
            }
            let mut subresources = Vec::new();
            if v["subresources"]["status"].is_object() {
                subresources.push("status");
            }
            if v["subresources"]["scale"].is_object() {
                subresources.push("scale");
            }
            let kind = names["kind"].as_str().unwrap_or_default().to_string();
            out.push(Resource {
                group: spec["group"].as_str().unwrap_or_default().to_string(),
                version: v["name"].as_str().unwrap_or_default().to_string(),
                plural: names["plural"].as_str().unwrap_or_default().to_string(),
                singular: names["singular"]
                    .as_str()
                    .map_or_else(|| kind.to_lowercase(), str::to_string),
                kind,
                namespaced: spec["scope"] == "Namespaced",
                short_names: str_list(&names["shortNames"]),
                categories: str_list(&names["categories"]),
                subresources,
                printer_columns: v["additionalPrinterColumns"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
                schema: Some(v["schema"]["openAPIV3Schema"].clone()),
                needs_version_on_update: true,
            });
        }
    }
    out
}

/// `APIResourceList` for one group-version (`GET /api/v1`, `GET /apis/apps/v1`).
pub fn resource_list(resources: &[Resource], group_version: &str) -> Value {
    let mut list = Vec::new();
    for r in resources
        .iter()
        .filter(|r| r.group_version() == group_version)
    {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
        });
        if !r.short_names.is_empty() {
            entry["shortNames"] = json!(r.short_names);
        }
        if !r.categories.is_empty() {
            entry["categories"] = json!(r.categories);
        }
        list.push(entry);
        for sub in &r.subresources {
            let (kind, group, version, verbs): (&str, &str, &str, &[&str]) = match *sub {
                "status" => (&r.kind, "", "", &["get", "patch", "update"]),
                "scale" => ("Scale", "autoscaling", "v1", &["get", "patch", "update"]),
                "eviction" => ("Eviction", "policy", "v1", &["create"]),
                _ => ("Binding", "", "", &["create"]),
            };
            let mut e = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if !group.is_empty() {
                e["group"] = json!(group);
                e["version"] = json!(version);
            }
            list.push(e);
        }
    }
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    })
}

/// The API groups other than the core one, each with its versions, in the order first served.
pub fn groups(resources: &[Resource]) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for r in resources.iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, versions)) => {
                if !versions.contains(&r.version) {
                    versions.push(r.version.clone());
                }
            }
            None => out.push((r.group.clone(), vec![r.version.clone()])),
        }
    }
    out
}

/// `APIGroup` for one group.
pub fn group(name: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

/// Something to do with a built-in kind's Kubernetes type (k8s-openapi), whichever it is.
pub trait ForType {
    type Out;
    fn call<T>(self) -> Self::Out
    where
        T: serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema;
}

/// Run `f` with the Kubernetes type of built-in `kind` (None for custom resources and kinds without one).
pub fn with_builtin_type<F: ForType>(kind: &str, f: F) -> Option<F::Out> {
    use k8s_openapi::api;
    Some(match kind {
        "Namespace" => f.call::<api::core::v1::Namespace>(),
        "Pod" => f.call::<api::core::v1::Pod>(),
        "Node" => f.call::<api::core::v1::Node>(),
        "Service" => f.call::<api::core::v1::Service>(),
        "ConfigMap" => f.call::<api::core::v1::ConfigMap>(),
        "Secret" => f.call::<api::core::v1::Secret>(),
        "ServiceAccount" => f.call::<api::core::v1::ServiceAccount>(),
        "Event" => f.call::<api::core::v1::Event>(),
        "PersistentVolumeClaim" => f.call::<api::core::v1::PersistentVolumeClaim>(),
        "PersistentVolume" => f.call::<api::core::v1::PersistentVolume>(),
        "Deployment" => f.call::<api::apps::v1::Deployment>(),
        "ReplicaSet" => f.call::<api::apps::v1::ReplicaSet>(),
        "StatefulSet" => f.call::<api::apps::v1::StatefulSet>(),
        "DaemonSet" => f.call::<api::apps::v1::DaemonSet>(),
        "Job" => f.call::<api::batch::v1::Job>(),
        "PodDisruptionBudget" => f.call::<api::policy::v1::PodDisruptionBudget>(),
        "Lease" => f.call::<api::coordination::v1::Lease>(),
        "StorageClass" => f.call::<api::storage::v1::StorageClass>(),
        "CSINode" => f.call::<api::storage::v1::CSINode>(),
        "PriorityClass" => f.call::<api::scheduling::v1::PriorityClass>(),
        "RuntimeClass" => f.call::<api::node::v1::RuntimeClass>(),
        _ => return None,
    })
}
