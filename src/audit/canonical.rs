//! RFC 8785 (JCS) canonical JSON for audit records.
//!
//! Object members are sorted by the UTF-16 code units of their names, there is no whitespace,
//! strings use the minimal escaping of ECMAScript `JSON.stringify`. Numbers: records only carry
//! integers, so only integers of magnitude at most 2^53-1 are accepted (those print identically in
//! ECMAScript and here); any other number is refused rather than printed in a form a JCS
//! implementation in another language would print differently.

use serde_json::Value;

/// The largest integer ECMAScript represents exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CanonicalError {
    #[error("number {0} is not an integer within +/-(2^53-1); audit records carry integers only")]
    Number(String),
}

/// The canonical bytes of `v`.
pub fn to_vec(v: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(256);
    write(v, &mut out)?;
    Ok(out)
}

/// RFC 8785 for any JSON value, numbers included: each is printed as ECMAScript prints the
/// IEEE double it denotes (what other JCS implementations print). For documents that are not
/// audit records, such as tool schemas with fractional bounds.
pub fn to_vec_any(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    // Every number is accepted in this mode, so nothing can fail.
    let _ = emit(v, &mut out, Numbers::Any);
    out
}

pub fn write(v: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    emit(v, out, Numbers::SafeIntegers)
}

#[derive(Clone, Copy)]
enum Numbers {
    /// Audit records: integers within +/-(2^53-1) only.
    SafeIntegers,
    Any,
}

fn emit(v: &Value, out: &mut Vec<u8>, numbers: Numbers) -> Result<(), CanonicalError> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64().filter(|u| *u <= MAX_SAFE_INTEGER) {
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64().filter(|i| i.unsigned_abs() <= MAX_SAFE_INTEGER) {
                out.extend_from_slice(i.to_string().as_bytes());
            } else if let (Numbers::Any, Some(f)) = (numbers, n.as_f64()) {
                out.extend_from_slice(ryu_js::Buffer::new().format(f).as_bytes());
            } else {
                return Err(CanonicalError::Number(n.to_string()));
            }
        }
        Value::String(s) => write_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                emit(item, out, numbers)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            // JCS orders by UTF-16 code units, which differs from UTF-8 byte order for
            // characters above U+FFFF versus U+E000..U+FFFF.
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push(b'{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(k, out);
                out.push(b':');
                if let Some(v) = map.get(*k) {
                    emit(v, out, numbers)?;
                }
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x09 => out.extend_from_slice(b"\\t"),
            0x0a => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            0x0d => out.extend_from_slice(b"\\r"),
            b if b < 0x20 => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            // Multi-byte UTF-8 passes through unchanged: JCS does not escape non-ASCII.
            b => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_and_escapes_like_jcs() {
        let v = json!({"b": 1, "a": [true, null, "x\n\u{1}\"\\é"], "\u{10000}": 0, "\u{e000}": 0});
        let s = String::from_utf8(to_vec(&v).unwrap()).unwrap();
        assert_eq!(
            s,
            "{\"a\":[true,null,\"x\\n\\u0001\\\"\\\\é\"],\"b\":1,\"\u{10000}\":0,\"\u{e000}\":0}"
        );
    }

    #[test]
    fn any_numbers_print_as_ecmascript_does() {
        let v: Value = serde_json::from_str(
            r#"{"a":1.5,"b":1e21,"c":-0.0,"d":100,"e":0.000001,"f":1E-7,"g":18446744073709551615}"#,
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(to_vec_any(&v)).unwrap(),
            r#"{"a":1.5,"b":1e+21,"c":0,"d":100,"e":0.000001,"f":1e-7,"g":18446744073709552000}"#
        );
    }

    #[test]
    fn refuses_non_integers() {
        assert!(to_vec(&json!(1.5)).is_err());
        assert!(to_vec(&json!(u64::MAX)).is_err());
        assert_eq!(to_vec(&json!(-7)).unwrap(), b"-7");
    }
}
