//! The API-server face of the store: dovetail's `Kube` trait, with request latency and PDB-aware eviction.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use dovetail::clock::Clock;
use dovetail::kube::{Kind, Kube, KubeError, ObjectKey, ObjectList, WatchEvent};
use futures::StreamExt;
use futures::stream::BoxStream;
use jiff::Timestamp;
use serde_json::Value;

use crate::store::{Store, StoreError};

/// The fake API server. Clones share one store.
#[derive(Clone)]
pub struct FakeKube {
    store: Arc<Mutex<Store>>,
    clock: Arc<dyn Clock>,
    latency: Duration,
    unavailable_until: Arc<Mutex<Option<Timestamp>>>,
    audit: Arc<Mutex<DisruptionAudit>>,
}

/// What happened to pods through the API: evictions granted and refused, and deletions that went around
/// a PodDisruptionBudget without the node's terminationGracePeriod allowing it (an invariant violation).
#[derive(Debug, Default, Clone)]
pub struct DisruptionAudit {
    pub evictions: u64,
    pub refused: u64,
    /// Budget overrides a terminationGracePeriod allowed.
    pub forced: u64,
    pub violations: Vec<String>,
}

fn to_kube_error(kind: Kind, key: &ObjectKey, e: StoreError) -> KubeError {
    match e {
        StoreError::NotFound(..) => KubeError::NotFound {
            kind,
            key: key.clone(),
        },
        StoreError::AlreadyExists(..) => KubeError::AlreadyExists {
            kind,
            key: key.clone(),
        },
        StoreError::Conflict(..) | StoreError::Precondition(..) => KubeError::Conflict {
            kind,
            key: key.clone(),
        },
        StoreError::Invalid(_, message) => KubeError::Invalid {
            kind,
            key: key.clone(),
            message,
        },
    }
}

impl FakeKube {
    pub fn new(store: Store, clock: Arc<dyn Clock>, latency: Duration) -> Self {
        FakeKube {
            store: Arc::new(Mutex::new(store)),
            clock,
            latency,
            unavailable_until: Arc::default(),
            audit: Arc::default(),
        }
    }

    /// Direct access for the simulated control plane (scheduler, kubelets, workload controllers).
    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Why evicting `pod` now would break a PodDisruptionBudget, if it would.
    pub fn eviction_blocker(&self, pod: &Value) -> Option<String> {
        crate::disruption::eviction_blocker(&self.store(), pod)
    }

    /// Evictions and budget overrides so far.
    /// Violations include the store's placement invariants (`placement`).
    pub fn audit(&self) -> DisruptionAudit {
        let mut audit = self.audit.lock().unwrap_or_else(|e| e.into_inner()).clone();
        audit
            .violations
            .extend(self.store().placement_violations().iter().cloned());
        audit
    }

    fn audit_mut(&self) -> MutexGuard<'_, DisruptionAudit> {
        self.audit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every call fails with `Unavailable` until `until` (an API server outage).
    pub fn set_unavailable(&self, until: Timestamp) {
        *self
            .unavailable_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(until);
    }

    /// Drop every open watch, as an API server restart or a load balancer timeout would.
    pub fn disconnect_watches(&self) {
        self.store().disconnect_watches();
    }

    async fn request(&self) -> Result<(), KubeError> {
        self.clock.sleep(self.latency).await;
        if self.is_down(self.clock.now()) {
            return Err(KubeError::Unavailable(
                "the API server is not answering (simulated outage)".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Kube for FakeKube {
    async fn server_version(&self) -> Result<String, KubeError> {
        self.request().await?;
        Ok(self.store().kubernetes_version().to_string())
    }

    async fn list(&self, kind: Kind) -> Result<ObjectList, KubeError> {
        self.request().await?;
        let st = self.store();
        Ok(ObjectList {
            resource_version: st.resource_version().to_string(),
            items: st.list(kind.name()),
        })
    }

    fn watch(&self, kind: Kind, resource_version: &str) -> BoxStream<'static, WatchEvent> {
        let rv: u64 = resource_version.parse().unwrap_or(0);
        let rx = self.store().watch(kind.name(), rv);
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .boxed()
    }

    async fn get(&self, kind: Kind, key: &ObjectKey) -> Result<Option<Value>, KubeError> {
        self.request().await?;
        Ok(self
            .store()
            .get(kind.name(), &key.namespace, &key.name)
            .cloned())
    }

    async fn create(&self, kind: Kind, object: Value) -> Result<Value, KubeError> {
        self.request().await?;
        let key = ObjectKey::of(&object);
        let now = self.clock.now();
        self.store()
            .create(kind.name(), object, now)
            .map_err(|e| to_kube_error(kind, &key, e))
    }

    async fn patch(&self, kind: Kind, key: &ObjectKey, patch: Value) -> Result<Value, KubeError> {
        self.request().await?;
        self.store()
            .patch(kind.name(), &key.namespace, &key.name, &patch, false)
            .map_err(|e| to_kube_error(kind, key, e))
    }

    async fn patch_status(
        &self,
        kind: Kind,
        key: &ObjectKey,
        patch: Value,
    ) -> Result<Value, KubeError> {
        self.request().await?;
        self.store()
            .patch(kind.name(), &key.namespace, &key.name, &patch, true)
            .map_err(|e| to_kube_error(kind, key, e))
    }

    async fn delete(&self, kind: Kind, key: &ObjectKey) -> Result<(), KubeError> {
        self.request().await?;
        let now = self.clock.now();
        if kind == Kind::Pod {
            self.audit_pod_delete(key);
        }
        self.store()
            .delete(kind.name(), &key.namespace, &key.name, now)
            .map_err(|e| to_kube_error(kind, key, e))
    }

    async fn evict(&self, key: &ObjectKey) -> Result<(), KubeError> {
        self.request().await?;
        self.evict_now(key)
    }
}

impl FakeKube {
    /// Whether the API server is down (a simulated outage) at `now`.
    pub fn is_down(&self, now: Timestamp) -> bool {
        self.unavailable_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|u| now < u)
    }

    /// The pod eviction subresource, answered at once: refused while a PodDisruptionBudget forbids it.
    pub fn evict_now(&self, key: &ObjectKey) -> Result<(), KubeError> {
        let Some(pod) = self.store().get("Pod", &key.namespace, &key.name).cloned() else {
            return Err(KubeError::NotFound {
                kind: Kind::Pod,
                key: key.clone(),
            });
        };
        if let Some(reason) = self.eviction_blocker(&pod) {
            self.audit_mut().refused += 1;
            return Err(KubeError::EvictionRefused {
                key: key.clone(),
                reason,
            });
        }
        let now = self.clock.now();
        self.store()
            .delete("Pod", &key.namespace, &key.name, now)
            .map_err(|e| to_kube_error(Kind::Pod, key, e))?;
        self.audit_mut().evictions += 1;
        Ok(())
    }

    /// A DELETE as the API answers it at once, pods' budgets audited as for [`Kube::delete`].
    pub fn delete_now(
        &self,
        kind: &str,
        key: &ObjectKey,
        now: Timestamp,
        options: &crate::store::DeleteOptions,
    ) -> Result<Value, StoreError> {
        if kind == "Pod" {
            self.audit_pod_delete(key);
        }
        self.store()
            .delete_with(kind, &key.namespace, &key.name, now, options)
    }
}

/// Whether a Node reports itself unhealthy: Ready not True, or another `...Ready` condition False (the
/// node monitoring agent's).
fn node_unhealthy(node: &Value) -> bool {
    let conditions = node["status"]["conditions"].as_array();
    let ready = conditions
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let component_failed = conditions.into_iter().flatten().any(|c| {
        c["type"]
            .as_str()
            .is_some_and(|t| t != "Ready" && t.ends_with("Ready"))
            && c["status"] == "False"
    });
    !ready || component_failed
}

impl FakeKube {
    /// A plain DELETE of a pod a budget protects is allowed only as Karpenter documents it: the pod's
    /// node is being deleted and its NodeClaim sets a terminationGracePeriod, or node repair replaces
    /// it (the node is unhealthy and the claim carries a termination timestamp). Anything else is
    /// recorded.
    fn audit_pod_delete(&self, key: &ObjectKey) {
        let st = self.store();
        let Some(pod) = st.get("Pod", &key.namespace, &key.name).cloned() else {
            return;
        };
        let Some(blocker) = crate::disruption::eviction_blocker(&st, &pod) else {
            return;
        };
        let node_name = pod["spec"]["nodeName"].as_str().unwrap_or_default();
        let node_deleting = st
            .get("Node", "", node_name)
            .is_some_and(|n| !n["metadata"]["deletionTimestamp"].is_null());
        let claim = st
            .iter("NodeClaim")
            .find(|c| c["status"]["nodeName"] == node_name);
        let grace_set = claim.is_some_and(|c| c["spec"]["terminationGracePeriod"].is_string());
        // Node repair's forceful termination, as Karpenter documents it: the node is unhealthy and its
        // claim carries a termination timestamp.
        let repaired = claim.is_some_and(|c| {
            c["metadata"]["annotations"]["karpenter.sh/nodeclaim-termination-timestamp"].is_string()
        }) && st.get("Node", "", node_name).is_some_and(node_unhealthy);
        drop(st);
        let mut audit = self.audit_mut();
        if node_deleting && (grace_set || repaired) {
            audit.forced += 1;
        } else {
            audit
                .violations
                .push(format!("pod {key} deleted around its budget: {blocker}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::SeedableRng;
    use serde_json::json;

    struct Fixed;
    #[async_trait]
    impl Clock for Fixed {
        fn now(&self) -> Timestamp {
            Timestamp::UNIX_EPOCH
        }
        async fn sleep(&self, _: Duration) {}
    }

    /// A pod a budget protects on a node being deleted, its claim stamped for termination; the node's
    /// Ready condition as given.
    fn cluster(ready: &str) -> FakeKube {
        let kube = FakeKube::new(
            Store::new(ChaCha8Rng::seed_from_u64(1)),
            Arc::new(Fixed),
            Duration::ZERO,
        );
        let now = Timestamp::UNIX_EPOCH;
        let mut st = kube.store();
        st.create("Node", json!({"metadata": {"name": "n1", "finalizers": ["karpenter.sh/termination"]},
            "status": {"allocatable": {"pods": "110"}, "conditions": [{"type": "Ready", "status": ready}]}}), now)
            .unwrap();
        st.create("NodeClaim", json!({"apiVersion": "karpenter.sh/v1", "metadata": {"name": "c1",
            "annotations": {"karpenter.sh/nodeclaim-termination-timestamp": "1970-01-01T00:00:00Z"}},
            "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
                "requirements": []},
            "status": {"nodeName": "n1"}}), now)
            .unwrap();
        st.create(
            "PodDisruptionBudget",
            json!({"metadata": {"name": "web", "namespace": "default"},
            "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
            now,
        )
        .unwrap();
        st.create(
            "Pod",
            json!({"metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}),
            now,
        )
        .unwrap();
        st.delete("Node", "", "n1", now).unwrap();
        drop(st);
        kube
    }

    #[test]
    fn node_repair_may_delete_past_a_budget_only_on_an_unhealthy_node() {
        let key = ObjectKey::namespaced("default", "web-1");
        let options = crate::store::DeleteOptions::default();
        let sick = cluster("Unknown");
        sick.delete_now("Pod", &key, Timestamp::UNIX_EPOCH, &options)
            .unwrap();
        let audit = sick.audit();
        assert_eq!(
            (audit.forced, audit.violations.len()),
            (1, 0),
            "{:?}",
            audit.violations
        );
        // The same delete on a healthy node is a repair of nothing: a violation.
        let healthy = cluster("True");
        healthy
            .delete_now("Pod", &key, Timestamp::UNIX_EPOCH, &options)
            .unwrap();
        let audit = healthy.audit();
        assert_eq!(audit.forced, 0);
        assert!(
            audit.violations[0].contains("deleted around its budget"),
            "{:?}",
            audit.violations
        );
    }
}
