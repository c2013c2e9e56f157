//! Nodes: the termination controller and the drain rules it follows, node repair, and the disrupted
//! taint that termination and disruption both write.

pub mod drain;
pub mod health;
pub(crate) mod termination;

use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use crate::context::Context;
use crate::crds::labels;
use crate::error::ControllerError;
use crate::kube::{Kind, ObjectKey};
use crate::state::ClusterState;

pub(crate) use health::NodeHealth;
pub(crate) use termination::Terminator;

/// Add or remove `karpenter.sh/disrupted:NoSchedule`, keeping the node's other taints, and update the
/// cache. The resourceVersion makes the list replacement safe against a concurrent taint change.
pub(crate) async fn write_disrupted_taint(
    ctx: &Context,
    state: &mut ClusterState,
    node: &Node,
    on: bool,
) -> Result<(), ControllerError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut taints: Vec<serde_json::Value> =
        crate::state::node_taints_without(node, labels::DISRUPTED_TAINT)
            .into_iter()
            .map(|t| serde_json::to_value(t).unwrap_or_default())
            .collect();
    if on {
        taints.push(serde_json::to_value(drain::disrupted_taint()).unwrap_or_default());
    }
    let updated = ctx
            .kube
            .patch(
                Kind::Node,
                &ObjectKey::cluster(&name),
                json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": taints}}),
            )
            .await?;
    state.apply_event(Kind::Node, crate::kube::WatchEvent::Modified(updated))?;
    Ok(())
}
