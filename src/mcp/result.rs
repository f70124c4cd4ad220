//! Reading and rewriting the top level of a result object without parsing its values: enough to
//! see what kind of result it is and to add the members one era requires, while every other byte
//! passes through.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A JSON object's members in order, values raw.
pub struct Members<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Members<'a>, M::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<Cow<'de, str>, &'de RawValue>()? {
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'a> Members<'a> {
    /// The members of `json`, when it is an object.
    pub fn of(json: &'a str) -> Option<Members<'a>> {
        serde_json::from_str(json).ok()
    }

    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// A string member's value.
    pub fn str(&self, key: &str) -> Option<String> {
        self.get(key)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    }
}

/// A result's `resultType` (absent in the 2025 era, which means `complete`).
pub fn result_type(json: &str) -> Option<String> {
    // Most results (every 2025-era one) have none: skip the scan.
    if !json.contains("\"resultType\"") {
        return None;
    }
    Members::of(json)?.str("resultType")
}

/// Writes an object with `members`, except those named in `replaced`, followed by `extra`
/// (already-serialized `"key":value` pairs).
pub fn write_object(members: &Members<'_>, replaced: &[&str], extra: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(
        members
            .0
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + extra
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
            + 2,
    );
    out.push('{');
    let mut first = true;
    let mut push = |out: &mut String, key: &str, value: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push(':');
        out.push_str(value);
    };
    for (k, v) in &members.0 {
        if !replaced.contains(&k.as_ref()) {
            push(&mut out, k, v.get());
        }
    }
    for (k, v) in extra {
        push(&mut out, k, v);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_raw_values_and_order() {
        let src = r#"{"b":{"x":[1,2.50]},"a\u0041":"s","resultType":"input_required"}"#;
        let m = Members::of(src).unwrap();
        assert_eq!(m.0.len(), 3);
        assert_eq!(m.get("b").unwrap().get(), r#"{"x":[1,2.50]}"#);
        assert_eq!(m.str("aA").as_deref(), Some("s"));
        assert_eq!(result_type(src).as_deref(), Some("input_required"));
        assert_eq!(result_type(r#"{"content":[]}"#), None);
        let out = write_object(
            &m,
            &["resultType"],
            &[("resultType", "\"complete\"".into())],
        );
        assert_eq!(
            out,
            r#"{"b":{"x":[1,2.50]},"aA":"s","resultType":"complete"}"#
        );
        assert!(Members::of("[1]").is_none());
    }
}
