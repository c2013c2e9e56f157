//! Karpenter's custom resources with their real v1 field names: NodePool, NodeClaim, EC2NodeClass.

pub mod capacitybuffer;
pub mod ec2nodeclass;
pub mod migrate;
pub mod nodeclaim;
pub mod nodeoverlay;
pub mod nodepool;
pub mod schema;
pub mod unacted;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use capacitybuffer::{CapacityBuffer, CapacityBufferSpec};
pub use ec2nodeclass::{EC2NodeClass, EC2NodeClassSpec};
pub use nodeclaim::{NodeClaim, NodeClaimSpec, NodeClaimStatus};
pub use nodeoverlay::{NodeOverlay, NodeOverlaySpec};
pub use nodepool::{NodePool, NodePoolSpec};

/// Well-known labels and annotations Karpenter defines.
pub mod labels {
    pub const NODEPOOL: &str = "karpenter.sh/nodepool";
    pub const CAPACITY_TYPE: &str = "karpenter.sh/capacity-type";
    /// The reservation a `reserved` node runs in, its type (`default` / `capacity-block`) and whether EC2
    /// may reclaim it: offering labels, set only on reserved capacity.
    pub const CAPACITY_RESERVATION_ID: &str = "karpenter.k8s.aws/capacity-reservation-id";
    pub const CAPACITY_RESERVATION_TYPE: &str = "karpenter.k8s.aws/capacity-reservation-type";
    pub const CAPACITY_RESERVATION_INTERRUPTIBLE: &str =
        "karpenter.k8s.aws/capacity-reservation-interruptible";
    /// Labels only a reserved offering carries: a node of any other offering lacks them.
    pub const RESERVATION_LABELS: [&str; 3] = [
        CAPACITY_RESERVATION_ID,
        CAPACITY_RESERVATION_TYPE,
        CAPACITY_RESERVATION_INTERRUPTIBLE,
    ];
    pub const REGISTERED: &str = "karpenter.sh/registered";
    pub const INITIALIZED: &str = "karpenter.sh/initialized";
    pub const DO_NOT_DISRUPT: &str = "karpenter.sh/do-not-disrupt";
    pub const NODECLASS: &str = "karpenter.k8s.aws/ec2nodeclass";
    pub const INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
    pub const ZONE: &str = "topology.kubernetes.io/zone";
    pub const REGION: &str = "topology.kubernetes.io/region";
    pub const ARCH: &str = "kubernetes.io/arch";
    pub const OS: &str = "kubernetes.io/os";
    pub const HOSTNAME: &str = "kubernetes.io/hostname";
    pub const INSTANCE_CATEGORY: &str = "karpenter.k8s.aws/instance-category";
    pub const INSTANCE_FAMILY: &str = "karpenter.k8s.aws/instance-family";
    pub const INSTANCE_GENERATION: &str = "karpenter.k8s.aws/instance-generation";
    pub const INSTANCE_SIZE: &str = "karpenter.k8s.aws/instance-size";
    pub const INSTANCE_CPU: &str = "karpenter.k8s.aws/instance-cpu";
    pub const INSTANCE_MEMORY: &str = "karpenter.k8s.aws/instance-memory";
    pub const INSTANCE_HYPERVISOR: &str = "karpenter.k8s.aws/instance-hypervisor";
    pub const INSTANCE_GPU_COUNT: &str = "karpenter.k8s.aws/instance-gpu-count";
    pub const INSTANCE_GPU_NAME: &str = "karpenter.k8s.aws/instance-gpu-name";
    /// Neuron (Inferentia / Trainium) accelerators; absent on types without them.
    pub const INSTANCE_ACCELERATOR_COUNT: &str = "karpenter.k8s.aws/instance-accelerator-count";
    pub const WINDOWS_BUILD: &str = "node.kubernetes.io/windows-build";
    pub const TERMINATION_FINALIZER: &str = "karpenter.sh/termination";
    pub const UNREGISTERED_TAINT: &str = "karpenter.sh/unregistered";
    pub const DISRUPTED_TAINT: &str = "karpenter.sh/disrupted";
    /// Annotation on a NodeClaim: the hash of its NodePool's template when it was created.
    pub const POOL_HASH: &str = "karpenter.sh/nodepool-hash";
    /// When a NodeClaim's drain must end: pods still there are deleted, not evicted (Karpenter sets it
    /// from the terminationGracePeriod, and node repair to the moment it repairs).
    pub const TERMINATION_TIMESTAMP: &str = "karpenter.sh/nodeclaim-termination-timestamp";
    /// Annotation on a NodeClaim launched with fewer types than a `minValues` asked (BestEffort policy).
    pub const MIN_VALUES_RELAXED: &str = "karpenter.sh/nodeclaim-min-values-relaxed";
    /// Annotation on a consolidation replacement: the hourly price it must stay under (what it replaces).
    pub const MAX_PRICE: &str = "dovetail.dev/max-price";
    /// EC2 tags Karpenter puts on what it launches.
    pub const TAG_CLUSTER_PREFIX: &str = "kubernetes.io/cluster/";
    pub const TAG_NODECLAIM: &str = "karpenter.sh/nodeclaim";
    pub const TAG_MANAGED_BY: &str = "karpenter.sh/managed-by";
}

/// A node selector requirement with Karpenter's `minValues` extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorRequirementWithMinValues {
    #[schemars(
        length(max = 316),
        regex(pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(\/))?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"),
        extend("x-kubernetes-validations" = [
            {"rule": "self in ['karpenter.sh/capacity-type', 'karpenter.sh/nodepool'] || !self.find('^([^/]+)').endsWith('karpenter.sh')",
             "message": "the label domain karpenter.sh is restricted (only karpenter.sh/capacity-type and karpenter.sh/nodepool may be required)"},
            {"rule": "self != 'kubernetes.io/hostname'",
             "message": "the label kubernetes.io/hostname is restricted"}
        ])
    )]
    pub key: String,
    #[schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "Gte", "Lte"]))]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(
        length(max = 63),
        regex(pattern = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
    ))]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 50))]
    pub min_values: Option<i64>,
}

/// Reference from a NodePool / NodeClaim to its node class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeClassReference {
    #[schemars(
        regex(pattern = r"^[^/]*$"),
        extend("x-kubernetes-validations" = [{"rule": "self != ''", "message": "group may not be empty"}])
    )]
    pub group: String,
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self != ''", "message": "kind may not be empty"}]))]
    pub kind: String,
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self != ''", "message": "name may not be empty"}]))]
    pub name: String,
}

/// A Kubernetes taint (`key`, `value`, `effect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    #[schemars(
        length(min = 1),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(\/))?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
        )
    )]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(\/))?([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$"
    ))]
    pub value: Option<String>,
    #[schemars(extend("enum" = ["NoSchedule", "PreferNoSchedule", "NoExecute"]))]
    pub effect: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub time_added: Option<String>,
}

/// A status condition in the shape Karpenter uses (`metav1.Condition`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Labels / annotations of a NodePool's node template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "schema::template_labels")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Sets condition `type_` on a list, keeping others; returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, condition: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        Some(existing)
            if existing.status == condition.status && existing.reason == condition.reason =>
        {
            false
        }
        Some(existing) => {
            *existing = condition;
            true
        }
        None => {
            conditions.push(condition);
            true
        }
    }
}

/// The CustomResourceDefinitions, generated from these types, with the file names Karpenter's chart uses;
/// `cargo xtask crds` writes them to `deploy/crds/`.
pub fn definitions() -> Vec<(
    &'static str,
    k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
)> {
    use kube_core::CustomResourceExt;
    let mut crds = vec![
        ("karpenter.sh_nodepools.yaml", NodePool::crd()),
        ("karpenter.sh_nodeclaims.yaml", NodeClaim::crd()),
        ("karpenter.k8s.aws_ec2nodeclasses.yaml", EC2NodeClass::crd()),
        ("karpenter.sh_nodeoverlays.yaml", NodeOverlay::crd()),
        (
            "autoscaling.x-k8s.io_capacitybuffers.yaml",
            CapacityBuffer::crd(),
        ),
    ];
    for (_, crd) in &mut crds {
        for version in &mut crd.spec.versions {
            let status = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
                .and_then(|s| s.properties.as_mut())
                .and_then(|p| p.get_mut("status"));
            if let Some(status) = status {
                without_rules(status);
            }
        }
    }
    crds
}

/// The schema without its CEL rules. A status is written by the controller, not by people, and is not
/// checked (Karpenter's CRDs carry no rules there either); the types a status shares with a spec (an
/// EC2NodeClass's `status.amis[].requirements`) would otherwise carry the spec's rules into an unbounded
/// list of lists, whose estimated CEL cost kube-apiserver refuses (28x over budget, found by `cargo xtask
/// e2e`).
fn without_rules(
    schema: &mut k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
) {
    schema.x_kubernetes_validations = None;
    for p in schema.properties.iter_mut().flat_map(|m| m.values_mut()) {
        without_rules(p);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrArray::Schema(items)) =
        schema.items.as_mut()
    {
        without_rules(items);
    }
    if let Some(k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaPropsOrBool::Schema(extra)) =
        schema.additional_properties.as_mut()
    {
        without_rules(extra);
    }
}

/// [`definitions`] as the YAML files committed in `deploy/crds/`.
pub fn definitions_yaml() -> Result<Vec<(&'static str, String)>, String> {
    definitions()
        .into_iter()
        .map(|(file, crd)| {
            let body = serde_saphyr::to_string(&crd).map_err(|e| format!("{file}: {e}"))?;
            Ok((
                file,
                format!("# Generated by `cargo xtask crds` from controller/src/crds; do not edit.\n{body}"),
            ))
        })
        .collect()
}
