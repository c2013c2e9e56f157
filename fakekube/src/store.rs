//! The object store: resourceVersions, optimistic concurrency, finalizers, owner cascades and ordered watches.

use std::collections::{BTreeMap, VecDeque};

use dovetail::kube::WatchEvent;
use jiff::Timestamp;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;
use serde_json::{Value, json};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::merge::merge_patch;

/// Kinds that live in a namespace (everything else is cluster-scoped).
const NAMESPACED: [&str; 16] = [
    "Pod",
    "PodTemplate",
    "CapacityBuffer",
    "DaemonSet",
    "PodDisruptionBudget",
    "Lease",
    "Event",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "Job",
    "PersistentVolumeClaim",
    "Service",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
];

/// How many watch events are kept for watches that resume from an older resourceVersion (the API server's
/// watch cache: minutes of changes, not the whole day; each event holds a full object).
const HISTORY: usize = 10_000;

/// (namespace, name) of an object.
pub fn ns_name(v: &Value) -> (String, String) {
    (
        meta_str(v, "namespace").to_string(),
        meta_str(v, "name").to_string(),
    )
}

pub fn is_namespaced(kind: &str) -> bool {
    NAMESPACED.contains(&kind)
}

/// (kind, namespace, name)
pub type Key = (String, String, String);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} {1} not found")]
    NotFound(String, String),
    #[error("{0} {1} already exists")]
    AlreadyExists(String, String),
    #[error("conflict on {0} {1}: resourceVersion {2} is stale")]
    Conflict(String, String, String),
    #[error("{0} is invalid: {1}")]
    Invalid(String, String),
    #[error("{0} {1}: precondition failed: {2}")]
    Precondition(String, String, String),
}

/// What a DELETE may ask beyond the name (the API's DeleteOptions, as far as the store acts on them).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Delete only if the object still has this uid.
    pub uid: Option<String>,
    /// Delete only if the object is still at this resourceVersion.
    pub resource_version: Option<String>,
    /// Leave dependents in place (their owner reference removed) instead of deleting them.
    pub orphan: bool,
}

struct Watcher {
    kind: String,
    tx: UnboundedSender<WatchEvent>,
}

pub struct Store {
    rv: u64,
    rng: ChaCha8Rng,
    event_rng: ChaCha8Rng,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<(u64, String, WatchEvent)>,
    watchers: Vec<Watcher>,
    placement: crate::placement::Placement,
    crds: crate::schema::Crds,
    /// What `GET /version` answers: `major.minor`.
    kubernetes_version: String,
}

/// The Kubernetes version a store reports unless told otherwise.
pub const DEFAULT_KUBERNETES_VERSION: &str = "1.33";

fn display(ns: &str, name: &str) -> String {
    if ns.is_empty() {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

/// Put `value` at `field` of an object, or take the field away when there is none.
fn set_or_remove(obj: &mut Value, field: &str, value: Option<Value>) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match value {
        Some(v) if !v.is_null() => {
            map.insert(field.to_string(), v);
        }
        _ => {
            map.shift_remove(field);
        }
    }
}

fn meta_str<'a>(v: &'a Value, field: &str) -> &'a str {
    v["metadata"][field].as_str().unwrap_or_default()
}

impl Store {
    pub fn new(rng: ChaCha8Rng) -> Store {
        let mut event_rng = rng.clone();
        event_rng.set_stream(1);
        Store {
            rv: 0,
            rng,
            event_rng,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            watchers: Vec::new(),
            placement: Default::default(),
            crds: Default::default(),
            kubernetes_version: DEFAULT_KUBERNETES_VERSION.to_string(),
        }
    }

    /// The `major.minor` this API server reports (`GET /version`).
    pub fn kubernetes_version(&self) -> &str {
        &self.kubernetes_version
    }

    pub fn set_kubernetes_version(&mut self, version: &str) {
        self.kubernetes_version = version.to_string();
    }

    /// Install a CustomResourceDefinition (as `kubectl apply` would): objects of its kind are defaulted and
    /// validated against its schema and CEL rules from now on.
    pub fn install_crd(&mut self, crd: &Value) -> Result<(), String> {
        self.crds.install(crd)
    }

    /// The installed CustomResourceDefinitions.
    pub fn crd_definitions(&self) -> impl Iterator<Item = &Value> {
        self.crds.definitions()
    }

    /// The CRD schema's complaints about `obj` of `kind` (after defaulting it in place), with their paths.
    pub fn schema_errors(
        &self,
        kind: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Vec<crate::schema::FieldError> {
        self.crds.admit(kind, obj, old)
    }

    /// What this API server would refuse in `obj` of `kind` (after defaulting it in place): the CRD's schema
    /// and rules, then the built-in admission. `old` is the stored object on an update.
    pub fn admission_errors(
        &self,
        kind: &str,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Vec<String> {
        let mut errors: Vec<String> = self
            .crds
            .admit(kind, obj, old)
            .iter()
            .map(ToString::to_string)
            .collect();
        if errors.is_empty()
            && let Err(e) = crate::admission::admit(kind, obj)
        {
            errors.push(e);
        }
        errors
    }

    /// Bindings that broke a placement invariant (see `placement`).
    pub fn placement_violations(&self) -> &[String] {
        &self.placement.violations
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn key_of(kind: &str, v: &Value) -> Key {
        (
            kind.to_string(),
            meta_str(v, "namespace").to_string(),
            meta_str(v, "name").to_string(),
        )
    }

    fn emit(&mut self, kind: &str, event: WatchEvent) {
        if kind == "Pod" {
            match &event {
                WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                    let objects = &self.objects;
                    let node = p["spec"]["nodeName"]
                        .as_str()
                        .and_then(|n| objects.get(&("Node".into(), String::new(), n.into())));
                    self.placement.written(p, node, |ns, name| {
                        objects.get(&("Pod".into(), ns.into(), name.into()))
                    });
                }
                WatchEvent::Deleted(p) => self.placement.removed(p),
                _ => {}
            }
        }
        self.watchers
            .retain(|w| w.kind != kind || w.tx.send(event.clone()).is_ok());
        self.history.push_back((self.rv, kind.to_string(), event));
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    /// Events and CSINodes draw from a stream of their own: how much a controller reports, and the
    /// record a kubelet keeps beside its Node, must not change the names and uids every other object gets.
    fn rng_for(&mut self, kind: &str) -> &mut ChaCha8Rng {
        if matches!(kind, "Event" | "CSINode") {
            &mut self.event_rng
        } else {
            &mut self.rng
        }
    }

    fn uid(&mut self, kind: &str) -> String {
        let rng = self.rng_for(kind);
        let a = rng.next_u64();
        let b = rng.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    fn generate_name(&mut self, kind: &str, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        let suffix: String = (0..5)
            .map(|_| ALPHABET[(self.rng_for(kind).next_u32() as usize) % ALPHABET.len()] as char)
            .collect();
        format!("{prefix}{suffix}")
    }

    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(kind.to_string(), ns.to_string(), name.to_string()))
    }

    /// All objects of a kind, in (namespace, name) order.
    /// Every object of a kind, borrowed (the control loops scan far more than they keep).
    pub fn iter<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .range((kind.to_string(), String::new(), String::new())..)
            .take_while(move |((k, _, _), _)| k == kind)
            .map(|(_, v)| v)
    }

    pub fn list(&self, kind: &str) -> Vec<Value> {
        self.objects
            .range((kind.to_string(), String::new(), String::new())..)
            .take_while(|((k, _, _), _)| k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn create(
        &mut self,
        kind: &str,
        mut obj: Value,
        now: Timestamp,
    ) -> Result<Value, StoreError> {
        if !obj["metadata"].is_object() {
            return Err(StoreError::Invalid(
                kind.to_string(),
                "metadata is required".into(),
            ));
        }
        if meta_str(&obj, "name").is_empty() {
            let prefix = meta_str(&obj, "generateName").to_string();
            if prefix.is_empty() {
                return Err(StoreError::Invalid(
                    kind.to_string(),
                    "metadata.name or metadata.generateName is required".into(),
                ));
            }
            obj["metadata"]["name"] = json!(self.generate_name(kind, &prefix));
        }
        if is_namespaced(kind) && meta_str(&obj, "namespace").is_empty() {
            obj["metadata"]["namespace"] = json!("default");
        }
        if !is_namespaced(kind)
            && let Some(m) = obj["metadata"].as_object_mut()
        {
            m.shift_remove("namespace");
        }
        let key = Store::key_of(kind, &obj);
        let mut errors = self.admission_errors(kind, &mut obj, None);
        if errors.is_empty()
            && let Err(e) = crate::plugins::admit(self, kind, &mut obj)
        {
            errors.push(e);
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(
                format!("{kind} {}", display(&key.1, &key.2)),
                errors.join("; "),
            ));
        }
        if self.objects.contains_key(&key) {
            return Err(StoreError::AlreadyExists(
                kind.to_string(),
                display(&key.1, &key.2),
            ));
        }
        self.rv += 1;
        let uid = self.uid(kind);
        let m = &mut obj["metadata"];
        m["uid"] = json!(uid);
        m["resourceVersion"] = json!(self.rv.to_string());
        m["creationTimestamp"] = json!(now.to_string());
        m["generation"] = json!(1);
        if let Some(m) = m.as_object_mut() {
            m.shift_remove("deletionTimestamp");
        }
        self.objects.insert(key, obj.clone());
        self.emit(kind, WatchEvent::Added(obj.clone()));
        Ok(obj)
    }

    /// Merge-patch an object. `status_only` patches the status subresource and ignores everything else;
    /// otherwise `status` is ignored, as the API server does for kinds with a status subresource. A
    /// `metadata.resourceVersion` in the patch is a precondition.
    pub fn patch(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        patch: &Value,
        status_only: bool,
    ) -> Result<Value, StoreError> {
        let key = (kind.to_string(), ns.to_string(), name.to_string());
        let Some(current) = self.objects.get(&key) else {
            return Err(StoreError::NotFound(kind.to_string(), display(ns, name)));
        };
        let expected = patch["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        let mut updated = current.clone();
        merge_patch(&mut updated, patch);
        self.update(kind, ns, name, updated, status_only, expected.as_deref())
    }

    /// Replace an object (PUT): `new` is the whole object as the writer wants it. Server-set metadata
    /// (uid, creationTimestamp, generation, resourceVersion, deletionTimestamp) stays the server's; a
    /// status write changes only `status`, any other write everything but `status`. `expected_rv` is the
    /// resourceVersion the writer read: another one conflicts.
    pub fn update(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        mut new: Value,
        status_only: bool,
        expected_rv: Option<&str>,
    ) -> Result<Value, StoreError> {
        let key = (kind.to_string(), ns.to_string(), name.to_string());
        let Some(current) = self.objects.get(&key) else {
            return Err(StoreError::NotFound(kind.to_string(), display(ns, name)));
        };
        if let Some(rv) = expected_rv
            && rv != meta_str(current, "resourceVersion")
        {
            return Err(StoreError::Conflict(
                kind.to_string(),
                display(ns, name),
                rv.to_string(),
            ));
        }
        let mut updated = if status_only {
            let mut u = current.clone();
            set_or_remove(&mut u, "status", new.get_mut("status").map(Value::take));
            u
        } else {
            set_or_remove(&mut new, "status", current.get("status").cloned());
            new
        };
        if !updated["metadata"].is_object() {
            updated["metadata"] = json!({});
        }
        for fixed in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
            "generation",
            "deletionTimestamp",
        ] {
            let was = current["metadata"].get(fixed).cloned();
            set_or_remove(&mut updated["metadata"], fixed, was);
        }
        let errors = self.admission_errors(kind, &mut updated, Some(current));
        if !errors.is_empty() {
            return Err(StoreError::Invalid(
                format!("{kind} {}", display(ns, name)),
                errors.join("; "),
            ));
        }
        if updated == *current {
            return Ok(updated);
        }
        if updated["spec"] != current["spec"] {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(1);
            updated["metadata"]["generation"] = json!(g + 1);
        }
        self.rv += 1;
        updated["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let deleting = !updated["metadata"]["deletionTimestamp"].is_null();
        let no_finalizers = updated["metadata"]["finalizers"]
            .as_array()
            .is_none_or(|f| f.is_empty());
        if deleting && no_finalizers {
            self.objects.remove(&key);
            self.emit(kind, WatchEvent::Deleted(updated.clone()));
            self.cascade(&updated);
        } else {
            self.objects.insert(key, updated.clone());
            self.emit(kind, WatchEvent::Modified(updated.clone()));
        }
        Ok(updated)
    }

    /// Request deletion: with finalizers the object stays, marked with a deletionTimestamp.
    pub fn delete(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.delete_with(kind, ns, name, now, &DeleteOptions::default())
            .map(|_| ())
    }

    /// Deletion with a DELETE's options: preconditions on uid and resourceVersion (a mismatch conflicts),
    /// and orphaning (dependents lose their owner reference instead of following it). Returns the object
    /// as it was last stored.
    pub fn delete_with(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        now: Timestamp,
        options: &DeleteOptions,
    ) -> Result<Value, StoreError> {
        let key = (kind.to_string(), ns.to_string(), name.to_string());
        let Some(current) = self.objects.get(&key).cloned() else {
            return Err(StoreError::NotFound(kind.to_string(), display(ns, name)));
        };
        for (field, wanted) in [
            ("uid", &options.uid),
            ("resourceVersion", &options.resource_version),
        ] {
            if let Some(wanted) = wanted
                && wanted != meta_str(&current, field)
            {
                return Err(StoreError::Precondition(
                    kind.to_string(),
                    display(ns, name),
                    format!(
                        "{field} in precondition: {wanted}, {field} in object meta: {}",
                        meta_str(&current, field)
                    ),
                ));
            }
        }
        if options.orphan {
            self.orphan_dependents(meta_str(&current, "uid"));
        }
        let has_finalizers = current["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers && !current["metadata"]["deletionTimestamp"].is_null() {
            // Already being deleted: nothing changes.
            return Ok(current);
        }
        self.rv += 1;
        let mut obj = current;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if has_finalizers {
            obj["metadata"]["deletionTimestamp"] = json!(now.to_string());
            self.objects.insert(key, obj.clone());
            self.emit(kind, WatchEvent::Modified(obj.clone()));
            return Ok(obj);
        }
        self.objects.remove(&key);
        self.emit(kind, WatchEvent::Deleted(obj.clone()));
        self.cascade(&obj);
        Ok(obj)
    }

    /// Take the owner reference to `uid` off every dependent (the `Orphan` propagation policy).
    fn orphan_dependents(&mut self, uid: &str) {
        if uid.is_empty() {
            return;
        }
        let owned = |v: &Value| {
            v["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)))
        };
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, v)| owned(v))
            .map(|(k, _)| k.clone())
            .collect();
        for (kind, ns, name) in dependents {
            let Some(mut v) = self
                .objects
                .get(&(kind.clone(), ns.clone(), name.clone()))
                .cloned()
            else {
                continue;
            };
            if let Some(refs) = v["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid));
            }
            let _ = self.update(&kind, &ns, &name, v, false, None);
        }
    }

    /// Garbage-collect dependents whose owner is gone (background propagation).
    fn cascade(&mut self, owner: &Value) {
        let uid = meta_str(owner, "uid").to_string();
        if uid.is_empty() {
            return;
        }
        let dependents: Vec<Key> = self
            .objects
            .iter()
            .filter(|(_, v)| {
                v["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| {
                        refs.iter().any(|r| r["uid"].as_str() == Some(uid.as_str()))
                    })
            })
            .map(|(k, _)| k.clone())
            .collect();
        let now = owner["metadata"]["deletionTimestamp"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        for (kind, ns, name) in dependents {
            let _ = self.delete(&kind, &ns, &name, now);
        }
    }

    /// Close every watch stream.
    pub fn disconnect_watches(&mut self) {
        self.watchers.clear();
    }

    /// Forget watch history up to the newest `keep` events; older resume points then get `Expired`.
    pub fn compact(&mut self, keep: usize) {
        while self.history.len() > keep {
            self.history.pop_front();
        }
    }

    /// Watch `kind` for changes after `resource_version`. Too old a version yields a single `Expired`.
    pub fn watch(&mut self, kind: &str, resource_version: u64) -> UnboundedReceiver<WatchEvent> {
        let (tx, rx) = unbounded_channel();
        let oldest = self.history.front().map_or(self.rv + 1, |(rv, _, _)| *rv);
        if resource_version + 1 < oldest && resource_version < self.rv {
            let _ = tx.send(WatchEvent::Expired);
            return rx;
        }
        for (rv, k, e) in &self.history {
            if *rv > resource_version && k == kind {
                let _ = tx.send(e.clone());
            }
        }
        self.watchers.push(Watcher {
            kind: kind.to_string(),
            tx,
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn store() -> Store {
        Store::new(ChaCha8Rng::seed_from_u64(1))
    }

    #[test]
    fn finalizers_hold_deletion_until_removed() {
        let mut s = store();
        let now = Timestamp::UNIX_EPOCH;
        s.create(
            "NodeClaim",
            json!({"metadata": {"name": "a", "finalizers": ["karpenter.sh/termination"]}}),
            now,
        )
        .unwrap();
        s.delete("NodeClaim", "", "a", now).unwrap();
        assert!(s.get("NodeClaim", "", "a").unwrap()["metadata"]["deletionTimestamp"].is_string());
        s.patch(
            "NodeClaim",
            "",
            "a",
            &json!({"metadata": {"finalizers": []}}),
            false,
        )
        .unwrap();
        assert!(s.get("NodeClaim", "", "a").is_none());
    }

    #[test]
    fn stale_resource_version_conflicts() {
        let mut s = store();
        s.create(
            "Node",
            json!({"metadata": {"name": "n"}}),
            Timestamp::UNIX_EPOCH,
        )
        .unwrap();
        s.patch(
            "Node",
            "",
            "n",
            &json!({"metadata": {"labels": {"a": "b"}}}),
            false,
        )
        .unwrap();
        let err = s.patch(
            "Node",
            "",
            "n",
            &json!({"metadata": {"resourceVersion": "1", "labels": {"a": "c"}}}),
            false,
        );
        assert!(matches!(err, Err(StoreError::Conflict(..))));
    }

    #[test]
    fn watches_replay_after_a_version_in_order() {
        let mut s = store();
        let now = Timestamp::UNIX_EPOCH;
        s.create("Pod", json!({"metadata": {"name": "a"}}), now)
            .unwrap();
        let rv = s.resource_version();
        s.create("Pod", json!({"metadata": {"name": "b"}}), now)
            .unwrap();
        s.create("Node", json!({"metadata": {"name": "n"}}), now)
            .unwrap();
        let mut rx = s.watch("Pod", rv);
        s.delete("Pod", "default", "a", now).unwrap();
        let first = rx.try_recv().unwrap();
        assert!(matches!(first, WatchEvent::Added(v) if v["metadata"]["name"] == "b"));
        assert!(matches!(rx.try_recv().unwrap(), WatchEvent::Deleted(_)));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn owner_deletion_cascades() {
        let mut s = store();
        let now = Timestamp::UNIX_EPOCH;
        let d = s
            .create("Deployment", json!({"metadata": {"name": "web"}}), now)
            .unwrap();
        let uid = d["metadata"]["uid"].clone();
        s.create("Pod", json!({"metadata": {"name": "web-1", "ownerReferences": [{"uid": uid, "kind": "Deployment", "name": "web"}]}}), now).unwrap();
        s.delete("Deployment", "default", "web", now).unwrap();
        assert!(s.get("Pod", "default", "web-1").is_none());
    }
}
