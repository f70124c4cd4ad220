//! A tool call's arguments to the parts of an HTTP request: path templating with escaping,
//! the OpenAPI serialization styles for query, header and cookie parameters, and the body.
//!
//! Every value is percent-encoded so that it stays inside its own path segment or query
//! component: a value cannot add a segment, climb out with `..`, or start another parameter.
//! Header values are checked, never folded: a value with a line break is refused.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{Map, Value};

use super::{BodyEncoding, Location, Param, Style, Tool};

/// Everything but RFC 3986's unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What may stand in a URL path as it is (RFC 3986 `pchar`, `/`, and `%` for what the document
/// already encoded); the rest of a document's literal path is encoded.
const PATH_LITERAL: &AsciiSet = &COMPONENT
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=')
    .remove(b':')
    .remove(b'@')
    .remove(b'/')
    .remove(b'%');

/// What a call sends, before the base URL and the configured headers are added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The operation's path with its parameters filled in, and the query string.
    pub path_and_query: String,
    /// Header parameters (name, value); cookies are already joined into one `Cookie` header.
    pub headers: Vec<(String, String)>,
    /// Content type and bytes.
    pub body: Option<(String, Vec<u8>)>,
}

/// Builds the request for `tool` from its `arguments`; `base_path` is the base URL's path.
/// An error says which argument is wrong and why (it is shown to the caller as a tool error).
pub fn build(
    tool: &Tool,
    base_path: &str,
    arguments: &Map<String, Value>,
) -> Result<Request, String> {
    for key in arguments.keys() {
        let known = tool.params.iter().any(|p| &p.arg == key)
            || tool.body.as_ref().is_some_and(|b| &b.arg == key);
        if !known {
            let mut names: Vec<&str> = tool.params.iter().map(|p| p.arg.as_str()).collect();
            names.extend(tool.body.as_ref().map(|b| b.arg.as_str()));
            return Err(format!(
                "unknown argument `{key}`; `{}` takes {}",
                tool.name,
                if names.is_empty() {
                    "no arguments".to_owned()
                } else {
                    names.join(", ")
                }
            ));
        }
    }
    let value = |p: &Param| -> Result<Option<&Value>, String> {
        match arguments.get(&p.arg) {
            None | Some(Value::Null) if p.required => Err(format!(
                "missing required argument `{}` ({} parameter `{}`)",
                p.arg,
                p.location.as_str(),
                p.name
            )),
            None | Some(Value::Null) => Ok(None),
            Some(v) => Ok(Some(v)),
        }
    };
    let mut filled: Vec<(&str, String)> = Vec::new();
    let mut query: Vec<String> = Vec::new();
    let mut headers = Vec::new();
    let mut cookies: Vec<String> = Vec::new();
    for p in &tool.params {
        let Some(v) = value(p)? else { continue };
        let v = if p.json {
            Value::String(v.to_string())
        } else {
            v.clone()
        };
        match p.location {
            Location::Path => filled.push((p.name.as_str(), path_value(p, &v))),
            Location::Query => query.extend(query_pairs(p, &v)),
            Location::Header => {
                let text = simple(&v, p.explode, |s| s.to_owned());
                if text.chars().any(|c| c.is_control()) {
                    return Err(format!(
                        "argument `{}` holds a control character, which a header value cannot carry",
                        p.arg
                    ));
                }
                headers.push((p.name.clone(), text));
            }
            Location::Cookie => {
                let text = simple(&v, false, enc);
                cookies.push(format!("{}={text}", enc(&p.name)));
            }
        }
    }
    let path = template(&tool.path, &filled)?;
    if !cookies.is_empty() {
        headers.push(("cookie".to_owned(), cookies.join("; ")));
    }
    let mut path_and_query = format!("{}{}", base_path.trim_end_matches('/'), path);
    if !query.is_empty() {
        path_and_query.push('?');
        path_and_query.push_str(&query.join("&"));
    }
    let body = match &tool.body {
        Some(b) => match arguments.get(&b.arg) {
            None | Some(Value::Null) if b.required => {
                return Err(format!(
                    "missing required argument `{}` (the request body)",
                    b.arg
                ))
            }
            None | Some(Value::Null) => None,
            Some(v) => Some((b.content_type.clone(), encode_body(b.encoding, &b.arg, v)?)),
        },
        None => None,
    };
    Ok(Request {
        path_and_query,
        headers,
        body,
    })
}

/// The path with its placeholders filled; the document's own characters are encoded where a
/// URL path cannot carry them as they are (a space, `<`, `"`).
fn template(path: &str, filled: &[(&str, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&utf8_percent_encode(&rest[..open], PATH_LITERAL).to_string());
        let name = &rest[open + 1..open + len];
        let value = filled.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            format!("the path `{path}` has a placeholder `{{{name}}}` that no parameter fills")
        })?;
        out.push_str(&value.1);
        rest = &rest[open + len + 1..];
    }
    out.push_str(&utf8_percent_encode(rest, PATH_LITERAL).to_string());
    Ok(out)
}

fn encode_body(encoding: BodyEncoding, arg: &str, v: &Value) -> Result<Vec<u8>, String> {
    match encoding {
        BodyEncoding::Json => Ok(v.to_string().into_bytes()),
        BodyEncoding::Text => Ok(scalar(v).into_bytes()),
        BodyEncoding::Form => {
            let Value::Object(fields) = v else {
                return Err(format!(
                    "argument `{arg}` must be an object (its fields are form-encoded)"
                ));
            };
            let pairs: Vec<String> = fields
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{}={}", enc(k), enc(&scalar(v))))
                .collect();
            Ok(pairs.join("&").into_bytes())
        }
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// A primitive as text; arrays and objects nested deeper than a style reaches, as JSON.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `simple` style: `a,b,c`; objects `k,v,k,v` or, exploded, `k=v,k=v`. `e` encodes each part.
fn simple(v: &Value, explode: bool, e: impl Fn(&str) -> String) -> String {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|i| e(&scalar(i)))
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let sep = if explode { "=" } else { "," };
                format!("{}{sep}{}", e(k), e(&scalar(v)))
            })
            .collect::<Vec<_>>()
            .join(","),
        other => e(&scalar(other)),
    }
}

/// A path parameter's text, already encoded: `simple`, `label` (`.x`) or `matrix` (`;n=x`).
fn path_value(p: &Param, v: &Value) -> String {
    let out = match p.style {
        Style::Label => {
            let sep = if p.explode { "." } else { "," };
            match v {
                Value::Array(items) => format!(
                    ".{}",
                    items
                        .iter()
                        .map(|i| enc(&scalar(i)))
                        .collect::<Vec<_>>()
                        .join(sep)
                ),
                Value::Object(m) if p.explode => m
                    .iter()
                    .map(|(k, v)| format!(".{}={}", enc(k), enc(&scalar(v))))
                    .collect(),
                other => format!(".{}", simple(other, false, enc)),
            }
        }
        Style::Matrix => {
            let name = enc(&p.name);
            match v {
                Value::Array(items) if p.explode => items
                    .iter()
                    .map(|i| format!(";{name}={}", enc(&scalar(i))))
                    .collect(),
                Value::Object(m) if p.explode => m
                    .iter()
                    .map(|(k, v)| format!(";{}={}", enc(k), enc(&scalar(v))))
                    .collect(),
                other => format!(";{name}={}", simple(other, false, enc)),
            }
        }
        _ => simple(v, p.explode, enc),
    };
    // `.` is unreserved, but a segment that is only dots would climb the path.
    if !out.is_empty() && out.bytes().all(|b| b == b'.') {
        out.replace('.', "%2E")
    } else {
        out
    }
}

/// A query parameter as encoded `name=value` pairs.
fn query_pairs(p: &Param, v: &Value) -> Vec<String> {
    let name = enc(&p.name);
    match (p.style, v) {
        (Style::DeepObject, Value::Object(m)) => m
            .iter()
            .map(|(k, v)| format!("{name}%5B{}%5D={}", enc(k), enc(&scalar(v))))
            .collect(),
        (_, Value::Array(items)) if p.explode => items
            .iter()
            .map(|i| format!("{name}={}", enc(&scalar(i))))
            .collect(),
        (Style::Form, Value::Object(m)) if p.explode => m
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(&scalar(v))))
            .collect(),
        (Style::SpaceDelimited | Style::PipeDelimited, Value::Array(items)) => {
            let sep = if p.style == Style::SpaceDelimited {
                "%20"
            } else {
                "%7C"
            };
            vec![format!(
                "{name}={}",
                items
                    .iter()
                    .map(|i| enc(&scalar(i)))
                    .collect::<Vec<_>>()
                    .join(sep)
            )]
        }
        (_, other) => vec![format!("{name}={}", simple(other, false, enc))],
    }
}
