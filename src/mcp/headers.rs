//! The 2026-07-28 request metadata headers: HTTP headers that mirror parts of a request's body
//! (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, and `Mcp-Param-*` for tool arguments a
//! tool's `inputSchema` marks with `x-mcp-header`), their value encoding, and reading the
//! annotations out of a schema.
//!
//! Both directions use this: downstream checks a client's headers against its body (a header
//! is never trusted alone), and an upstream encoder writes them for a modern server.

use base64::Engine;
use serde_json::Value;

use super::methods;

pub const PROTOCOL_VERSION: &str = "mcp-protocol-version";
pub const METHOD: &str = "mcp-method";
pub const NAME: &str = "mcp-name";
/// `Mcp-Param-{token}` carries the argument an `x-mcp-header: token` annotation names.
pub const PARAM_PREFIX: &str = "mcp-param-";
/// The schema keyword that designates a mirrored argument.
pub const ANNOTATION: &str = "x-mcp-header";

/// The headers that may appear once at most: two copies would let two readers disagree.
pub const SINGLE: [&str; 3] = [PROTOCOL_VERSION, METHOD, NAME];

const SENTINEL_START: &str = "=?base64?";
const SENTINEL_END: &str = "?=";
/// Largest integer a JSON number carries exactly in every client (JavaScript's safe range).
const SAFE_INTEGER: i64 = (1 << 53) - 1;

/// The body parameter `Mcp-Name` mirrors for `method`, when it has one.
pub fn name_param(method: &str) -> Option<&'static str> {
    match method {
        methods::TOOLS_CALL | methods::PROMPTS_GET => Some("name"),
        methods::RESOURCES_READ => Some("uri"),
        _ => None,
    }
}

/// A header value for `value`: itself when it is plain visible ASCII without edge whitespace,
/// otherwise base64 of its UTF-8 between the `=?base64?` … `?=` markers (also a plain value that
/// looks like the markers, so that decoding is unambiguous).
pub fn encode_value(value: &str) -> String {
    let plain = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && value.trim() == value
        && !is_sentinel(value);
    if plain {
        value.to_owned()
    } else {
        format!(
            "{SENTINEL_START}{}{SENTINEL_END}",
            base64::engine::general_purpose::STANDARD.encode(value.as_bytes())
        )
    }
}

fn is_sentinel(v: &str) -> bool {
    v.len() >= SENTINEL_START.len() + SENTINEL_END.len()
        && v.starts_with(SENTINEL_START)
        && v.ends_with(SENTINEL_END)
}

/// The value a header carries: `encode_value` undone. `None` for a malformed encoding (bad or
/// non-canonical base64, not UTF-8) or a byte no header value may hold, so that a corrupt
/// header never equals a body value by accident.
pub fn decode_value(raw: &[u8]) -> Option<String> {
    // Visible ASCII, space and tab only (RFC 9110 field values); anything else is refused.
    if !raw.iter().all(|b| (0x20..0x7f).contains(b) || *b == b'\t') {
        return None;
    }
    let text = std::str::from_utf8(raw).ok()?;
    if !is_sentinel(text) {
        return Some(text.to_owned());
    }
    let payload = &text[SENTINEL_START.len()..text.len() - SENTINEL_END.len()];
    let engine = &base64::engine::general_purpose::STANDARD;
    let bytes = engine.decode(payload).ok()?;
    // The decoder accepts some non-canonical forms; an encoder only ever writes the canonical one.
    if engine.encode(&bytes) != payload {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// One argument a tool mirrors into a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamHeader {
    /// The chain of `properties` keys from the schema root to the argument.
    pub path: Vec<String>,
    /// The `x-mcp-header` token; the header is `Mcp-Param-{token}`.
    pub token: String,
    /// The property is `integer` typed: compared as a number, not as text.
    pub integer: bool,
}

impl ParamHeader {
    /// The header name, lower case.
    pub fn header_name(&self) -> String {
        format!("{PARAM_PREFIX}{}", self.token.to_ascii_lowercase())
    }

    /// The argument's value in a call's `arguments`, when present and not null.
    pub fn value_in<'a>(&self, arguments: Option<&'a Value>) -> Option<&'a Value> {
        let mut node = arguments?;
        for key in &self.path {
            node = node.as_object()?.get(key)?;
        }
        (!node.is_null()).then_some(node)
    }

    /// Whether a decoded header value equals the body's `value`.
    pub fn matches(&self, value: &Value, decoded: &str) -> bool {
        if self.integer {
            if let Some(n) = integral(value) {
                return parse_integral(decoded) == Some(n);
            }
        }
        render(value).is_some_and(|r| r == decoded)
    }
}

/// How a client writes an argument into a header (before encoding): strings as they are,
/// booleans as `true`/`false`, numbers in decimal. Objects, arrays and null have no rendering.
pub fn render(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An integral JSON number (`42` or `42.0`) as an integer.
fn integral(value: &Value) -> Option<i64> {
    let n = value.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() <= SAFE_INTEGER as f64).then_some(f as i64)
}

/// A header's canonical decimal (`42`, `-7`, `42.0`) as an integer; anything else (exponents,
/// signs other than a leading minus, a fraction that is not zero) is `None`.
fn parse_integral(text: &str) -> Option<i64> {
    let (whole, fraction) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    if let Some(f) = fraction {
        if f.is_empty() || !f.bytes().all(|b| b == b'0') {
            return None;
        }
    }
    let digits = whole.strip_prefix('-').unwrap_or(whole);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    whole.parse().ok()
}

/// Why a tool's `x-mcp-header` annotations are invalid: such a tool mirrors nothing (a
/// conforming client drops it from its list).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `x-mcp-header` annotation: {0}")]
pub struct InvalidAnnotation(pub String);

/// Schema keywords whose values are schemas but which leave the plain `properties` chain: an
/// annotation below one of them is invalid.
const SUBSCHEMA: [&str; 11] = [
    "items",
    "contains",
    "unevaluatedItems",
    "additionalProperties",
    "propertyNames",
    "unevaluatedProperties",
    "not",
    "if",
    "then",
    "else",
    "contentSchema",
];
const SUBSCHEMA_LISTS: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];
const SUBSCHEMA_MAPS: [&str; 4] = [
    "patternProperties",
    "dependentSchemas",
    "$defs",
    "definitions",
];
/// Schema positions visited before a schema is declared too large to inspect.
const MAX_POSITIONS: usize = 10_000;

/// The arguments `schema` (a tool's `inputSchema`) mirrors into headers. Empty when it has no
/// annotation; an error when one is invalid (not a token, not on a string/integer/boolean
/// property reachable through `properties` alone, or the same token twice).
pub fn annotations(schema: &Value) -> Result<Vec<ParamHeader>, InvalidAnnotation> {
    let mut out: Vec<ParamHeader> = Vec::new();
    // (path from the root through `properties`, or None once another keyword was crossed)
    let mut stack: Vec<(Option<Vec<String>>, &Value)> = vec![(Some(Vec::new()), schema)];
    let mut visited = 0usize;
    while let Some((path, node)) = stack.pop() {
        let Some(obj) = node.as_object() else {
            continue;
        };
        visited += 1;
        if visited > MAX_POSITIONS {
            return Err(InvalidAnnotation(format!(
                "the schema has more than {MAX_POSITIONS} positions"
            )));
        }
        if let Some(token) = obj.get(ANNOTATION) {
            let Some(path) = path.as_ref().filter(|p| !p.is_empty()) else {
                return Err(InvalidAnnotation(
                    "an annotation sits where no `properties` chain from the root reaches".into(),
                ));
            };
            let where_ = path.join(".");
            let token = token.as_str().ok_or_else(|| {
                InvalidAnnotation(format!("property `{where_}`: the value must be a string"))
            })?;
            if token.is_empty() || !token.bytes().all(is_tchar) {
                return Err(InvalidAnnotation(format!(
                    "property `{where_}`: `{token}` is not an HTTP header token"
                )));
            }
            let integer = match obj.get("type").and_then(Value::as_str) {
                Some("integer") => true,
                Some("string" | "boolean") => false,
                other => {
                    return Err(InvalidAnnotation(format!(
                        "property `{where_}`: only string, integer and boolean properties may be mirrored (type {})",
                        other.unwrap_or("not given")
                    )))
                }
            };
            if out.iter().any(|h| h.token.eq_ignore_ascii_case(token)) {
                return Err(InvalidAnnotation(format!(
                    "property `{where_}`: token `{token}` is used twice"
                )));
            }
            out.push(ParamHeader {
                path: path.clone(),
                token: token.to_owned(),
                integer,
            });
        }
        for (key, value) in obj {
            if key == "properties" {
                if let Some(props) = value.as_object() {
                    for (name, sub) in props {
                        let p = path.as_ref().map(|p| {
                            let mut p = p.clone();
                            p.push(name.clone());
                            p
                        });
                        stack.push((p, sub));
                    }
                }
            } else if SUBSCHEMA.contains(&key.as_str()) {
                stack.push((None, value));
            } else if SUBSCHEMA_LISTS.contains(&key.as_str()) {
                if let Some(list) = value.as_array() {
                    stack.extend(list.iter().map(|v| (None, v)));
                }
            } else if SUBSCHEMA_MAPS.contains(&key.as_str()) {
                if let Some(map) = value.as_object() {
                    stack.extend(map.values().map(|v| (None, v)));
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The request metadata headers for a request to a modern server (names lower case, values
/// encoded): what an upstream encoder sends after routing has renamed the tool or prompt.
pub fn for_request(
    protocol: &str,
    method: &str,
    name: Option<&str>,
    mirrored: &[ParamHeader],
    arguments: Option<&Value>,
) -> Vec<(String, String)> {
    let mut out = vec![
        (PROTOCOL_VERSION.to_owned(), protocol.to_owned()),
        (METHOD.to_owned(), method.to_owned()),
    ];
    if let (Some(_), Some(n)) = (name_param(method), name) {
        out.push((NAME.to_owned(), encode_value(n)));
    }
    for h in mirrored {
        if let Some(v) = h.value_in(arguments).and_then(render) {
            out.push((h.header_name(), encode_value(&v)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_round_trip_and_unsafe_ones_are_wrapped() {
        for v in [
            "us-west1",
            "Hello, 世界",
            " padded ",
            "line1\nline2",
            "=?base64?literal?=",
        ] {
            let e = encode_value(v);
            assert!(e.bytes().all(|b| (0x20..0x7f).contains(&b)), "{e}");
            assert_eq!(decode_value(e.as_bytes()).as_deref(), Some(v), "{e}");
        }
        assert_eq!(encode_value("us-west1"), "us-west1");
        assert_eq!(
            encode_value("Hello, 世界"),
            "=?base64?SGVsbG8sIOS4lueVjA==?="
        );
        // Bad base64, non-canonical padding bits, bytes no header may carry.
        assert_eq!(decode_value(b"=?base64?!!!?="), None);
        assert_eq!(decode_value(b"=?base64?SGk=?="), Some("Hi".into()));
        assert_eq!(decode_value(b"=?base64?SGl=?="), None);
        assert_eq!(decode_value(b"a\nb"), None);
    }

    #[test]
    fn annotations_follow_properties_only() {
        let schema = json!({
            "type": "object",
            "properties": {
                "region": {"type": "string", "x-mcp-header": "Region"},
                "opts": {"type": "object", "properties": {"n": {"type": "integer", "x-mcp-header": "N"}}},
                "q": {"type": "string"}
            }
        });
        let a = annotations(&schema).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].path, vec!["opts", "n"]);
        assert!(a[0].integer);
        assert_eq!(a[1].header_name(), "mcp-param-region");
        for bad in [
            json!({"properties": {"a": {"type": "number", "x-mcp-header": "A"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "A B"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "A"}, "b": {"type": "string", "x-mcp-header": "a"}}}),
            json!({"properties": {"a": {"items": {"type": "string", "x-mcp-header": "A"}}}}),
            json!({"anyOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]}),
            json!({"type": "string", "x-mcp-header": "Root"}),
        ] {
            assert!(annotations(&bad).is_err(), "{bad}");
        }
        assert!(annotations(&json!({"type": "object"})).unwrap().is_empty());
    }

    #[test]
    fn integers_compare_as_numbers() {
        let h = ParamHeader {
            path: vec!["n".into()],
            token: "N".into(),
            integer: true,
        };
        assert!(h.matches(&json!(42), "42"));
        assert!(h.matches(&json!(42), "42.0"));
        assert!(h.matches(&json!(42.0), "42"));
        assert!(!h.matches(&json!(42), "4.2e1"));
        assert!(!h.matches(&json!(42), "+42"));
        assert!(!h.matches(&json!(42), "43"));
        let s = ParamHeader {
            integer: false,
            ..h
        };
        assert!(s.matches(&json!(true), "true"));
        assert!(!s.matches(&json!("x"), "y"));
    }

    #[test]
    fn forwarding_headers_carry_the_routed_name() {
        let h = annotations(
            &json!({"properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}),
        )
        .unwrap();
        let out = for_request(
            "2026-07-28",
            "tools/call",
            Some("execute sql"),
            &h,
            Some(&json!({"region": "eu"})),
        );
        assert!(out.contains(&("mcp-name".into(), "execute sql".into())));
        assert!(out.contains(&("mcp-param-region".into(), "eu".into())));
        assert_eq!(
            for_request("2026-07-28", "tools/list", None, &[], None).len(),
            2
        );
    }
}
