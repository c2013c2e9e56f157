//! YAML with a source position on every node, so errors deep inside a manifest name file:line:column.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// A YAML value whose every node remembers where it was written.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Node, D2::Error> {
                Node::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
                i64::try_from(v)
                    .map(Node::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Spanned<Node>>()? {
                    out.push(v);
                }
                Ok(Node::Seq(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = map.next_key::<Spanned<String>>()? {
                    let v = map.next_value::<Spanned<Node>>()?;
                    out.push((k, v));
                }
                Ok(Node::Map(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A dotted path as users write it: `spec.template.spec.containers[0].resources`.
pub fn render_path(path: &[Seg]) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// Line and column (1-based) of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

pub fn pos<T>(s: &Spanned<T>) -> Pos {
    Pos {
        line: s.referenced.line() as u32,
        column: s.referenced.column() as u32,
    }
}

impl Node {
    pub fn to_json(&self) -> Value {
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Number((*i).into()),
            Node::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Node::Str(s) => Value::String(s.clone()),
            Node::Seq(items) => Value::Array(items.iter().map(|i| i.value.to_json()).collect()),
            Node::Map(entries) => {
                let mut m = Map::new();
                for (k, v) in entries {
                    m.insert(k.value.clone(), v.value.to_json());
                }
                Value::Object(m)
            }
        }
    }
}

/// The position of the deepest node along `path` (the key's position for a map entry).
pub fn locate(root: &Spanned<Node>, path: &[Seg]) -> Pos {
    let mut here = root;
    let mut at = pos(root);
    for seg in path {
        match (&here.value, seg) {
            (Node::Map(entries), Seg::Key(k)) => {
                match entries.iter().find(|(key, _)| &key.value == k) {
                    Some((key, v)) => {
                        at = pos(key);
                        here = v;
                    }
                    None => break,
                }
            }
            (Node::Seq(items), Seg::Index(i)) => match items.get(*i) {
                Some(v) => {
                    at = pos(v);
                    here = v;
                }
                None => break,
            },
            _ => break,
        }
    }
    at
}

/// Keys present in `written` but absent from `understood` (the typed round trip): fields the target type
/// does not know, i.e. typos. Null values are skipped since dropping them changes nothing.
pub fn unknown_fields(
    written: &Value,
    understood: &Value,
    path: &mut Vec<Seg>,
    out: &mut Vec<Vec<Seg>>,
) {
    match (written, understood) {
        (Value::Object(w), Value::Object(u)) => {
            for (k, v) in w {
                path.push(Seg::Key(k.clone()));
                match u.get(k) {
                    None if !v.is_null() => out.push(path.clone()),
                    Some(uv) => unknown_fields(v, uv, path, out),
                    None => {}
                }
                path.pop();
            }
        }
        (Value::Array(w), Value::Array(u)) => {
            for (i, (wv, uv)) in w.iter().zip(u).enumerate() {
                path.push(Seg::Index(i));
                unknown_fields(wv, uv, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_knows_its_line() {
        let doc = "a:\n  b:\n    - x: 1\n    - y: two\n";
        let root: Spanned<Node> = serde_saphyr::from_str(doc).unwrap();
        let p = locate(
            &root,
            &[
                Seg::Key("a".into()),
                Seg::Key("b".into()),
                Seg::Index(1),
                Seg::Key("y".into()),
            ],
        );
        assert_eq!(p.line, 4);
        assert_eq!(root.value.to_json()["a"]["b"][1]["y"], "two");
    }

    #[test]
    fn finds_fields_the_type_dropped() {
        let written = serde_json::json!({"spec": {"replicas": 2, "replica": 3, "x": null}});
        let understood = serde_json::json!({"spec": {"replicas": 2}});
        let mut out = Vec::new();
        unknown_fields(&written, &understood, &mut Vec::new(), &mut out);
        assert_eq!(
            out,
            vec![vec![Seg::Key("spec".into()), Seg::Key("replica".into())]]
        );
    }
}
