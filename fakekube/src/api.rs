//! The API-server face of the store: dovetail's `Kube` trait, with request latency and PDB-aware eviction.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use dovetail::clock::Clock;
use dovetail::kube::{Kind, Kube, KubeError, ObjectKey, ObjectList, WatchEvent};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;

use crate::store::{Store, StoreError};

/// The fake API server. Clones share one store.
#[derive(Clone)]
pub struct FakeKube {
    store: Arc<Mutex<Store>>,
    clock: Arc<dyn Clock>,
    latency: Duration,
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
        StoreError::Conflict(..) => KubeError::Conflict {
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

fn label_selector_matches(selector: &Value, labels: &Value) -> bool {
    let match_labels = selector["matchLabels"].as_object();
    let ok_labels = match_labels.is_none_or(|m| m.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let ok_exprs = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let actual = labels.get(key).and_then(Value::as_str);
            match e["operator"].as_str() {
                Some("In") => actual.is_some_and(|a| values.contains(&a)),
                Some("NotIn") => actual.is_none_or(|a| !values.contains(&a)),
                Some("Exists") => actual.is_some(),
                Some("DoesNotExist") => actual.is_none(),
                _ => false,
            }
        })
    });
    ok_labels && ok_exprs
}

/// `intOrString` against a total: integers as is, percentages rounded up (as the disruption controller does).
fn scaled(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some((pct * total + 99) / 100)
        }
        _ => None,
    }
}

fn pod_healthy(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

impl FakeKube {
    pub fn new(store: Store, clock: Arc<dyn Clock>, latency: Duration) -> Self {
        FakeKube {
            store: Arc::new(Mutex::new(store)),
            clock,
            latency,
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
        let st = self.store();
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
        let labels = &pod["metadata"]["labels"];
        for pdb in st.list("PodDisruptionBudget") {
            if pdb["metadata"]["namespace"].as_str() != Some(ns)
                || !label_selector_matches(&pdb["spec"]["selector"], labels)
            {
                continue;
            }
            let selected: Vec<Value> = st
                .list("Pod")
                .into_iter()
                .filter(|p| {
                    p["metadata"]["namespace"].as_str() == Some(ns)
                        && label_selector_matches(
                            &pdb["spec"]["selector"],
                            &p["metadata"]["labels"],
                        )
                })
                .collect();
            let expected = selected.len() as i64;
            let healthy = selected.iter().filter(|p| pod_healthy(p)).count() as i64;
            let allowed = if let Some(min) = scaled(&pdb["spec"]["minAvailable"], expected) {
                healthy - min
            } else if let Some(max) = scaled(&pdb["spec"]["maxUnavailable"], expected) {
                max - (expected - healthy)
            } else {
                continue;
            };
            // Evicting a pod that is already unhealthy does not reduce availability.
            if allowed <= 0 && pod_healthy(pod) {
                let name = pdb["metadata"]["name"].as_str().unwrap_or_default();
                return Some(format!(
                    "Cannot evict pod as it would violate the pod's disruption budget {ns}/{name} ({healthy} healthy, {allowed} disruptions allowed)"
                ));
            }
        }
        None
    }
}

#[async_trait]
impl Kube for FakeKube {
    async fn list(&self, kind: Kind) -> Result<ObjectList, KubeError> {
        self.clock.sleep(self.latency).await;
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
        self.clock.sleep(self.latency).await;
        Ok(self
            .store()
            .get(kind.name(), &key.namespace, &key.name)
            .cloned())
    }

    async fn create(&self, kind: Kind, object: Value) -> Result<Value, KubeError> {
        self.clock.sleep(self.latency).await;
        let key = ObjectKey::of(&object);
        let now = self.clock.now();
        self.store()
            .create(kind.name(), object, now)
            .map_err(|e| to_kube_error(kind, &key, e))
    }

    async fn patch(&self, kind: Kind, key: &ObjectKey, patch: Value) -> Result<Value, KubeError> {
        self.clock.sleep(self.latency).await;
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
        self.clock.sleep(self.latency).await;
        self.store()
            .patch(kind.name(), &key.namespace, &key.name, &patch, true)
            .map_err(|e| to_kube_error(kind, key, e))
    }

    async fn delete(&self, kind: Kind, key: &ObjectKey) -> Result<(), KubeError> {
        self.clock.sleep(self.latency).await;
        let now = self.clock.now();
        self.store()
            .delete(kind.name(), &key.namespace, &key.name, now)
            .map_err(|e| to_kube_error(kind, key, e))
    }

    async fn evict(&self, key: &ObjectKey) -> Result<(), KubeError> {
        self.clock.sleep(self.latency).await;
        let Some(pod) = self.store().get("Pod", &key.namespace, &key.name).cloned() else {
            return Err(KubeError::NotFound {
                kind: Kind::Pod,
                key: key.clone(),
            });
        };
        if let Some(reason) = self.eviction_blocker(&pod) {
            return Err(KubeError::EvictionRefused {
                key: key.clone(),
                reason,
            });
        }
        let now = self.clock.now();
        self.store()
            .delete("Pod", &key.namespace, &key.name, now)
            .map_err(|e| to_kube_error(Kind::Pod, key, e))
    }
}
