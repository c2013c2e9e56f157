//! What the API server does with a custom resource's schema: defaults filled in, then the structural
//! OpenAPI checks (types, required, enums, patterns, bounds, unknown fields) and the CRD's CEL rules
//! (`x-kubernetes-validations`), each failure naming the field the way kube-apiserver does.
//!
//! It reads the CustomResourceDefinition as a document, so it knows nothing of dovetail's types: a
//! manifest the CRD refuses is refused here whatever the controller would make of it.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use crate::cel::Rules;

/// One step of the path to a field: an object's property, a map's key, a list's index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathSeg {
    Field(String),
    Key(String),
    Index(usize),
}

/// A field the schema refuses, as the API server words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: Vec<PathSeg>,
    pub message: String,
}

/// `spec.requirements[0].key`, `spec.tags[team]`.
pub fn render(path: &[PathSeg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            PathSeg::Field(f) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(f);
            }
            PathSeg::Key(k) => out.push_str(&format!("[{k}]")),
            PathSeg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", render(&self.path), self.message)
    }
}

/// The installed CustomResourceDefinitions: each kind's storage-version schema.
#[derive(Default)]
pub struct Crds {
    schemas: BTreeMap<String, Value>,
    /// Each kind's CustomResourceDefinition as installed (for discovery, printing and `openapi`).
    definitions: BTreeMap<String, Value>,
    rules: Rules,
}

impl Crds {
    /// Install a CRD (as JSON); its served storage version's `openAPIV3Schema` validates the kind from now on.
    pub fn install(&mut self, crd: &Value) -> Result<(), String> {
        let kind = crd["spec"]["names"]["kind"]
            .as_str()
            .ok_or("CustomResourceDefinition without spec.names.kind")?;
        let versions = crd["spec"]["versions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let version = versions
            .iter()
            .find(|v| v["storage"] == true)
            .or(versions.first())
            .ok_or_else(|| format!("CustomResourceDefinition for {kind} has no version"))?;
        let schema = version["schema"]["openAPIV3Schema"].clone();
        if !schema.is_object() {
            return Err(format!(
                "CustomResourceDefinition for {kind} has no openAPIV3Schema"
            ));
        }
        // kube-apiserver refuses a CRD whose defaults its own schema (CEL rules included) refuses.
        let mut refused = Vec::new();
        self.check_defaults(
            &schema,
            "spec.validation.openAPIV3Schema".to_string(),
            &mut refused,
        );
        if !refused.is_empty() {
            return Err(format!(
                "The CustomResourceDefinition for {kind} is invalid: \n* {}",
                refused.join("\n* ")
            ));
        }
        self.schemas.insert(kind.to_string(), schema);
        self.definitions.insert(kind.to_string(), crd.clone());
        Ok(())
    }

    /// Every `default` under `schema` validated against the schema it sits in, as kube-apiserver does when a
    /// CRD is written; each failure as `<schema path>.default: <message>`.
    fn check_defaults(&self, schema: &Value, at: String, refused: &mut Vec<String>) {
        if let Some(d) = schema.get("default") {
            let mut errors = Vec::new();
            let mut v = Validator {
                rules: &self.rules,
                errors: &mut errors,
            };
            v.node(schema, d, None, &mut Vec::new(), false);
            for e in errors {
                refused.push(format!("{at}.default: {}", e.message));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, sub) in props {
                self.check_defaults(sub, format!("{at}.properties[{name}]"), refused);
            }
        }
        if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
            self.check_defaults(items, format!("{at}.items"), refused);
        }
        if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
            self.check_defaults(extra, format!("{at}.additionalProperties"), refused);
        }
    }

    /// The installed CustomResourceDefinitions, by kind.
    pub fn definitions(&self) -> impl Iterator<Item = &Value> {
        self.definitions.values()
    }

    pub fn knows(&self, kind: &str) -> bool {
        self.schemas.contains_key(kind)
    }

    /// Default and validate `obj` of `kind` (unchanged if no CRD is installed for it); `old` is the stored
    /// object on an update, for transition rules (`oldSelf`).
    pub fn admit(&self, kind: &str, obj: &mut Value, old: Option<&Value>) -> Vec<FieldError> {
        let Some(schema) = self.schemas.get(kind) else {
            return Vec::new();
        };
        apply_defaults(schema, obj);
        let mut errors = Vec::new();
        let mut v = Validator {
            rules: &self.rules,
            errors: &mut errors,
        };
        v.node(schema, obj, old, &mut Vec::new(), true);
        errors
    }
}

/// Fill in `default`s of absent properties, outside in (an object defaulted whole is then defaulted inside).
pub fn apply_defaults(schema: &Value, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (name, sub) in props {
                    if !map.contains_key(name)
                        && let Some(d) = sub.get("default")
                    {
                        map.insert(name.clone(), d.clone());
                    }
                    if let Some(child) = map.get_mut(name) {
                        apply_defaults(sub, child);
                    }
                }
            } else if let Some(sub) = schema.get("additionalProperties").filter(|s| s.is_object()) {
                for child in map.values_mut() {
                    apply_defaults(sub, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(sub) = schema.get("items") {
                for child in items {
                    apply_defaults(sub, child);
                }
            }
        }
        _ => {}
    }
}

struct Validator<'a> {
    rules: &'a Rules,
    errors: &'a mut Vec<FieldError>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// How the API server shows a value in a message: strings quoted, objects and lists by their type.
fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".into(),
        Value::Array(_) => "\"array\"".into(),
        other => other.to_string(),
    }
}

impl Validator<'_> {
    fn fail(&mut self, path: &[PathSeg], message: String) {
        self.errors.push(FieldError {
            path: path.to_vec(),
            message,
        });
    }

    fn node(
        &mut self,
        schema: &Value,
        value: &Value,
        old: Option<&Value>,
        path: &mut Vec<PathSeg>,
        root: bool,
    ) {
        if value.is_null() {
            if schema["nullable"] != true {
                self.fail(path, "Invalid value: \"null\": must not be null".into());
            }
            return;
        }
        if !self.type_ok(schema, value, path) {
            return;
        }
        match value {
            Value::Object(map) => {
                if let Some(props) = schema["properties"].as_object() {
                    for (name, child) in map {
                        path.push(PathSeg::Field(name.clone()));
                        match props.get(name) {
                            // Type and object metadata are the API server's own, not the CRD's, to check.
                            _ if root
                                && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") => {}
                            Some(sub) => {
                                self.node(sub, child, old.and_then(|o| o.get(name)), path, false)
                            }
                            None if schema["x-kubernetes-preserve-unknown-fields"] == true => {}
                            None => self.fail(path, "unknown field".into()),
                        }
                        path.pop();
                    }
                    for req in schema["required"].as_array().into_iter().flatten() {
                        if let Some(r) = req.as_str()
                            && !map.contains_key(r)
                        {
                            path.push(PathSeg::Field(r.to_string()));
                            self.fail(path, "Required value".into());
                            path.pop();
                        }
                    }
                } else if let Some(sub) =
                    schema.get("additionalProperties").filter(|s| s.is_object())
                {
                    for (key, child) in map {
                        path.push(PathSeg::Key(key.clone()));
                        self.node(sub, child, old.and_then(|o| o.get(key)), path, false);
                        path.pop();
                    }
                } else if !map.is_empty()
                    && schema["x-kubernetes-preserve-unknown-fields"] != true
                    && schema["additionalProperties"] != true
                {
                    for key in map.keys() {
                        path.push(PathSeg::Field(key.clone()));
                        self.fail(path, "unknown field".into());
                        path.pop();
                    }
                }
                if let Some(max) = schema["maxProperties"].as_u64()
                    && map.len() as u64 > max
                {
                    self.fail(
                        path,
                        format!("Too many: {}: must have at most {max} items", map.len()),
                    );
                }
            }
            Value::Array(items) => {
                if let Some(sub) = schema.get("items") {
                    for (i, child) in items.iter().enumerate() {
                        path.push(PathSeg::Index(i));
                        self.node(sub, child, None, path, false);
                        path.pop();
                    }
                }
                if let Some(max) = schema["maxItems"].as_u64()
                    && items.len() as u64 > max
                {
                    self.fail(
                        path,
                        format!("Too many: {}: must have at most {max} items", items.len()),
                    );
                }
                if let Some(min) = schema["minItems"].as_u64()
                    && (items.len() as u64) < min
                {
                    self.fail(
                        path,
                        format!(
                            "Invalid value: {}: should have at least {min} items",
                            items.len()
                        ),
                    );
                }
            }
            _ => self.scalar(schema, value, path),
        }
        // Rules run only on a value whose own schema checks passed, as the API server's do.
        if !self.errors.iter().any(|e| e.path.starts_with(path)) {
            for rule in schema["x-kubernetes-validations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let text = rule["rule"].as_str().unwrap_or_default();
                let transition = text.contains("oldSelf");
                if transition && old.is_none() {
                    continue;
                }
                if let Err(why) = self.rules.check(text, value, old.filter(|_| transition)) {
                    let message = rule["message"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("failed rule: {text}"));
                    let message = match why {
                        crate::cel::Refusal::False => message,
                        crate::cel::Refusal::Error(e) => {
                            format!("{message} (evaluating the rule: {e})")
                        }
                    };
                    self.fail(path, format!("Invalid value: {}: {message}", shown(value)));
                }
            }
        }
    }

    /// Whether the value is of the schema's type (an int-or-string takes either); says so when not.
    fn type_ok(&mut self, schema: &Value, value: &Value, path: &[PathSeg]) -> bool {
        let actual = type_name(value);
        if schema["x-kubernetes-int-or-string"] == true {
            if matches!(actual, "integer" | "string") {
                return true;
            }
            self.fail(
                path,
                format!(
                    "Invalid value: {}: must be an integer or a string",
                    shown(value)
                ),
            );
            return false;
        }
        let Some(expected) = schema["type"].as_str() else {
            return true;
        };
        let ok = expected == actual || (expected == "number" && actual == "integer");
        if !ok {
            self.fail(
                path,
                format!(
                    "Invalid value: \"{actual}\": {} in body must be of type {expected}: \"{actual}\"",
                    render(path)
                ),
            );
        }
        ok
    }

    fn scalar(&mut self, schema: &Value, value: &Value, path: &[PathSeg]) {
        let field = render(path);
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(shown).collect();
            self.fail(
                path,
                format!(
                    "Unsupported value: {}: supported values: {}",
                    shown(value),
                    list.join(", ")
                ),
            );
        }
        if let Value::String(s) = value {
            if let Some(p) = schema["pattern"].as_str()
                && !self.rules.matches(p, s)
            {
                self.fail(
                    path,
                    format!("Invalid value: {s:?}: {field} in body should match '{p}'"),
                );
            }
            let len = s.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && len > max
            {
                self.fail(path, format!("Too long: may not be more than {max} bytes"));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && len < min
            {
                self.fail(
                    path,
                    format!(
                        "Invalid value: {s:?}: {field} in body should be at least {min} chars long"
                    ),
                );
            }
            if schema["format"] == "date-time" && s.parse::<jiff::Timestamp>().is_err() {
                self.fail(
                    path,
                    format!(
                        "Invalid value: {s:?}: {field} in body must be of type date-time: {s:?}"
                    ),
                );
            }
        }
        if let Value::Number(n) = value {
            let x = n.as_f64().unwrap_or_default();
            if let Some(max) = schema["maximum"].as_f64()
                && x > max
            {
                self.fail(
                    path,
                    format!(
                        "Invalid value: {n}: {field} in body should be less than or equal to {max}"
                    ),
                );
            }
            if let Some(min) = schema["minimum"].as_f64()
                && x < min
            {
                self.fail(
                    path,
                    format!("Invalid value: {n}: {field} in body should be greater than or equal to {min}"),
                );
            }
            if schema["format"] == "int32" && i32::try_from(n.as_i64().unwrap_or(i64::MAX)).is_err()
            {
                self.fail(
                    path,
                    format!("Invalid value: {n}: {field} in body must be of type int32"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crds() -> Crds {
        let mut c = Crds::default();
        c.install(&json!({
            "spec": {"names": {"kind": "Thing"}, "versions": [{"name": "v1", "storage": true, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "metadata": {"type": "object"},
                    "spec": {"type": "object", "required": ["size"], "properties": {
                        "size": {"type": "integer", "minimum": 1, "maximum": 10},
                        "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
                        "name": {"type": "string", "pattern": "^[a-z]+$"},
                        "tags": {"type": "object", "additionalProperties": {"type": "string"},
                                 "x-kubernetes-validations": [{"rule": "self.all(k, k != '')", "message": "empty tag keys aren't supported"}]},
                        "items": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                        "fixed": {"type": "string", "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "fixed is immutable"}]}
                    }}
                }}}}]}
        })).unwrap();
        c
    }

    fn errors(obj: Value, old: Option<Value>) -> (Value, Vec<String>) {
        let mut obj = obj;
        let e = crds().admit("Thing", &mut obj, old.as_ref());
        (obj, e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_crd_whose_default_breaks_its_own_rules_is_refused() {
        let crd = |default: Value| {
            json!({"spec": {"names": {"kind": "Terms"}, "versions": [{"name": "v1", "storage": true, "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {
                "terms": {"type": "array", "items": {"type": "string"}, "default": default,
                          "x-kubernetes-validations": [{"rule": "self.size() != 0", "message": "terms cannot be empty"}]},
                "more": {"type": "array", "items": {"type": "string"}, "default": default, "minItems": 1}
            }}}}}}]}})
        };
        let err = Crds::default().install(&crd(json!([]))).unwrap_err();
        assert!(
            err.contains(
                "spec.validation.openAPIV3Schema.properties[spec].properties[terms].default: "
            ) && err.contains("terms cannot be empty")
                && err.contains(
                    "properties[more].default: Invalid value: 0: should have at least 1 items"
                ),
            "{err}"
        );
        Crds::default().install(&crd(json!(["a"]))).unwrap();
    }

    #[test]
    fn defaults_are_filled_and_a_valid_object_passes() {
        let (obj, e) = errors(
            json!({"metadata": {"name": "x", "labels": {"a": "b"}}, "spec": {"size": 3}}),
            None,
        );
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(obj["spec"]["mode"], "A");
    }

    #[test]
    fn each_structural_check_names_its_field() {
        let (_, e) = errors(
            json!({"metadata": {"name": "x"}, "spec": {"size": 11, "mode": "C", "name": "Ab", "colour": 1, "items": ["a", "b", "c"]}}),
            None,
        );
        assert_eq!(
            e,
            vec![
                "spec.size: Invalid value: 11: spec.size in body should be less than or equal to 10",
                "spec.mode: Unsupported value: \"C\": supported values: \"A\", \"B\"",
                "spec.name: Invalid value: \"Ab\": spec.name in body should match '^[a-z]+$'",
                "spec.colour: unknown field",
                "spec.items: Too many: 3: must have at most 2 items",
            ]
        );
        let (_, e) = errors(
            json!({"metadata": {"name": "x"}, "spec": {"size": "3"}}),
            None,
        );
        assert_eq!(
            e,
            vec![
                "spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\""
            ]
        );
        let (_, e) = errors(json!({"metadata": {"name": "x"}, "spec": {}}), None);
        assert_eq!(e, vec!["spec.size: Required value"]);
    }

    #[test]
    fn cel_rules_run_and_transition_rules_only_on_update() {
        let (_, e) = errors(
            json!({"metadata": {"name": "x"}, "spec": {"size": 1, "tags": {"": "v"}}}),
            None,
        );
        assert_eq!(
            e,
            vec!["spec.tags: Invalid value: \"object\": empty tag keys aren't supported"]
        );
        let new = json!({"metadata": {"name": "x"}, "spec": {"size": 1, "fixed": "b"}});
        assert!(errors(new.clone(), None).1.is_empty());
        let old = json!({"metadata": {"name": "x"}, "spec": {"size": 1, "fixed": "a"}});
        assert_eq!(
            errors(new, Some(old)).1,
            vec!["spec.fixed: Invalid value: \"b\": fixed is immutable"]
        );
    }

    #[test]
    fn kinds_without_a_crd_pass_untouched() {
        let mut obj = json!({"spec": {"anything": true}});
        assert!(crds().admit("Other", &mut obj, None).is_empty());
        assert_eq!(obj, json!({"spec": {"anything": true}}));
    }
}
