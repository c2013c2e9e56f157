//! Status conditions as Kubernetes writes them: merged into the object's list, with
//! `lastTransitionTime` moving only when a condition's status does.

use serde_json::{Value, json};

/// One condition to write: type, status (None for Unknown), the reason it carries when not True, and its
/// message (a True condition's says what is worth knowing anyway, or nothing).
pub(crate) type Desired = (&'static str, Option<bool>, &'static str, String);

/// The conditions list after writing `desired` over `old`: conditions of other types are kept as they
/// were; a True condition carries its type as reason (and a message only when one is given).
pub(crate) fn merge(old: &[Value], desired: &[Desired], now: &str) -> Vec<Value> {
    let mut out: Vec<Value> = old
        .iter()
        .filter(|c| !desired.iter().any(|d| c["type"] == d.0))
        .cloned()
        .collect();
    for (type_, ok, reason, message) in desired {
        let status = match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        };
        let since = old
            .iter()
            .find(|c| c["type"] == *type_)
            .filter(|c| c["status"] == status)
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(now)
            .to_string();
        let (reason, message) = if *ok == Some(true) {
            (*type_, message.as_str())
        } else {
            (*reason, message.as_str())
        };
        let mut c =
            json!({"type": type_, "status": status, "reason": reason, "lastTransitionTime": since});
        if !message.is_empty() {
            c["message"] = json!(message);
        }
        out.push(c);
    }
    out
}

/// `metav1.Condition`s as an API outside Karpenter's defines them (a CapacityBuffer's): every condition
/// carries the reason given (True ones too), a message, and the generation it was decided on.
pub(crate) fn merge_reasoned(
    old: &[Value],
    desired: &[Desired],
    now: &str,
    generation: Option<i64>,
) -> Vec<Value> {
    let mut out = merge(old, desired, now);
    for c in &mut out {
        let Some(d) = desired.iter().find(|d| c["type"] == d.0) else {
            continue;
        };
        c["reason"] = json!(d.2);
        c["message"] = json!(d.3);
        if let Some(g) = generation {
            c["observedGeneration"] = json!(g);
        }
    }
    out
}

/// An object's conditions as JSON, the form `merge` reads (none when it has no status yet).
pub(crate) fn as_values(conditions: Option<&[crate::crds::Condition]>) -> Vec<Value> {
    conditions
        .unwrap_or_default()
        .iter()
        .filter_map(|c| serde_json::to_value(c).ok())
        .collect()
}

/// The message of a condition of this type while it is True (empty when absent or not True): what a True
/// `ValidationSucceeded` says about fields not acted on.
pub(crate) fn true_message(list: &[Value], type_: &str) -> String {
    list.iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let first = merge(&[], &[("Ready", Some(false), "NotReady", "x".into())], "t1");
        let same = merge(
            &first,
            &[("Ready", Some(false), "NotReady", "y".into())],
            "t2",
        );
        assert_eq!(same[0]["lastTransitionTime"], "t1");
        assert_eq!(same[0]["message"], "y");
        let flipped = merge(&same, &[("Ready", Some(true), "NotReady", "".into())], "t3");
        assert_eq!(flipped[0]["lastTransitionTime"], "t3");
        assert_eq!(flipped[0]["reason"], "Ready");
        assert!(flipped[0].get("message").is_none());
        let noted = merge(
            &flipped,
            &[("Ready", Some(true), "NotReady", "note".into())],
            "t4",
        );
        assert_eq!(noted[0]["lastTransitionTime"], "t3");
        assert_eq!(noted[0]["message"], "note");
        let other = json!({"type": "Foreign", "status": "True"});
        let kept = merge(
            std::slice::from_ref(&other),
            &[("Ready", None, "Waiting", "".into())],
            "t4",
        );
        assert_eq!(kept[0], other);
        assert_eq!(kept[1]["status"], "Unknown");
    }
}
