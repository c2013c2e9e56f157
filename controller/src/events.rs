//! Kubernetes Events on the objects Dovetail acts on, so `kubectl describe` tells users what happened and why.

use serde_json::json;

use crate::context::Context;
use crate::kube::{Kind, ObjectKey};
use crate::state::ClusterState;

/// `Normal` or `Warning`, as Events spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Write one Event about `kind`/`key`. Best effort: an Event that cannot be written is noted in the
/// journal and never fails the work it describes. Returns whether it was written.
pub(crate) async fn emit(
    ctx: &Context,
    kind: Kind,
    key: &ObjectKey,
    uid: Option<String>,
    event_type: EventType,
    reason: &str,
    message: &str,
) -> bool {
    let now = ctx.clock.now().to_string();
    // Events of cluster-scoped objects live in `default`, as kubectl looks for them there.
    let namespace = if key.namespace.is_empty() {
        "default"
    } else {
        key.namespace.as_str()
    };
    let mut involved =
        json!({"apiVersion": kind.api_version(), "kind": kind.name(), "name": key.name});
    if !key.namespace.is_empty() {
        involved["namespace"] = json!(key.namespace);
    }
    if let Some(uid) = uid {
        involved["uid"] = json!(uid);
    }
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": format!("{}.", key.name), "namespace": namespace},
        "involvedObject": involved,
        "type": match event_type { EventType::Normal => "Normal", EventType::Warning => "Warning" },
        "reason": reason,
        "message": message,
        "source": {"component": "dovetail"},
        "reportingComponent": "dovetail",
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    });
    match ctx.kube.create(Kind::Event, event).await {
        Ok(_) => true,
        Err(e) => {
            ctx.journal.record(
                "event",
                format!(
                    "{reason} on {}/{key} not written: {e}",
                    kind.name().to_lowercase()
                ),
            );
            false
        }
    }
}

/// [`emit`] about a Node by name, with its uid when the cluster state knows it.
pub(crate) async fn on_node(
    ctx: &Context,
    state: &ClusterState,
    node: &str,
    event_type: EventType,
    reason: &str,
    message: &str,
) -> bool {
    let uid = state.nodes.get(node).and_then(|n| n.metadata.uid.clone());
    emit(
        ctx,
        Kind::Node,
        &ObjectKey::cluster(node),
        uid,
        event_type,
        reason,
        message,
    )
    .await
}
