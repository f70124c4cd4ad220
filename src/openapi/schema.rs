//! Schemas: 3.0 schema keywords lifted to their 3.1 (JSON Schema 2020-12) form, and `$ref`s
//! inlined so that a tool's schema stands on its own.
//!
//! Inlining is bounded: a reference to a schema that is already being expanded (a recursive
//! type) becomes an open schema that says so, and a schema that grows past [`MAX_NODES`] is
//! refused with its pointer rather than sent to clients.

use serde_json::{json, Map, Value};

use super::document::{ref_pointer, Document};
use super::{escape_pointer, Problem};

/// Values in one inlined schema, at most.
pub(super) const MAX_NODES: usize = 20_000;
/// Nested `$ref` expansions, at most.
const MAX_DEPTH: usize = 64;

/// Keywords whose values are data, not schemas: copied, never searched for `$ref`.
fn is_data_keyword(key: &str) -> bool {
    matches!(key, "example" | "examples" | "default" | "enum" | "const") || key.starts_with("x-")
}

/// Lifts every schema of a 3.0 document to 3.1: `nullable: true` becomes a `"null"` type, and
/// boolean `exclusiveMinimum`/`exclusiveMaximum` become the numeric bounds they qualify.
pub(super) fn lift_30(doc: &mut Value) {
    match doc {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if k == "example" || k == "examples" || k.starts_with("x-") {
                    continue;
                }
                if k == "schema" {
                    lift_schema(child, 0);
                } else if k == "schemas" {
                    if let Value::Object(s) = child {
                        for sc in s.values_mut() {
                            lift_schema(sc, 0);
                        }
                    }
                } else {
                    lift_30(child);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(lift_30),
        _ => {}
    }
}

fn lift_schema(v: &mut Value, depth: usize) {
    // Deeper than any real schema; the structural check refuses what is left.
    if depth > 256 {
        return;
    }
    let Value::Object(m) = v else { return };
    if m.remove("nullable") == Some(Value::Bool(true)) {
        if let Some(t) = m.get_mut("type") {
            if let Value::String(s) = t {
                *t = json!([s.clone(), "null"]);
            }
        }
        if let Some(Value::Array(e)) = m.get_mut("enum") {
            if !e.contains(&Value::Null) {
                e.push(Value::Null);
            }
        }
    }
    for (bound, exclusive) in [
        ("minimum", "exclusiveMinimum"),
        ("maximum", "exclusiveMaximum"),
    ] {
        match m.get(exclusive) {
            Some(Value::Bool(true)) => match m.remove(bound) {
                Some(n) => {
                    m.insert(exclusive.to_owned(), n);
                }
                None => {
                    m.remove(exclusive);
                }
            },
            Some(Value::Bool(false)) => {
                m.remove(exclusive);
            }
            _ => {}
        }
    }
    for (k, child) in m.iter_mut() {
        match k.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" => {
                if let Value::Object(props) = child {
                    props.values_mut().for_each(|s| lift_schema(s, depth + 1));
                }
            }
            "allOf" | "anyOf" | "oneOf" | "prefixItems" => {
                if let Value::Array(items) = child {
                    items.iter_mut().for_each(|s| lift_schema(s, depth + 1));
                }
            }
            "items" => match child {
                Value::Array(items) => items.iter_mut().for_each(|s| lift_schema(s, depth + 1)),
                other => lift_schema(other, depth + 1),
            },
            "additionalProperties" | "not" => lift_schema(child, depth + 1),
            _ => {}
        }
    }
}

/// The schema at `pointer` with every `$ref` inlined.
pub(super) fn inline(doc: &Document, pointer: &str) -> Result<Value, Problem> {
    let v = doc.at(pointer).ok_or_else(|| Problem {
        pointer: pointer.to_owned(),
        message: "no schema is there".to_owned(),
    })?;
    let mut i = Inliner {
        doc,
        nodes: 0,
        stack: Vec::new(),
        root: pointer,
    };
    i.go(v, pointer)
}

struct Inliner<'d> {
    doc: &'d Document,
    nodes: usize,
    /// The `$ref`s being expanded, outermost first.
    stack: Vec<String>,
    root: &'d str,
}

impl Inliner<'_> {
    fn count(&mut self) -> Result<(), Problem> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return Err(Problem {
                pointer: self.root.to_owned(),
                message: format!("the schema grows past {MAX_NODES} values once its `$ref`s are inlined; simplify it, or leave this operation out with operations.deny"),
            });
        }
        Ok(())
    }

    fn go(&mut self, v: &Value, at: &str) -> Result<Value, Problem> {
        self.count()?;
        match v {
            Value::Object(m) => match m.get("$ref") {
                Some(Value::String(r)) => self.reference(r, m, at),
                _ => {
                    let mut out = Map::with_capacity(m.len());
                    for (k, child) in m {
                        let value = if is_data_keyword(k) {
                            child.clone()
                        } else {
                            self.go(child, &format!("{at}/{}", escape_pointer(k)))?
                        };
                        out.insert(k.clone(), value);
                    }
                    Ok(Value::Object(out))
                }
            },
            Value::Array(a) => a
                .iter()
                .enumerate()
                .map(|(i, child)| self.go(child, &format!("{at}/{i}")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            other => Ok(other.clone()),
        }
    }

    fn reference(&mut self, r: &str, m: &Map<String, Value>, at: &str) -> Result<Value, Problem> {
        let target = ref_pointer(r, &format!("{at}/$ref"), self.doc)?;
        let resolved = if self.stack.contains(&target) {
            json!({ "description": format!("(recursive reference to {r}, not expanded)") })
        } else if self.stack.len() >= MAX_DEPTH {
            return Err(Problem {
                pointer: format!("{at}/$ref"),
                message: format!("`$ref`s nested more than {MAX_DEPTH} deep"),
            });
        } else {
            self.stack.push(target.clone());
            let v = self.doc.at(&target).cloned().unwrap_or(Value::Bool(true));
            let out = self.go(&v, &target);
            self.stack.pop();
            out?
        };
        // 3.1 allows keywords beside `$ref` (a description, say): they refine the target.
        let siblings: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| *k != "$ref").collect();
        if siblings.is_empty() {
            return Ok(resolved);
        }
        let mut out = match resolved {
            Value::Object(o) => o,
            other => {
                let mut o = Map::new();
                o.insert("allOf".to_owned(), json!([other]));
                o
            }
        };
        for (k, v) in siblings {
            let value = if is_data_keyword(k) {
                v.clone()
            } else {
                self.go(v, &format!("{at}/{}", escape_pointer(k)))?
            };
            out.insert(k.clone(), value);
        }
        Ok(Value::Object(out))
    }
}
