//! Taints and tolerations, as the kube-scheduler matches them.

use k8s_openapi::api::core::v1::Toleration;

use crate::crds::Taint;

/// Whether one toleration tolerates one taint.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    let key_ok = match t.key.as_deref() {
        None | Some("") => t.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint.key,
    };
    let value_ok = t.operator.as_deref() == Some("Exists")
        || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("");
    let effect_ok = t
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    key_ok && value_ok && effect_ok
}

/// The first taint a pod with these tolerations may not be scheduled onto (NoSchedule / NoExecute;
/// PreferNoSchedule is a preference, not a filter).
pub fn untolerated<'a>(tolerations: &[Toleration], taints: &'a [Taint]) -> Option<&'a Taint> {
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: value.map(String::from),
            effect: effect.into(),
            time_added: None,
        }
    }

    fn tol(key: Option<&str>, op: &str, value: Option<&str>, effect: Option<&str>) -> Toleration {
        Toleration {
            key: key.map(String::from),
            operator: Some(op.into()),
            value: value.map(String::from),
            effect: effect.map(String::from),
            toleration_seconds: None,
        }
    }

    #[test]
    fn matching_rules() {
        let gpu = taint("nvidia.com/gpu", Some("true"), "NoSchedule");
        assert!(tolerates(
            &tol(
                Some("nvidia.com/gpu"),
                "Equal",
                Some("true"),
                Some("NoSchedule")
            ),
            &gpu
        ));
        assert!(tolerates(
            &tol(Some("nvidia.com/gpu"), "Exists", None, None),
            &gpu
        ));
        assert!(
            tolerates(&tol(None, "Exists", None, None), &gpu),
            "empty key with Exists tolerates all"
        );
        assert!(!tolerates(
            &tol(Some("nvidia.com/gpu"), "Equal", Some("false"), None),
            &gpu
        ));
        assert!(!tolerates(
            &tol(Some("nvidia.com/gpu"), "Exists", None, Some("NoExecute")),
            &gpu
        ));
        let soft = taint("x", None, "PreferNoSchedule");
        assert_eq!(untolerated(&[], std::slice::from_ref(&soft)), None);
        assert_eq!(untolerated(&[], std::slice::from_ref(&gpu)), Some(&gpu));
    }
}
