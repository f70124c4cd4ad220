//! An HTTP response to an MCP tool result: JSON becomes `structuredContent` plus its text,
//! other text stays text, and an error status becomes a tool error (`isError`) with the status
//! and the start of the body, so that the model sees what the API said.

use serde_json::{json, Value};

use super::{Output, Tool};

/// The longest part of an error body quoted in the result.
const ERROR_EXCERPT: usize = 2000;

/// What came back from the API. `body` is already redacted and cut to the size cap.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub content_type: Option<&'a str>,
    pub body: &'a str,
    /// The body was not text: its length (it is then not quoted, and `body` is empty).
    pub binary: Option<usize>,
}

/// The `CallToolResult` for `answer`.
pub fn result(tool: &Tool, answer: &Answer<'_>) -> Value {
    let status = format!("HTTP {} {}", answer.status, answer.reason)
        .trim_end()
        .to_owned();
    let ct = answer.content_type.unwrap_or("no content type");
    if let Some(len) = answer.binary {
        let text = format!("{status}: {len} bytes of `{ct}`, not shown");
        return error_or_text(!(200..300).contains(&answer.status), text);
    }
    if !(200..300).contains(&answer.status) {
        let body = excerpt(answer.body.trim());
        let text = if body.is_empty() {
            format!("the API answered {status}")
        } else {
            format!("the API answered {status}: {body}")
        };
        return error(text);
    }
    let is_json = answer.content_type.is_some_and(super::tools::is_json);
    let parsed: Option<Value> = if is_json {
        serde_json::from_str(answer.body).ok()
    } else {
        None
    };
    match (tool.output, parsed) {
        (Output::Object, Some(v @ Value::Object(_))) => structured(v.clone(), &v),
        (Output::Wrapped, Some(v)) => structured(json!({ "result": v }), &v),
        (Output::Untyped, Some(v @ Value::Object(_))) => structured(v.clone(), &v),
        (Output::Untyped, Some(v)) => text(v.to_string()),
        (Output::Untyped, None) if answer.body.is_empty() => text(format!("{status} (no content)")),
        (Output::Untyped, None) => text(answer.body.to_owned()),
        (_, _) => error(format!(
            "the API answered {status} with `{ct}`, not the JSON its document declares: {}",
            excerpt(answer.body.trim())
        )),
    }
}

fn structured(content: Value, original: &Value) -> Value {
    json!({
        "content": [{ "type": "text", "text": original.to_string() }],
        "structuredContent": content,
        "isError": false,
    })
}

fn text(t: String) -> Value {
    json!({ "content": [{ "type": "text", "text": t }], "isError": false })
}

fn error(t: String) -> Value {
    json!({ "content": [{ "type": "text", "text": t }], "isError": true })
}

fn error_or_text(is_error: bool, t: String) -> Value {
    if is_error {
        error(t)
    } else {
        text(t)
    }
}

/// The tool error for a call that got no answer (`reason` says why).
pub fn failure(reason: &str) -> Value {
    error(reason.to_owned())
}

fn excerpt(s: &str) -> String {
    if s.len() <= ERROR_EXCERPT {
        return s.to_owned();
    }
    let mut cut = ERROR_EXCERPT;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes in all)", &s[..cut], s.len())
}
