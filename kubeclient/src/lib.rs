//! dovetail-kubeclient — the Kube seam on kube-rs: every kind as a `DynamicObject` through a fixed `ApiResource` (no discovery
//! round trips), errors mapped to the seam's, and watches that resume from their last resourceVersion.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, EvictParams, ListParams, Patch, PatchParams,
    PostParams, WatchParams,
};
use kube::core::{TypeMeta, WatchEvent as KubeEvent};
use serde_json::Value;

use dovetail::kube::{Kind, Kube, KubeError, ObjectKey, ObjectList, WatchEvent};

/// How long the API server keeps one watch request open before the adapter reopens it.
const WATCH_TIMEOUT_SECS: u32 = 290;
/// Pause before reopening a watch that failed for a reason other than an expired version.
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// The real Kubernetes API.
#[derive(Clone)]
pub struct KubeRs {
    client: kube::Client,
}

/// Group, version and plural of each kind (what discovery would answer).
pub fn resource(kind: Kind) -> ApiResource {
    let api_version = kind.api_version();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        Kind::Pod => "pods",
        Kind::Node => "nodes",
        Kind::DaemonSet => "daemonsets",
        Kind::PodDisruptionBudget => "poddisruptionbudgets",
        Kind::Lease => "leases",
        Kind::Event => "events",
        Kind::NodePool => "nodepools",
        Kind::NodeClaim => "nodeclaims",
        Kind::EC2NodeClass => "ec2nodeclasses",
        Kind::PersistentVolumeClaim => "persistentvolumeclaims",
        Kind::PersistentVolume => "persistentvolumes",
        Kind::StorageClass => "storageclasses",
        Kind::CSINode => "csinodes",
        Kind::NodeOverlay => "nodeoverlays",
        Kind::CapacityBuffer => "capacitybuffers",
        Kind::PodTemplate => "podtemplates",
        Kind::Deployment => "deployments",
        Kind::StatefulSet => "statefulsets",
        Kind::ReplicaSet => "replicasets",
    };
    ApiResource {
        group: group.to_string(),
        version: version.to_string(),
        api_version: api_version.to_string(),
        kind: kind.name().to_string(),
        plural: plural.to_string(),
    }
}

/// A kube-rs client for `config`. Two TLS providers are linked (kube's ring, the AWS SDK's aws-lc), so
/// rustls cannot choose one itself: ring is installed for the process first. kube's own retry of 429 / 503
/// / 504 is turned off: it would hold a PodDisruptionBudget's refusal for up to 15 backed-off attempts
/// (minutes) inside one call, where the controller's loops retry on their own schedule.
pub fn client(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    config.default_retry = false;
    kube::Client::try_from(config)
}

/// kube-rs's error as the seam's: the HTTP status and reason decide.
fn seam_error(kind: Kind, key: &ObjectKey, e: kube::Error) -> KubeError {
    match e {
        kube::Error::Api(status) => match (status.code, status.reason.as_str()) {
            (404, _) => KubeError::NotFound {
                kind,
                key: key.clone(),
            },
            (409, "AlreadyExists") => KubeError::AlreadyExists {
                kind,
                key: key.clone(),
            },
            (409, _) => KubeError::Conflict {
                kind,
                key: key.clone(),
            },
            // The eviction API answers 429 when a PodDisruptionBudget forbids the eviction now.
            (429, _) if kind == Kind::Pod => KubeError::EvictionRefused {
                key: key.clone(),
                reason: status.message,
            },
            (400 | 422, _) => KubeError::Invalid {
                kind,
                key: key.clone(),
                message: status.message,
            },
            (code, _) => {
                KubeError::Unavailable(format!("{kind} {key}: HTTP {code}: {}", status.message))
            }
        },
        other => KubeError::Unavailable(format!("{kind} {key}: {other}")),
    }
}

/// An object as the seam carries it: JSON with its apiVersion and kind (list items come without them).
fn to_value(kind: Kind, mut object: DynamicObject) -> Value {
    if object.types.is_none() {
        object.types = Some(TypeMeta {
            api_version: kind.api_version().to_string(),
            kind: kind.name().to_string(),
        });
    }
    serde_json::to_value(object).unwrap_or(Value::Null)
}

fn from_value(kind: Kind, key: &ObjectKey, object: Value) -> Result<DynamicObject, KubeError> {
    serde_json::from_value(object).map_err(|e| KubeError::Invalid {
        kind,
        key: key.clone(),
        message: e.to_string(),
    })
}

impl KubeRs {
    pub fn new(client: kube::Client) -> KubeRs {
        KubeRs { client }
    }

    /// In a pod: the ServiceAccount; elsewhere: KUBECONFIG or ~/.kube/config.
    pub async fn from_environment() -> Result<KubeRs, kube::Error> {
        let config = kube::Config::infer()
            .await
            .map_err(kube::Error::InferConfig)?;
        Ok(KubeRs::new(client(config)?))
    }

    fn all(&self, kind: Kind) -> Api<DynamicObject> {
        Api::all_with(self.client.clone(), &resource(kind))
    }

    fn api(&self, kind: Kind, namespace: &str) -> Api<DynamicObject> {
        if kind.namespaced() {
            Api::namespaced_with(self.client.clone(), namespace, &resource(kind))
        } else {
            self.all(kind)
        }
    }
}

/// Where a watch is: the version to resume from and the open response, if any.
struct WatchState {
    api: Api<DynamicObject>,
    kind: Kind,
    version: String,
    open: Option<BoxStream<'static, Result<KubeEvent<DynamicObject>, kube::Error>>>,
    expired: bool,
}

impl WatchState {
    /// The next change, reopening the request when the server ends it; `Expired` (then the end) when the
    /// version is too old to resume from.
    async fn next(mut self) -> Option<(WatchEvent, WatchState)> {
        loop {
            if self.expired {
                return None;
            }
            let mut open = match self.open.take() {
                Some(open) => open,
                None => {
                    let params = WatchParams::default().timeout(WATCH_TIMEOUT_SECS);
                    match self.api.watch(&params, &self.version).await {
                        Ok(s) => s.boxed(),
                        Err(kube::Error::Api(s)) if s.code == 410 => {
                            self.expired = true;
                            return Some((WatchEvent::Expired, self));
                        }
                        Err(e) => {
                            tracing::warn!(kind = %self.kind, error = %e, "watch failed; reopening");
                            tokio::time::sleep(WATCH_RETRY).await;
                            continue;
                        }
                    }
                }
            };
            let Some(item) = open.next().await else {
                // The server's timeout: carry on from the last version seen.
                continue;
            };
            self.open = Some(open);
            let kind = self.kind;
            let seen = |o: &DynamicObject, state: &mut WatchState| {
                if let Some(v) = &o.metadata.resource_version {
                    state.version = v.clone();
                }
            };
            let event = match item {
                Ok(KubeEvent::Added(o)) => {
                    seen(&o, &mut self);
                    WatchEvent::Added(to_value(kind, o))
                }
                Ok(KubeEvent::Modified(o)) => {
                    seen(&o, &mut self);
                    WatchEvent::Modified(to_value(kind, o))
                }
                Ok(KubeEvent::Deleted(o)) => {
                    seen(&o, &mut self);
                    WatchEvent::Deleted(to_value(kind, o))
                }
                Ok(KubeEvent::Bookmark(b)) => {
                    self.version = b.metadata.resource_version;
                    continue;
                }
                Ok(KubeEvent::Error(status)) if status.code == 410 => {
                    self.expired = true;
                    self.open = None;
                    WatchEvent::Expired
                }
                Ok(KubeEvent::Error(status)) => {
                    tracing::warn!(kind = %kind, code = status.code, message = %status.message, "watch error; reopening");
                    self.open = None;
                    tokio::time::sleep(WATCH_RETRY).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(kind = %kind, error = %e, "watch stream broke; reopening");
                    self.open = None;
                    tokio::time::sleep(WATCH_RETRY).await;
                    continue;
                }
            };
            return Some((event, self));
        }
    }
}

#[async_trait]
impl Kube for KubeRs {
    async fn server_version(&self) -> Result<String, KubeError> {
        let info = self
            .client
            .apiserver_version()
            .await
            .map_err(|e| KubeError::Unavailable(format!("GET /version: {e}")))?;
        Ok(format!(
            "{}.{}",
            info.major,
            info.minor.trim_end_matches('+')
        ))
    }

    async fn list(&self, kind: Kind) -> Result<ObjectList, KubeError> {
        let key = ObjectKey::cluster("(list)");
        let api = self.all(kind);
        let mut items = Vec::new();
        let mut params = ListParams::default().limit(500);
        loop {
            let page = api
                .list(&params)
                .await
                .map_err(|e| seam_error(kind, &key, e))?;
            let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
            let version = page.metadata.resource_version.clone().unwrap_or_default();
            items.extend(page.items.into_iter().map(|o| to_value(kind, o)));
            match next {
                Some(token) => params = params.continue_token(&token),
                None => {
                    return Ok(ObjectList {
                        resource_version: version,
                        items,
                    });
                }
            }
        }
    }

    fn watch(&self, kind: Kind, resource_version: &str) -> BoxStream<'static, WatchEvent> {
        let state = WatchState {
            api: self.all(kind),
            kind,
            version: resource_version.to_string(),
            open: None,
            expired: false,
        };
        futures::stream::unfold(state, WatchState::next).boxed()
    }

    async fn get(&self, kind: Kind, key: &ObjectKey) -> Result<Option<Value>, KubeError> {
        self.api(kind, &key.namespace)
            .get_opt(&key.name)
            .await
            .map(|o| o.map(|o| to_value(kind, o)))
            .map_err(|e| seam_error(kind, key, e))
    }

    async fn create(&self, kind: Kind, object: Value) -> Result<Value, KubeError> {
        let key = ObjectKey::of(&object);
        let object = from_value(kind, &key, object)?;
        self.api(kind, &key.namespace)
            .create(&PostParams::default(), &object)
            .await
            .map(|o| to_value(kind, o))
            .map_err(|e| seam_error(kind, &key, e))
    }

    async fn patch(&self, kind: Kind, key: &ObjectKey, patch: Value) -> Result<Value, KubeError> {
        self.api(kind, &key.namespace)
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|o| to_value(kind, o))
            .map_err(|e| seam_error(kind, key, e))
    }

    async fn patch_status(
        &self,
        kind: Kind,
        key: &ObjectKey,
        patch: Value,
    ) -> Result<Value, KubeError> {
        self.api(kind, &key.namespace)
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|o| to_value(kind, o))
            .map_err(|e| seam_error(kind, key, e))
    }

    async fn delete(&self, kind: Kind, key: &ObjectKey) -> Result<(), KubeError> {
        self.api(kind, &key.namespace)
            .delete(&key.name, &DeleteParams::default())
            .await
            .map(|_| ())
            .map_err(|e| seam_error(kind, key, e))
    }

    async fn evict(&self, key: &ObjectKey) -> Result<(), KubeError> {
        Api::<k8s_openapi::api::core::v1::Pod>::namespaced(self.client.clone(), &key.namespace)
            .evict(&key.name, &EvictParams::default())
            .await
            .map(|_| ())
            .map_err(|e| seam_error(Kind::Pod, key, e))
    }
}
