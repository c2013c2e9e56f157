//! CEL as the API server evaluates a CRD's `x-kubernetes-validations`: `self` (and `oldSelf` for transition
//! rules) bound to the field, with the Kubernetes string extensions Karpenter's rules use (`find`, `split`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use cel::extractors::This;
use cel::{Context, Program, Value as CelValue};
use serde_json::Value;

/// Why a rule refused a value.
pub enum Refusal {
    /// It evaluated to false.
    False,
    /// It could not be evaluated (the API server refuses these too).
    Error(String),
}

/// Compiled rules and patterns, kept across objects (compiling is most of the cost).
#[derive(Default)]
pub struct Rules {
    programs: Mutex<BTreeMap<String, Result<Arc<Program>, String>>>,
    patterns: Mutex<BTreeMap<String, Option<regex::Regex>>>,
}

fn find(This(s): This<Arc<String>>, pattern: Arc<String>) -> String {
    regex::Regex::new(&pattern)
        .ok()
        .and_then(|r| r.find(&s).map(|m| m.as_str().to_string()))
        .unwrap_or_default()
}

fn split(This(s): This<Arc<String>>, separator: Arc<String>) -> CelValue {
    s.split(separator.as_str())
        .map(|p| CelValue::String(Arc::new(p.to_string())))
        .collect::<Vec<_>>()
        .into()
}

impl Rules {
    /// Evaluate `rule` with `self` = `value` (and `oldSelf` = `old` when given).
    pub fn check(&self, rule: &str, value: &Value, old: Option<&Value>) -> Result<(), Refusal> {
        let program = {
            let mut programs = self.programs.lock().unwrap_or_else(|p| p.into_inner());
            programs
                .entry(rule.to_string())
                .or_insert_with(|| {
                    Program::compile(rule)
                        .map(Arc::new)
                        .map_err(|e| e.to_string())
                })
                .clone()
        }
        .map_err(Refusal::Error)?;
        let mut ctx = Context::default();
        ctx.add_function("find", find)
            .and_then(|()| ctx.add_function("split", split))
            .map_err(|e| Refusal::Error(e.to_string()))?;
        ctx.add_variable("self", value.clone())
            .map_err(|e| Refusal::Error(e.to_string()))?;
        if let Some(old) = old {
            ctx.add_variable("oldSelf", old.clone())
                .map_err(|e| Refusal::Error(e.to_string()))?;
        }
        match program.execute(&ctx) {
            Ok(CelValue::Bool(true)) => Ok(()),
            Ok(CelValue::Bool(false)) => Err(Refusal::False),
            Ok(other) => Err(Refusal::Error(format!(
                "the rule gave {other:?}, not a bool"
            ))),
            Err(e) => Err(Refusal::Error(e.to_string())),
        }
    }

    /// Whether `text` matches an OpenAPI `pattern` (unanchored, as ECMA regexes are applied there).
    pub fn matches(&self, pattern: &str, text: &str) -> bool {
        let mut patterns = self.patterns.lock().unwrap_or_else(|p| p.into_inner());
        patterns
            .entry(pattern.to_string())
            .or_insert_with(|| regex::Regex::new(pattern).ok())
            .as_ref()
            .is_none_or(|r| r.is_match(text))
    }
}
