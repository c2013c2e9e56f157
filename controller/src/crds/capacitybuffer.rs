//! `autoscaling.x-k8s.io/v1beta1` CapacityBuffer (the Cluster Autoscaler's API, as Karpenter v1.13+ reads
//! it): headroom declared as N chunks shaped like a PodTemplate or a workload's pods.

use std::collections::BTreeMap;

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// The only provisioning strategy an autoscaler acts on: placeholder pods that scale the cluster up.
pub const ACTIVE_CAPACITY: &str = "buffer.x-k8s.io/active-capacity";

/// Status condition types (the Cluster Autoscaler's names).
pub mod conditions {
    /// The buffer's pod shape and chunk count are resolved.
    pub const READY_FOR_PROVISIONING: &str = "ReadyForProvisioning";
    /// True when every chunk fits capacity that exists or is on its way.
    pub const PROVISIONING: &str = "Provisioning";
}

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "autoscaling.x-k8s.io",
    version = "v1beta1",
    kind = "CapacityBuffer",
    plural = "capacitybuffers",
    shortname = "cb",
    namespaced,
    status = "CapacityBufferStatus",
    category = "autoscaling",
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.provisioningStrategy"}"#,
    printcolumn = r#"{"name":"PodTemplate","type":"string","jsonPath":".status.podTemplateRef.name"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.replicas"}"#,
    printcolumn = r#"{"name":"ConditionsType","type":"string","jsonPath":".status.conditions[*].type"}"#,
    printcolumn = r#"{"name":"ConditionsStatus","type":"string","jsonPath":".status.conditions[*].status"}"#,
    printcolumn = r#"{"name":"ConditionsReason","type":"string","jsonPath":".status.conditions[*].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.podTemplateRef) || has(self.replicas) || has(self.limits)", "message": "If podTemplateRef is set, replicas or limits must also be set"},
    {"rule": "!(has(self.podTemplateRef) && has(self.scalableRef))", "message": "You must define either PodTemplateRef or ScalableRef, but not both"}
]))]
pub struct CapacityBufferSpec {
    /// How the buffer is used; only `buffer.x-k8s.io/active-capacity` (the default) is acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "buffer.x-k8s.io/active-capacity"))]
    pub provisioning_strategy: Option<String>,
    /// A PodTemplate in the buffer's namespace: the shape of one chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_ref: Option<LocalObjectRef>,
    /// A Deployment, StatefulSet or ReplicaSet in the buffer's namespace: chunks shaped like its pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scalable_ref: Option<ScalableRef>,
    /// Chunks wanted (with `percentage`, the larger of the two; `limits` caps either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
    /// Chunks as a percentage of the `scalableRef` workload's replicas, rounded up (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub percentage: Option<i32>,
    /// A resource budget: at most as many chunks as their requests fit in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::buffer_limits")]
    pub limits: Option<BTreeMap<String, serde_json::Value>>,
}

/// A reference to an object in the same namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectRef {
    #[schemars(length(min = 1))]
    pub name: String,
}

/// A reference to an object with a scale subresource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalableRef {
    /// Empty for the core group; Deployments, StatefulSets and ReplicaSets are `apps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    #[schemars(length(min = 1))]
    pub kind: String,
    #[schemars(length(min = 1))]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacityBufferStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_ref: Option<LocalObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisioning_strategy: Option<String>,
}

impl CapacityBuffer {
    /// The strategy in effect (the API server defaults it; a client-built object may not have it).
    pub fn strategy(&self) -> &str {
        self.spec
            .provisioning_strategy
            .as_deref()
            .unwrap_or(ACTIVE_CAPACITY)
    }
}
