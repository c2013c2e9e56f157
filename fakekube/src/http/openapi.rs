//! OpenAPI v3 as kubectl reads it: the index of group-versions, and per group-version the PATCH operations
//! (with the `fieldValidation` parameter, so kubectl validates on the server) and each kind's schema, which
//! `kubectl explain` walks. Custom resources publish their CRD's schema; built-in kinds the schema of their
//! Kubernetes type.

use serde_json::{Map, Value, json};

use super::resources::{ForType, Resource, with_builtin_type};

/// `GET /openapi/v3`: where each group-version's document is.
pub fn index(resources: &[Resource], hash: &str) -> Value {
    let mut paths = Map::new();
    for r in resources {
        let key = gv_path(r);
        paths.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `api/v1`, `apis/apps/v1`.
pub fn gv_path(r: &Resource) -> String {
    if r.group.is_empty() {
        format!("api/{}", r.version)
    } else {
        format!("apis/{}/{}", r.group, r.version)
    }
}

/// `io.k8s.api.apps.v1.Deployment`, `sh.karpenter.v1.NodePool` (the reversed group, as kube-apiserver
/// names custom resources).
pub fn schema_name(r: &Resource) -> String {
    if r.schema.is_some() {
        let reversed: Vec<&str> = r.group.split('.').rev().collect();
        return format!("{}.{}.{}", reversed.join("."), r.version, r.kind);
    }
    let group = match r.group.as_str() {
        "" => "core",
        g => g.strip_suffix(".k8s.io").unwrap_or(g),
    };
    format!("io.k8s.api.{group}.{}.{}", r.version, r.kind)
}

/// The schema a built-in kind publishes: its Kubernetes type's, from k8s-openapi (None for a kind we
/// hold no type of).
fn builtin_schema(kind: &str) -> Option<Value> {
    struct SchemaOf;
    impl ForType for SchemaOf {
        type Out = Option<Value>;
        fn call<T>(self) -> Option<Value>
        where
            T: serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema,
        {
            let settings = schemars::generate::SchemaSettings::openapi3();
            let schema = settings.into_generator().into_root_schema_for::<T>();
            serde_json::to_value(schema).ok()
        }
    }
    with_builtin_type(kind, SchemaOf).flatten()
}

fn gvk(r: &Resource) -> Value {
    json!({"group": r.group, "version": r.version, "kind": r.kind})
}

/// The PATCH operation kubectl looks for: it names the kind, takes `fieldValidation`, and lists the patch
/// types the server accepts (strategic merge only for built-in kinds).
fn patch_operation(r: &Resource) -> Value {
    let mut content = Map::new();
    let mut types = vec![
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/apply-patch+yaml",
    ];
    if r.schema.is_none() {
        types.push("application/strategic-merge-patch+json");
    }
    for t in types {
        content.insert(t.into(), json!({"schema": {"type": "object"}}));
    }
    let params: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
        .iter()
        .map(|p| json!({"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": true}}))
        .collect();
    json!({
        "operationId": format!("patch{}", r.kind),
        "x-kubernetes-action": "patch",
        "x-kubernetes-group-version-kind": gvk(r),
        "parameters": params,
        "requestBody": {"content": content, "required": true},
        "responses": {"200": {"description": "OK"}},
    })
}

/// `GET /openapi/v3/apis/{group}/{version}`: the operations and schemas of one group-version.
pub fn document(resources: &[Resource], path: &str, kubernetes_version: &str) -> Option<Value> {
    let served: Vec<&Resource> = resources.iter().filter(|r| gv_path(r) == path).collect();
    if served.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in served {
        let item = if r.namespaced {
            format!("/{path}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("/{path}/{}/{{name}}", r.plural)
        };
        paths.insert(item, json!({"patch": patch_operation(r)}));
        let mut schema = match &r.schema {
            Some(s) => s.clone(),
            None => builtin_schema(&r.kind).unwrap_or_else(|| json!({"type": "object"})),
        };
        // Definitions a built-in schema refers to go beside it, as kube-apiserver publishes them.
        if let Some(defs) = schema.as_object_mut().and_then(|m| {
            m.shift_remove("$defs")
                .or_else(|| m.shift_remove("components"))
        }) {
            let defs = defs.get("schemas").cloned().unwrap_or(defs);
            for (k, v) in defs.as_object().into_iter().flatten() {
                schemas.insert(k.clone(), v.clone());
            }
        }
        if let Some(m) = schema.as_object_mut() {
            m.shift_remove("$schema");
            m.shift_remove("title");
        }
        schema["x-kubernetes-group-version-kind"] = json!([gvk(r)]);
        schemas.insert(schema_name(r), schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v{kubernetes_version}.0")},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}
