//! `karpenter.sh/v1alpha1` NodeOverlay: price and extended-resource adjustments to the instance types the
//! scheduling simulation sees, for the types, offerings and NodePools its requirements select.

use std::collections::BTreeMap;

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

#[derive(CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "karpenter.sh",
    version = "v1alpha1",
    kind = "NodeOverlay",
    plural = "nodeoverlays",
    shortname = "overlays",
    status = "NodeOverlayStatus",
    category = "karpenter",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".spec.weight","priority":1}"#,
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
    {"rule": "!has(self.price) || !has(self.priceAdjustment)", "message": "cannot set both 'price' and 'priceAdjustment'"}
]))]
pub struct NodeOverlaySpec {
    /// Which instance types, offerings and NodePools it applies to: well-known labels, and the labels of
    /// NodePools' templates.
    #[schemars(length(max = 100), extend("x-kubernetes-validations" = [
        {"rule": "self.all(x, x.operator == 'NotIn' ? x.values.size() != 0 : true)", "message": "requirements with operator 'NotIn' must have a value defined"},
        {"rule": "self.all(x, x.operator == 'In' ? x.values.size() != 0 : true)", "message": "requirements with operator 'In' must have a value defined"},
        {"rule": "self.all(x, (x.operator == 'Gt' || x.operator == 'Lt' || x.operator == 'Gte' || x.operator == 'Lte') ? (x.values.size() == 1 && int(x.values[0]) >= 0) : true)", "message": "requirements operator 'Gt', 'Lt', 'Gte' or 'Lte' must have a single positive integer value"}
    ]))]
    pub requirements: Vec<OverlayRequirement>,
    /// A change to the price: `+0.1` / `-0.05` (USD per hour) or `+10%` / `-15%`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^(([+-]{1}(\d*\.?\d+))|(\+{1}\d*\.?\d+%)|(^(-\d{1,2}(\.\d+)?%)$)|(-100%))$"
    ))]
    pub price_adjustment: Option<String>,
    /// The price itself (USD per hour), replacing what the cloud says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\d+(\.\d+)?$"))]
    pub price: Option<String>,
    /// Extended resources added to the nodes' capacity (never cpu, memory, ephemeral-storage or pods).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "super::schema::overlay_capacity")]
    pub capacity: BTreeMap<String, String>,
    /// Higher wins where overlays overlap; equal weights that set the same thing conflict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub weight: Option<i32>,
}

/// A node selector requirement without `minValues`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OverlayRequirement {
    pub key: String,
    #[schemars(extend("enum" = ["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "Gte", "Lte"]))]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NodeOverlayStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
