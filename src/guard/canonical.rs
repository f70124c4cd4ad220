//! The canonical form of a tool, prompt or resource template definition, and its SHA-256: what
//! the lock file approves.
//!
//! Every member of the definition counts except `_meta` (transport metadata a server may vary
//! from one listing to the next): name, title, description, input and output schemas,
//! annotations, icons, arguments, and whatever a later protocol revision adds. The form is
//! RFC 8785 (JCS): members sorted, no whitespace, minimal string escapes, numbers as
//! ECMAScript prints them, so that the same definition hashes the same in any language and a
//! reordered or re-indented listing is not a change.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Members left out of the canonical form.
const IGNORED: &[&str] = &["_meta"];

/// The canonical bytes of `definition`.
pub fn canonical(definition: &Map<String, Value>) -> Vec<u8> {
    let kept: Map<String, Value> = definition
        .iter()
        .filter(|(k, _)| !IGNORED.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    crate::audit::canonical::to_vec_any(&Value::Object(kept))
}

/// `sha256:<hex>` of the canonical form.
pub fn digest(definition: &Map<String, Value>) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(canonical(definition)))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn order_whitespace_and_meta_do_not_count() {
        let a: Map<String, Value> = serde_json::from_str(
            r#"{"name":"t","description":"d","inputSchema":{"type":"object","properties":{"x":{"minimum":0.5}}},"_meta":{"at":1}}"#,
        )
        .unwrap();
        let b: Map<String, Value> = serde_json::from_str(
            r#"{ "inputSchema": {"properties": {"x": {"minimum": 5e-1}}, "type": "object"},
                 "description": "d", "name": "t", "_meta": {"at": 2} }"#,
        )
        .unwrap();
        assert_eq!(digest(&a), digest(&b));
        assert_eq!(
            String::from_utf8(canonical(&a)).unwrap(),
            r#"{"description":"d","inputSchema":{"properties":{"x":{"minimum":0.5}},"type":"object"},"name":"t"}"#
        );
    }

    #[test]
    fn any_other_change_does() {
        let base = obj(json!({"name": "t", "description": "Adds numbers."}));
        let d = digest(&base);
        assert!(d.starts_with("sha256:") && d.len() == 71);
        for changed in [
            json!({"name": "t", "description": "Adds numbers.\u{200b}"}),
            json!({"name": "t", "description": "Adds numbers.", "title": "T"}),
            json!({"name": "t", "description": "Adds numbers.", "annotations": {"readOnlyHint": false}}),
            json!({"name": "t2", "description": "Adds numbers."}),
        ] {
            assert_ne!(digest(&obj(changed.clone())), d, "{changed}");
        }
    }
}
