//! Query parameters of list and watch requests: label and field selectors as strings, paging, versions.

use serde_json::Value;

use super::status::ApiError;

/// One term of a label selector string (`app=web`, `tier in (a,b)`, `!canary`).
#[derive(Debug, Clone, PartialEq)]
enum LabelTerm {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`: every term must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelTerm>);

/// Split on commas that are not inside parentheses.
fn terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out.into_iter().filter(|t| !t.is_empty()).collect()
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<LabelSelector, ApiError> {
        let bad = |t: &str| {
            ApiError::bad_request(format!(
                "unable to parse requirement: found '{t}' in labelSelector \"{s}\""
            ))
        };
        let mut out = Vec::new();
        for t in terms(s) {
            let set = |rest: &str| -> Option<Vec<String>> {
                let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
                Some(
                    inner
                        .split(',')
                        .map(|v| v.trim().to_string())
                        .filter(|v| !v.is_empty())
                        .collect(),
                )
            };
            let term = if let Some(k) = t.strip_prefix('!') {
                LabelTerm::NotExists(k.trim().to_string())
            } else if let Some((k, v)) = t.split_once("!=") {
                LabelTerm::NotEquals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                LabelTerm::Equals(k.trim().to_string(), v.trim().to_string())
            } else if let Some((k, rest)) = t.split_once(" notin ") {
                LabelTerm::NotIn(k.trim().to_string(), set(rest).ok_or_else(|| bad(t))?)
            } else if let Some((k, rest)) = t.split_once(" in ") {
                LabelTerm::In(k.trim().to_string(), set(rest).ok_or_else(|| bad(t))?)
            } else if t.contains(' ') || t.contains('(') {
                return Err(bad(t));
            } else {
                LabelTerm::Exists(t.to_string())
            };
            out.push(term);
        }
        Ok(LabelSelector(out))
    }

    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|t| match t {
            LabelTerm::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelTerm::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelTerm::In(k, vs) => get(k).is_some_and(|a| vs.iter().any(|v| v == a)),
            LabelTerm::NotIn(k, vs) => get(k).is_none_or(|a| !vs.iter().any(|v| v == a)),
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::NotExists(k) => get(k).is_none(),
        })
    }
}

/// A parsed `fieldSelector`: `path=value` / `path!=value` terms over the object's fields, as the API server
/// offers them (`metadata.name`, `metadata.namespace`, `spec.nodeName`, `status.phase`, ...).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// Fields each kind can be selected by, beyond `metadata.name` and `metadata.namespace` (as kube-apiserver
/// registers them; any other field is refused, as there).
fn selectable(kind: &str, field: &str) -> bool {
    if matches!(field, "metadata.name" | "metadata.namespace") {
        return true;
    }
    let allowed: &[&str] = match kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        "Node" => &["spec.unschedulable"],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        "Namespace" => &["status.phase"],
        "Secret" => &["type"],
        "ReplicaSet" | "StatefulSet" => &["status.replicas"],
        "Job" => &["status.successful"],
        "PersistentVolumeClaim" | "PersistentVolume" => &["status.phase"],
        _ => &[],
    };
    allowed.contains(&field)
}

/// A field's value as a selector compares it: strings as they are, booleans and numbers spelled out,
/// missing fields as the empty string (`spec.nodeName=` selects unbound pods).
fn field_value(object: &Value, path: &str) -> String {
    let mut v = object;
    for part in path.split('.') {
        v = &v[part];
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null if path == "spec.unschedulable" || path == "spec.hostNetwork" => "false".into(),
        _ => String::new(),
    }
}

impl FieldSelector {
    pub fn parse(s: &str, kind: &str) -> Result<FieldSelector, ApiError> {
        let mut out = Vec::new();
        for t in terms(s) {
            let (path, equal, value) = if let Some((k, v)) = t.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{t}'"
                )));
            };
            let path = path.trim();
            if !selectable(kind, path) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {path}"
                )));
            }
            out.push((path.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(out))
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.0
            .iter()
            .all(|(path, equal, value)| (field_value(object, path) == *value) == *equal)
    }

    /// The name an `metadata.name=X` term pins (a watch of one object).
    pub fn name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(p, eq, _)| p == "metadata.name" && *eq)
            .map(|(_, _, v)| v.as_str())
    }
}

/// What a list or watch request asks beyond the resource.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl Selection {
    pub fn matches(&self, object: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

/// A `continue` token: the resourceVersion the first page was read at and the last key served.
pub fn continue_token(rv: u64, namespace: &str, name: &str) -> String {
    format!("{rv}/{namespace}/{name}")
}

/// (resourceVersion, namespace, name) of a `continue` token.
pub fn parse_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let mut parts = token.splitn(3, '/');
    let bad = || ApiError::bad_request(format!("continue key is not valid: {token}"));
    let rv = parts.next().and_then(|r| r.parse().ok()).ok_or_else(bad)?;
    let ns = parts.next().ok_or_else(bad)?.to_string();
    let name = parts.next().ok_or_else(bad)?.to_string();
    Ok((rv, ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_strings_as_kubectl_sends_them() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (sel, want) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("tier in (front, back)", true),
            ("tier notin (front)", false),
            ("app", true),
            ("!canary", true),
            ("!app", false),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&pod),
                want,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("tier in front").is_err());
    }

    #[test]
    fn field_selectors_read_fields_and_refuse_unknown_ones() {
        let pod = json!({"metadata": {"name": "a"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let sel = FieldSelector::parse("spec.nodeName=n1,status.phase!=Succeeded", "Pod").unwrap();
        assert!(sel.matches(&pod));
        let unbound = FieldSelector::parse("spec.nodeName=", "Pod").unwrap();
        assert!(!unbound.matches(&pod));
        let e = FieldSelector::parse("spec.priority=1", "Pod").unwrap_err();
        assert_eq!(e.code, 400);
        assert!(
            e.message
                .contains("field label not supported: spec.priority")
        );
    }
}
