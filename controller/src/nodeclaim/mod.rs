//! NodeClaims: the lifecycle controller (launch, register, initialize, finalize) and garbage collection
//! with Karpenter's liveness rules.

pub(crate) mod gc;
pub(crate) mod lifecycle;

pub(crate) use gc::GarbageCollector;
pub(crate) use lifecycle::Lifecycle;

use serde_json::{Value, json};

use crate::context::Context;
use crate::error::ControllerError;
use crate::kube::{Kind, ObjectKey};
use crate::state::ClusterState;

/// A NodeClaim condition to write: type, status, reason, message (Karpenter gives True conditions reasons
/// too: `Drifted` says `AMIDrift`, `DisruptionReason` says `Underutilized`).
pub(crate) type ClaimCondition<'a> = (&'a str, bool, &'a str, String);

/// Write a claim's conditions, as [`write_status`] does, tolerating a claim deleted meanwhile (nothing left
/// to describe).
pub(crate) async fn write_conditions(
    ctx: &Context,
    state: &mut ClusterState,
    claim: &str,
    set: &[ClaimCondition<'_>],
    clear: &[&str],
) -> Result<(), ControllerError> {
    match write_status(ctx, state, claim, set, clear, Value::Null).await {
        Err(ControllerError::Kube(crate::kube::KubeError::NotFound { .. })) => Ok(()),
        other => other,
    }
}

/// One status patch of a claim: `set` conditions over its list (a transition time moves only with the
/// status), the `clear` types removed, and the `extra` status fields (an object, or null for none).
/// Nothing is written when the conditions do not change and there are no extra fields. The cache takes
/// the answer.
pub(crate) async fn write_status(
    ctx: &Context,
    state: &mut ClusterState,
    claim: &str,
    set: &[ClaimCondition<'_>],
    clear: &[&str],
    extra: Value,
) -> Result<(), ControllerError> {
    let Some(current) = state.nodeclaims.get(claim) else {
        return Ok(());
    };
    let old =
        crate::conditions::as_values(current.status.as_ref().map(|s| s.conditions.as_slice()));
    let now = ctx.clock.now().to_string();
    let mut conditions: Vec<Value> = old
        .iter()
        .filter(|c| !clear.iter().any(|t| c["type"] == *t) && !set.iter().any(|d| c["type"] == d.0))
        .cloned()
        .collect();
    for (type_, ok, reason, message) in set {
        let status = if *ok { "True" } else { "False" };
        let since = old
            .iter()
            .find(|c| c["type"] == *type_ && c["status"] == status)
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(&now)
            .to_string();
        let mut c =
            json!({"type": type_, "status": status, "reason": reason, "lastTransitionTime": since});
        if !message.is_empty() {
            c["message"] = json!(message);
        }
        conditions.push(c);
    }
    let key = |list: &[Value]| {
        let mut v: Vec<String> = list.iter().map(Value::to_string).collect();
        v.sort();
        v
    };
    let no_extra = extra.as_object().is_none_or(|m| m.is_empty());
    if key(&old) == key(&conditions) && no_extra {
        return Ok(());
    }
    let mut status = if no_extra { json!({}) } else { extra };
    status["conditions"] = Value::Array(conditions);
    let updated = ctx
        .kube
        .patch_status(
            Kind::NodeClaim,
            &ObjectKey::cluster(claim),
            json!({ "status": status }),
        )
        .await?;
    state.apply_event(Kind::NodeClaim, crate::kube::WatchEvent::Modified(updated))?;
    Ok(())
}
