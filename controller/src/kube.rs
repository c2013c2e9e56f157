//! The Kube seam: typed list / watch / get / create / patch / delete / evict against the Kubernetes API.
//!
//! Objects cross the seam as JSON, exactly as they travel over the wire, so the real adapter (kube-rs with
//! `DynamicObject`) and the in-memory API server map one-to-one; [`KubeExt`] adds typed convenience on top.

use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The kinds the controller reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod,
    Node,
    DaemonSet,
    PodDisruptionBudget,
    Lease,
    Event,
    NodePool,
    NodeClaim,
    EC2NodeClass,
    PersistentVolumeClaim,
    PersistentVolume,
    StorageClass,
    CSINode,
    NodeOverlay,
    CapacityBuffer,
    /// Read (never watched) to resolve a CapacityBuffer's pod shape.
    PodTemplate,
    Deployment,
    StatefulSet,
    ReplicaSet,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Node => "Node",
            Kind::DaemonSet => "DaemonSet",
            Kind::PodDisruptionBudget => "PodDisruptionBudget",
            Kind::Lease => "Lease",
            Kind::Event => "Event",
            Kind::NodePool => "NodePool",
            Kind::NodeClaim => "NodeClaim",
            Kind::EC2NodeClass => "EC2NodeClass",
            Kind::PersistentVolumeClaim => "PersistentVolumeClaim",
            Kind::PersistentVolume => "PersistentVolume",
            Kind::StorageClass => "StorageClass",
            Kind::CSINode => "CSINode",
            Kind::NodeOverlay => "NodeOverlay",
            Kind::CapacityBuffer => "CapacityBuffer",
            Kind::PodTemplate => "PodTemplate",
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::ReplicaSet => "ReplicaSet",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Pod
            | Kind::Node
            | Kind::Event
            | Kind::PersistentVolumeClaim
            | Kind::PersistentVolume
            | Kind::PodTemplate => "v1",
            Kind::StorageClass | Kind::CSINode => "storage.k8s.io/v1",
            Kind::DaemonSet | Kind::Deployment | Kind::StatefulSet | Kind::ReplicaSet => "apps/v1",
            Kind::PodDisruptionBudget => "policy/v1",
            Kind::Lease => "coordination.k8s.io/v1",
            Kind::NodePool | Kind::NodeClaim => "karpenter.sh/v1",
            Kind::EC2NodeClass => "karpenter.k8s.aws/v1",
            Kind::NodeOverlay => "karpenter.sh/v1alpha1",
            Kind::CapacityBuffer => "autoscaling.x-k8s.io/v1beta1",
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Node
                | Kind::NodePool
                | Kind::NodeClaim
                | Kind::EC2NodeClass
                | Kind::PersistentVolume
                | Kind::StorageClass
                | Kind::CSINode
                | Kind::NodeOverlay
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Names one object: namespace (empty for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn cluster(name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: String::new(),
            name: name.into(),
        }
    }

    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of a JSON object from its metadata.
    pub fn of(object: &Value) -> ObjectKey {
        let meta = &object["metadata"];
        ObjectKey {
            namespace: meta["namespace"].as_str().unwrap_or_default().to_string(),
            name: meta["name"].as_str().unwrap_or_default().to_string(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// A list answer: the items and the resourceVersion to watch from.
#[derive(Debug, Clone)]
pub struct ObjectList {
    pub resource_version: String,
    pub items: Vec<Value>,
}

/// One change seen by a watch, in the order the API server committed it.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    Added(Value),
    Modified(Value),
    Deleted(Value),
    /// The requested resourceVersion is too old (HTTP 410 inside the stream): list again.
    Expired,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KubeError {
    #[error("{kind} {key} not found")]
    NotFound { kind: Kind, key: ObjectKey },
    #[error("{kind} {key} already exists")]
    AlreadyExists { kind: Kind, key: ObjectKey },
    #[error(
        "conflict writing {kind} {key}: the object changed since it was read; read it again and retry"
    )]
    Conflict { kind: Kind, key: ObjectKey },
    #[error("eviction of pod {key} refused: {reason}")]
    EvictionRefused { key: ObjectKey, reason: String },
    #[error("{kind} {key} is invalid: {message}")]
    Invalid {
        kind: Kind,
        key: ObjectKey,
        message: String,
    },
    #[error("API server unavailable: {0}")]
    Unavailable(String),
    #[error("cannot decode {kind}: {message}")]
    Decode { kind: Kind, message: String },
}

/// The Kubernetes API as the controller needs it.
#[async_trait]
pub trait Kube: Send + Sync + 'static {
    /// The API server's Kubernetes version as `major.minor` (`GET /version`; EKS's `33+` read as `33`).
    async fn server_version(&self) -> Result<String, KubeError>;

    /// All objects of a kind, across namespaces.
    async fn list(&self, kind: Kind) -> Result<ObjectList, KubeError>;

    /// Changes of a kind after `resource_version`, in commit order.
    fn watch(&self, kind: Kind, resource_version: &str) -> BoxStream<'static, WatchEvent>;

    async fn get(&self, kind: Kind, key: &ObjectKey) -> Result<Option<Value>, KubeError>;

    async fn create(&self, kind: Kind, object: Value) -> Result<Value, KubeError>;

    /// JSON merge patch (RFC 7386) of the main resource.
    async fn patch(&self, kind: Kind, key: &ObjectKey, patch: Value) -> Result<Value, KubeError>;

    /// JSON merge patch of the `status` subresource.
    async fn patch_status(
        &self,
        kind: Kind,
        key: &ObjectKey,
        patch: Value,
    ) -> Result<Value, KubeError>;

    /// Request deletion; the object stays, with a deletionTimestamp, while it has finalizers.
    async fn delete(&self, kind: Kind, key: &ObjectKey) -> Result<(), KubeError>;

    /// The pod eviction subresource (honours PodDisruptionBudgets).
    async fn evict(&self, key: &ObjectKey) -> Result<(), KubeError>;
}

/// Typed helpers over the JSON seam.
pub fn decode<T: DeserializeOwned>(kind: Kind, value: Value) -> Result<T, KubeError> {
    serde_json::from_value(value).map_err(|e| KubeError::Decode {
        kind,
        message: e.to_string(),
    })
}

pub fn encode<T: Serialize>(kind: Kind, object: &T) -> Result<Value, KubeError> {
    serde_json::to_value(object).map_err(|e| KubeError::Decode {
        kind,
        message: e.to_string(),
    })
}
