//! fakekube's HTTP front: the Kubernetes REST API over the store — discovery, OpenAPI v3, get / list / watch,
//! create / update / patch / delete, the status, scale, eviction and binding subresources, `Table` answers
//! for kubectl, and `Status` errors — served with axum on any byte stream (loopback TCP, or turmoil's
//! simulated TCP inside a simulation).

pub mod openapi;
pub mod patch;
pub mod query;
pub mod resources;
pub mod status;
pub mod strict;
pub mod table;
mod watch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use dovetail::clock::Clock;
use dovetail::journal::Journal;
use dovetail::kube::{KubeError, ObjectKey};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::FakeKube;
use crate::store::{DeleteOptions, StoreError};
use patch::PatchType;
use query::{FieldSelector, LabelSelector, Selection};
use resources::Resource;
use status::ApiError;
use table::Include;

/// How long a watch stays open when the client names no `timeoutSeconds` (kube-apiserver's
/// `--min-request-timeout`).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// The HTTP face of a [`FakeKube`]. Clones share the store.
#[derive(Clone)]
pub struct ApiServer {
    kube: FakeKube,
    clock: Arc<dyn Clock>,
    journal: Option<Arc<dyn Journal>>,
    /// The served resources, rebuilt when the set of CRDs changes (keyed by their count).
    resources: Arc<Mutex<Option<Served>>>,
}

/// The served resources and the number of CRDs they were built from.
type Served = (usize, Arc<Vec<Resource>>);

type Answer = Result<Response, ApiError>;

pub(crate) fn json_response(code: StatusCode, v: &Value) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn ok(v: &Value) -> Answer {
    Ok(json_response(StatusCode::OK, v))
}

fn created(v: &Value) -> Answer {
    Ok(json_response(StatusCode::CREATED, v))
}

fn success(details: Value) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

/// What a request names after the group-version.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

/// The query string as name/value pairs (later repeats win).
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }
}

fn store_error(r: &Resource, name: &str, e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(..) => ApiError::not_found(&r.qualified(), name),
        StoreError::AlreadyExists(..) => ApiError::already_exists(&r.qualified(), name),
        StoreError::Conflict(..) => ApiError::conflict(
            &r.qualified(),
            name,
            "the object has been modified; please apply your changes to the latest version and try again",
        ),
        StoreError::Precondition(_, _, why) => {
            ApiError::conflict(&r.qualified(), name, &format!("Precondition failed: {why}"))
        }
        StoreError::Invalid(_, message) => {
            let errors: Vec<String> = message.split("; ").map(str::to_string).collect();
            ApiError::invalid(&r.qualified_kind(), name, &errors)
        }
    }
}

fn decode_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| serde_saphyr::from_slice::<Value>(body))
        .map_err(|e| ApiError::bad_request(format!("the request body does not decode: {e}")))
}

/// A short rendering of a request body for the trace.
fn brief(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 160 {
        format!("{}…", text.chars().take(160).collect::<String>())
    } else {
        text
    }
}

impl ApiServer {
    pub fn new(kube: FakeKube, clock: Arc<dyn Clock>) -> ApiServer {
        ApiServer {
            kube,
            clock,
            journal: None,
            resources: Arc::default(),
        }
    }

    /// Record every write a client makes (`create Deployment default/web`) in `journal`, as `kubectl` lines.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> ApiServer {
        self.journal = Some(journal);
        self
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub(crate) fn clock(&self) -> Arc<dyn Clock> {
        self.clock.clone()
    }

    /// The axum router answering every path.
    pub fn router(self) -> Router {
        Router::new().fallback(handle).with_state(self)
    }

    fn record(&self, line: String) {
        if let Some(j) = &self.journal {
            j.record("kubectl", line);
        }
    }

    fn resources(&self) -> Arc<Vec<Resource>> {
        let st = self.kube.store();
        let count = st.crd_definitions().count();
        let mut cache = self.resources.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, r)) = cache.as_ref()
            && *n == count
        {
            return r.clone();
        }
        let r = Arc::new(resources::all(st.crd_definitions()));
        *cache = Some((count, r.clone()));
        r
    }

    fn dispatch(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Answer {
        let path = uri.path().trim_end_matches('/');
        let params = Params(
            form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        );
        if matches!(path, "/healthz" | "/livez" | "/readyz") {
            return Ok((StatusCode::OK, "ok").into_response());
        }
        if self.kube.is_down(self.now()) {
            return Err(ApiError::unavailable(
                "the API server is not answering (simulated outage)",
            ));
        }
        let resources = self.resources();
        match path {
            "/version" => return ok(&self.version()),
            "/api" => {
                return ok(&json!({
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
                }));
            }
            "/apis" => {
                let groups: Vec<Value> = resources::groups(&resources)
                    .iter()
                    .map(|(g, vs)| {
                        let mut v = resources::group(g, vs);
                        if let Some(m) = v.as_object_mut() {
                            m.shift_remove("kind");
                            m.shift_remove("apiVersion");
                        }
                        v
                    })
                    .collect();
                return ok(&json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}));
            }
            "/openapi/v3" => {
                return ok(&openapi::index(&resources, &self.openapi_hash()));
            }
            "/openapi/v2" => {
                // kubectl asks for v2 only in protobuf; v3 is what it reads for validation and explain.
                return Err(ApiError::no_such_path(path));
            }
            _ => {}
        }
        if let Some(gv) = path.strip_prefix("/openapi/v3/") {
            let version = self.kube.store().kubernetes_version().to_string();
            return match openapi::document(&resources, gv, &version) {
                Some(doc) => ok(&doc),
                None => Err(ApiError::no_such_path(path)),
            };
        }
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (gv, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => (v.to_string(), rest),
            ["apis", g] => {
                return match resources::groups(&resources).iter().find(|(n, _)| n == g) {
                    Some((n, vs)) => ok(&resources::group(n, vs)),
                    None => Err(ApiError::no_such_path(path)),
                };
            }
            ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
            _ => return Err(ApiError::no_such_path(path)),
        };
        let served: Vec<&Resource> = resources
            .iter()
            .filter(|r| r.group_version() == gv)
            .collect();
        if served.is_empty() {
            return Err(ApiError::no_such_path(path));
        }
        if rest.is_empty() {
            return ok(&resources::resource_list(&resources, &gv));
        }
        let find = |plural: &str| {
            served
                .iter()
                .find(|r| r.plural == plural)
                .map(|r| (*r).clone())
        };
        let (resource, namespace, tail) = match rest {
            ["namespaces", ns, plural, tail @ ..] if find(plural).is_some_and(|r| r.namespaced) => {
                (find(plural), Some(ns.to_string()), tail)
            }
            [plural, tail @ ..] => (find(plural), None, tail),
            [] => (None, None, rest),
        };
        let Some(resource) = resource else {
            return Err(ApiError::no_such_path(path));
        };
        let (name, subresource) = match tail {
            [] => (None, None),
            [name] => (Some(name.to_string()), None),
            [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
            _ => return Err(ApiError::no_such_path(path)),
        };
        if let Some(sub) = &subresource
            && !resource.has(sub)
        {
            return Err(ApiError::no_such_path(path));
        }
        if resource.namespaced && namespace.is_none() && name.is_some() {
            return Err(ApiError::no_such_path(path));
        }
        let target = Target {
            resource,
            namespace,
            name,
            subresource,
        };
        let table = headers
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("as=Table"))
            .then(|| Include::parse(params.get("includeObject")));
        if params.get("dryRun").is_some_and(|d| !d.is_empty()) {
            return Err(ApiError::bad_request(
                "dryRun is not supported by the simulated API server; run without --dry-run=server",
            ));
        }
        match (method.clone(), target.name.is_some()) {
            (Method::GET, false) if params.flag("watch") => self.watch(&target, &params, table),
            (Method::GET, false) => self.list(&target, &params, table),
            (Method::GET, true) => self.get(&target, table),
            (Method::POST, false) => self.create(&target, body, &params),
            (Method::POST, true) => self.post_subresource(&target, body),
            (Method::PUT, true) => self.update(&target, body, &params),
            (Method::PATCH, true) => {
                let ct = headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|c| c.to_str().ok())
                    .unwrap_or_default();
                self.patch(&target, ct, body, &params)
            }
            (Method::DELETE, true) => self.delete(&target, body, &params),
            (Method::DELETE, false) => self.delete_collection(&target, body, &params),
            _ => Err(ApiError::method_not_allowed(path)),
        }
    }

    fn version(&self) -> Value {
        let version = self.kube.store().kubernetes_version().to_string();
        let (major, minor) = version.split_once('.').unwrap_or(("1", &version));
        json!({
            "major": major,
            "minor": minor,
            "gitVersion": format!("v{version}.0"),
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24.0",
            "compiler": "gc",
            "platform": "linux/amd64",
        })
    }

    /// Changes when the served kinds change, so clients caching OpenAPI documents fetch them again.
    fn openapi_hash(&self) -> String {
        let st = self.kube.store();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for crd in st.crd_definitions() {
            for b in crd["metadata"]["name"].as_str().unwrap_or_default().bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016X}")
    }

    fn selection(&self, target: &Target, params: &Params) -> Result<Selection, ApiError> {
        Ok(Selection {
            namespace: target.namespace.clone(),
            labels: LabelSelector::parse(params.get("labelSelector").unwrap_or_default())?,
            fields: FieldSelector::parse(
                params.get("fieldSelector").unwrap_or_default(),
                &target.resource.kind,
            )?,
        })
    }

    fn list(&self, target: &Target, params: &Params, table: Option<Include>) -> Answer {
        let r = &target.resource;
        let selection = self.selection(target, params)?;
        let limit: usize = params
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let after = params
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(query::parse_continue)
            .transpose()?;
        let st = self.kube.store();
        let current = st.resource_version();
        if let Some(asked) = params
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            && asked > current
        {
            return Err(ApiError::new(
                504,
                "Timeout",
                format!("Too large resource version: {asked}, current: {current}"),
            ));
        }
        let rv = after.as_ref().map_or(current, |(rv, _, _)| *rv);
        let mut matching = st
            .iter(&r.kind)
            .filter(|o| selection.matches(o))
            .filter(|o| {
                after.as_ref().is_none_or(|(_, ns, name)| {
                    let key = (
                        o["metadata"]["namespace"].as_str().unwrap_or_default(),
                        o["metadata"]["name"].as_str().unwrap_or_default(),
                    );
                    key > (ns.as_str(), name.as_str())
                })
            });
        let items: Vec<Value> = matching.by_ref().take(limit).cloned().collect();
        let remaining = matching.count();
        drop(st);
        let next = (remaining > 0).then(|| {
            let last = items.last().cloned().unwrap_or_default();
            query::continue_token(
                rv,
                last["metadata"]["namespace"].as_str().unwrap_or_default(),
                last["metadata"]["name"].as_str().unwrap_or_default(),
            )
        });
        if let Some(include) = table {
            return ok(&table::table(
                r,
                &items,
                self.now(),
                include,
                &rv.to_string(),
                next.as_deref(),
            ));
        }
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if let Some(next) = next {
            metadata["continue"] = json!(next);
            metadata["remainingItemCount"] = json!(remaining);
        }
        ok(&json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.group_version(),
            "metadata": metadata,
            "items": items,
        }))
    }

    fn watch(&self, target: &Target, params: &Params, table: Option<Include>) -> Answer {
        let r = target.resource.clone();
        let selection = self.selection(target, params)?;
        let version = params.get("resourceVersion").unwrap_or_default();
        let mut st = self.kube.store();
        let (initial, events) = if version.is_empty() || version == "0" {
            // No version: the current objects first, as ADDED, then what changes.
            let initial: Vec<Value> = st
                .iter(&r.kind)
                .filter(|o| selection.matches(o))
                .cloned()
                .collect();
            let rv = st.resource_version();
            (initial, st.watch(&r.kind, rv))
        } else {
            let rv: u64 = version.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid resourceVersion: {version}"))
            })?;
            (Vec::new(), st.watch(&r.kind, rv))
        };
        drop(st);
        let timeout = params
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
        let req = watch::WatchRequest {
            resource: r,
            selection,
            initial,
            events,
            timeout,
            bookmarks: params.flag("allowWatchBookmarks"),
            as_table: table,
        };
        let content_type = if table.is_some() {
            "application/json;as=Table;v=v1;g=meta.k8s.io"
        } else {
            "application/json"
        };
        Ok((
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, content_type),
                (header::CACHE_CONTROL, "no-cache, private"),
            ],
            watch::body(self.clone(), req),
        )
            .into_response())
    }

    fn stored(&self, target: &Target) -> Result<Value, ApiError> {
        let r = &target.resource;
        let name = target.name.as_deref().unwrap_or_default();
        let ns = target.namespace.as_deref().unwrap_or_default();
        self.kube
            .store()
            .get(&r.kind, ns, name)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&r.qualified(), name))
    }

    fn get(&self, target: &Target, table: Option<Include>) -> Answer {
        let object = self.stored(target)?;
        match target.subresource.as_deref() {
            Some("scale") => ok(&scale_of(&object)),
            Some("status") | None => match table {
                Some(include) => {
                    let rv = object["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    ok(&table::table(
                        &target.resource,
                        &[object],
                        self.now(),
                        include,
                        &rv,
                        None,
                    ))
                }
                None => ok(&object),
            },
            Some(_) => Err(ApiError::method_not_allowed("GET")),
        }
    }

    fn create(&self, target: &Target, body: &[u8], params: &Params) -> Answer {
        let r = &target.resource;
        if r.namespaced && target.namespace.is_none() {
            return Err(ApiError::method_not_allowed(&r.collection_path(None)));
        }
        let mut object = decode_body(body)?;
        check_kind(r, &object)?;
        check_fields(r, &mut object, params)?;
        if let Some(ns) = &target.namespace {
            match object["metadata"]["namespace"].as_str() {
                Some(given) if given != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => object["metadata"]["namespace"] = json!(ns),
            }
        }
        if r.kind == "CustomResourceDefinition" {
            return Err(ApiError::method_not_allowed(
                "CustomResourceDefinitions are installed when the simulation starts",
            ));
        }
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let made = self
            .kube
            .store()
            .create(&r.kind, object, self.now())
            .map_err(|e| store_error(r, &name, e))?;
        self.record(format!("create {} {}", r.kind, key_of(&made)));
        created(&made)
    }

    fn update(&self, target: &Target, body: &[u8], params: &Params) -> Answer {
        let r = &target.resource;
        let name = target.name.as_deref().unwrap_or_default();
        let mut object = decode_body(body)?;
        if target.subresource.as_deref() == Some("scale") {
            let replicas = object["spec"]["replicas"].clone();
            return self.set_replicas(target, replicas);
        }
        check_kind(r, &object)?;
        check_fields(r, &mut object, params)?;
        if let Some(given) = object["metadata"]["name"].as_str()
            && given != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({given}) does not match the name on the URL ({name})"
            )));
        }
        let rv = object["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        if rv.is_none() && r.needs_version_on_update {
            return Err(ApiError::invalid(
                &r.qualified_kind(),
                name,
                &[
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
                        .to_string(),
                ],
            ));
        }
        self.write(target, object, rv.as_deref(), "update", String::new())
    }

    /// Store the whole new object (the main resource or, for `/status`, its status) and trace the write.
    fn write(
        &self,
        target: &Target,
        object: Value,
        expected_rv: Option<&str>,
        verb: &str,
        detail: String,
    ) -> Answer {
        let r = &target.resource;
        let name = target.name.as_deref().unwrap_or_default();
        let ns = target.namespace.as_deref().unwrap_or_default();
        let status_only = target.subresource.as_deref() == Some("status");
        let written = self
            .kube
            .store()
            .update(&r.kind, ns, name, object, status_only, expected_rv)
            .map_err(|e| store_error(r, name, e))?;
        self.record(format!(
            "{verb} {} {}{}{detail}",
            r.kind,
            key_of(&written),
            if status_only { " (status)" } else { "" }
        ));
        ok(&written)
    }

    fn patch(&self, target: &Target, content_type: &str, body: &[u8], params: &Params) -> Answer {
        let r = &target.resource;
        let name = target.name.as_deref().unwrap_or_default();
        let accepted = if r.schema.is_some() {
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
        } else {
            "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json"
        };
        let Some(patch_type) = PatchType::from_content_type(content_type)
            .filter(|t| !(*t == PatchType::Strategic && r.schema.is_some()))
        else {
            return Err(ApiError::unsupported_media_type(content_type, accepted));
        };
        if patch_type == PatchType::Apply {
            return self.apply(target, body, params);
        }
        let current = self.stored(target)?;
        if target.subresource.as_deref() == Some("scale") {
            let scale = patch::apply_patch(&scale_of(&current), "Scale", patch_type, body)
                .map_err(|e| ApiError::invalid("Scale.autoscaling", name, &[e]))?;
            return self.set_replicas(target, scale["spec"]["replicas"].clone());
        }
        let mut updated = patch::apply_patch(&current, &r.kind, patch_type, body)
            .map_err(|e| ApiError::invalid(&r.qualified_kind(), name, &[e]))?;
        check_fields(r, &mut updated, params)?;
        let expected = updated["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        self.write(
            target,
            updated,
            expected.as_deref(),
            "patch",
            format!(": {}", brief(body)),
        )
    }

    /// Server-side apply: create the object, or merge the applied configuration into it; the manager's
    /// fields are recorded in `managedFields`.
    fn apply(&self, target: &Target, body: &[u8], params: &Params) -> Answer {
        let r = &target.resource;
        let name = target.name.as_deref().unwrap_or_default();
        let ns = target.namespace.as_deref().unwrap_or_default();
        let Some(manager) = params.get("fieldManager").filter(|m| !m.is_empty()) else {
            return Err(ApiError::bad_request(
                "PATCH /apply requires fieldManager to be set",
            ));
        };
        let mut applied = decode_body(body)?;
        check_kind(r, &applied)?;
        check_fields(r, &mut applied, params)?;
        if target.namespace.is_some() {
            applied["metadata"]["namespace"] = json!(ns);
        }
        applied["metadata"]["name"] = json!(name);
        let now = self.now().to_string();
        let fields = patch::fields_v1(&applied, "");
        let existing = self.kube.store().get(&r.kind, ns, name).cloned();
        let (written, verb) = match existing {
            None => {
                let mut obj = applied;
                patch::record_manager(&mut obj, manager, "Apply", fields, &now);
                let made = self
                    .kube
                    .store()
                    .create(&r.kind, obj, self.now())
                    .map_err(|e| store_error(r, name, e))?;
                (made, "apply (create)")
            }
            Some(current) => {
                let mut updated = patch::server_side_apply(&current, &applied, manager, &r.kind);
                patch::record_manager(&mut updated, manager, "Apply", fields, &now);
                let rv = current["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                let status_only = target.subresource.as_deref() == Some("status");
                let written = self
                    .kube
                    .store()
                    .update(&r.kind, ns, name, updated, status_only, rv.as_deref())
                    .map_err(|e| store_error(r, name, e))?;
                (written, "apply")
            }
        };
        self.record(format!(
            "{verb} {} {} by {manager}",
            r.kind,
            key_of(&written)
        ));
        ok(&written)
    }

    fn set_replicas(&self, target: &Target, replicas: Value) -> Answer {
        let r = &target.resource;
        let name = target.name.as_deref().unwrap_or_default();
        let ns = target.namespace.as_deref().unwrap_or_default();
        let Some(n) = replicas.as_i64() else {
            return Err(ApiError::invalid(
                "Scale.autoscaling",
                name,
                &[format!(
                    "spec.replicas: Invalid value: {replicas}: must be an integer"
                )],
            ));
        };
        let current = self.stored(target)?;
        let before = current["spec"]["replicas"].as_i64().unwrap_or(1);
        let mut updated = current.clone();
        updated["spec"]["replicas"] = json!(n);
        let written = self
            .kube
            .store()
            .update(&r.kind, ns, name, updated, false, None)
            .map_err(|e| store_error(r, name, e))?;
        self.record(format!(
            "scale {} {} replicas {before} -> {n}",
            r.kind,
            key_of(&written)
        ));
        ok(&scale_of(&written))
    }

    fn post_subresource(&self, target: &Target, body: &[u8]) -> Answer {
        let name = target.name.clone().unwrap_or_default();
        let ns = target.namespace.clone().unwrap_or_default();
        let key = ObjectKey::namespaced(&ns, &name);
        match target.subresource.as_deref() {
            Some("eviction") => match self.kube.evict_now(&key) {
                Ok(()) => {
                    self.record(format!("evict Pod {key}"));
                    created(&success(json!({"name": name, "kind": "pods"})))
                }
                Err(KubeError::EvictionRefused { reason, .. }) => {
                    let mut e = ApiError::new(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                    );
                    e.details =
                        json!({"causes": [{"reason": "DisruptionBudget", "message": reason}]});
                    self.record(format!("evict Pod {key}: refused ({reason})"));
                    Err(e)
                }
                Err(_) => Err(ApiError::not_found("pods", &name)),
            },
            Some("binding") => {
                let binding = decode_body(body)?;
                let node = binding["target"]["name"].as_str().unwrap_or_default();
                if node.is_empty() {
                    return Err(ApiError::invalid(
                        "Binding",
                        &name,
                        &["target.name: Required value".to_string()],
                    ));
                }
                let pod = self.stored(target)?;
                if let Some(bound) = pod["spec"]["nodeName"].as_str() {
                    return Err(ApiError::conflict(
                        "pods/binding",
                        &name,
                        &format!("pod {name} is already assigned to node \"{bound}\""),
                    ));
                }
                let mut updated = pod.clone();
                updated["spec"]["nodeName"] = json!(node);
                self.kube
                    .store()
                    .update("Pod", &ns, &name, updated, false, None)
                    .map_err(|e| store_error(&target.resource, &name, e))?;
                self.record(format!("bind Pod {key} to {node}"));
                created(&success(json!({"name": name, "kind": "pods"})))
            }
            _ => Err(ApiError::method_not_allowed("POST")),
        }
    }

    fn delete_options(body: &[u8], params: &Params) -> Result<DeleteOptions, ApiError> {
        let opts = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            decode_body(body)?
        };
        let policy = opts["propagationPolicy"]
            .as_str()
            .or(params.get("propagationPolicy"))
            .unwrap_or("Background");
        if !matches!(policy, "Background" | "Foreground" | "Orphan") {
            return Err(ApiError::invalid(
                "DeleteOptions",
                "",
                &[format!(
                    "propagationPolicy: Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
                )],
            ));
        }
        let precondition = |f: &str| opts["preconditions"][f].as_str().map(str::to_string);
        Ok(DeleteOptions {
            uid: precondition("uid"),
            resource_version: precondition("resourceVersion"),
            orphan: policy == "Orphan" || opts["orphanDependents"] == true,
        })
    }

    fn delete(&self, target: &Target, body: &[u8], params: &Params) -> Answer {
        let r = &target.resource;
        let name = target.name.as_deref().unwrap_or_default();
        let ns = target.namespace.as_deref().unwrap_or_default();
        if target.subresource.is_some() {
            return Err(ApiError::method_not_allowed("DELETE"));
        }
        let options = Self::delete_options(body, params)?;
        let key = ObjectKey::namespaced(ns, name);
        let last = self
            .kube
            .delete_now(&r.kind, &key, self.now(), &options)
            .map_err(|e| store_error(r, name, e))?;
        self.record(format!("delete {} {key}", r.kind));
        ok(&last)
    }

    fn delete_collection(&self, target: &Target, body: &[u8], params: &Params) -> Answer {
        let r = &target.resource;
        let selection = self.selection(target, params)?;
        let options = Self::delete_options(body, params)?;
        let keys: Vec<ObjectKey> = self
            .kube
            .store()
            .iter(&r.kind)
            .filter(|o| selection.matches(o))
            .map(ObjectKey::of)
            .collect();
        let mut items = Vec::new();
        for key in keys {
            if let Ok(last) = self.kube.delete_now(&r.kind, &key, self.now(), &options) {
                self.record(format!("delete {} {key}", r.kind));
                items.push(last);
            }
        }
        ok(&json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.group_version(),
            "metadata": {"resourceVersion": self.kube.store().resource_version().to_string()},
            "items": items,
        }))
    }
}

/// Drop the fields a built-in kind's type lacks, as the API server's decoding does; with
/// `fieldValidation=Strict` (kubectl's default) refuse them instead, naming each.
fn check_fields(r: &Resource, object: &mut Value, params: &Params) -> Result<(), ApiError> {
    let unknown = strict::prune_unknown(&r.kind, object);
    if unknown.is_empty() || params.get("fieldValidation") != Some("Strict") {
        return Ok(());
    }
    let fields: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    Err(ApiError::bad_request(format!(
        "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
        fields.join(", "),
        kind = r.kind,
        version = r.version,
    )))
}

fn key_of(object: &Value) -> ObjectKey {
    ObjectKey::of(object)
}

/// A body's kind and apiVersion must be the resource's (either may be left out).
fn check_kind(r: &Resource, object: &Value) -> Result<(), ApiError> {
    if !object["metadata"].is_object() && !object["metadata"].is_null() {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    if let Some(kind) = object["kind"].as_str()
        && kind != r.kind
    {
        return Err(ApiError::bad_request(format!(
            "the body names kind {kind}, but the request is for {}",
            r.qualified()
        )));
    }
    if let Some(v) = object["apiVersion"].as_str()
        && v != r.group_version()
    {
        return Err(ApiError::bad_request(format!(
            "the body has apiVersion {v}, but {} is served at {}",
            r.qualified(),
            r.group_version()
        )));
    }
    Ok(())
}

/// The `autoscaling/v1` Scale of a Deployment, ReplicaSet or StatefulSet.
fn scale_of(object: &Value) -> Value {
    let m = &object["metadata"];
    let labels = object["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect::<Vec<_>>()
        .join(",");
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"],
            "namespace": m["namespace"],
            "uid": m["uid"],
            "resourceVersion": m["resourceVersion"],
            "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": object["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": object["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": labels,
        },
    })
}

async fn handle(
    State(server): State<ApiServer>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match server.dispatch(&method, &uri, &headers, &body) {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// Serve the API on a TCP listener until the future is dropped.
pub async fn serve(listener: tokio::net::TcpListener, server: ApiServer) -> std::io::Result<()> {
    axum::serve(listener, server.router()).await
}

/// Serve one connection over any byte stream (turmoil's simulated TCP inside a simulation).
pub async fn serve_connection<IO>(io: IO, server: ApiServer) -> Result<(), hyper::Error>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(server.router());
    hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await
}
