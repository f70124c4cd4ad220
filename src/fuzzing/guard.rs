//! The canonical form of tool definitions (what the lock file hashes), the sanitizer and the
//! lock file's text, on arbitrary input.

use serde_json::{Map, Value};

use crate::guard::lock::{Check, List, Lock};
use crate::guard::{canonical, sanitize};

pub fn tool_definition(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    check_strip(&text);
    let Ok(Value::Object(def)) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    check_canonical(&def);
    check_lock(&def);
}

/// What `strip` leaves holds nothing it would remove, and stripping again changes nothing.
fn check_strip(text: &str) {
    let (out, found) = sanitize::strip(text);
    assert!(
        sanitize::is_clean(&out),
        "strip left hidden characters: {out:?}"
    );
    assert_eq!(
        found.is_empty(),
        out == text,
        "findings and changes disagree: {text:?}"
    );
    let (again, more) = sanitize::strip(&out);
    assert!(
        more.is_empty() && again == out,
        "strip is not idempotent: {text:?}"
    );
}

/// The canonical form is a fixed point: parsed back it canonicalizes to the same bytes and
/// hash, and member order does not matter.
fn check_canonical(def: &Map<String, Value>) {
    let bytes = canonical::canonical(def);
    let back: Map<String, Value> = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => panic!(
            "the canonical form is not JSON ({e}): {}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert_eq!(
        canonical::canonical(&back),
        bytes,
        "canonical form is not stable"
    );
    let reversed: Map<String, Value> = def
        .iter()
        .rev()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(
        canonical::digest(&reversed),
        canonical::digest(def),
        "order counts"
    );
}

/// A definition the lock approves checks as approved, also after the lock file's text is read
/// back (hidden characters escaped on the way).
fn check_lock(def: &Map<String, Value>) {
    let mut lock = Lock::new("fuzz");
    if !lock
        .servers
        .entry("s".into())
        .or_default()
        .approve(List::Tools, def)
    {
        return;
    }
    assert_eq!(lock.check("s", List::Tools, def), Check::Approved);
    let text = lock.to_text();
    assert!(
        !text.chars().any(sanitize::is_hidden),
        "the lock file shows a hidden character raw"
    );
    let back = match Lock::parse(&text) {
        Ok(l) => l,
        Err(e) => panic!("the lock file does not read back ({e}): {text}"),
    };
    assert_eq!(back.check("s", List::Tools, def), Check::Approved, "{text}");
}
