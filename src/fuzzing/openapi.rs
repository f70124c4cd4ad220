//! An OpenAPI document (JSON or YAML) to tools, and a hostile call of each tool to a request.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::openapi::{request, Document};

/// An argument that tries to leave its place: another segment, a parent directory, a query
/// of its own, a fragment.
const HOSTILE: &str = "../a/b?c=d&e#f g%2F";

/// A document either is refused (with an error, never a panic) or makes tools whose names
/// clients accept, whose schemas are objects, and whose requests keep every argument inside
/// its own path segment or query component.
pub fn openapi_tools(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(doc) = Document::parse(text, "fuzz.yaml") else {
        return;
    };
    let Ok(api) = doc.tools(|_| true) else {
        return;
    };
    let mut names = BTreeSet::new();
    for tool in &api.tools {
        assert!(
            !tool.name.is_empty()
                && tool.name.len() <= 64
                && tool
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "tool name {:?}",
            tool.name
        );
        assert!(
            names.insert(tool.name.clone()),
            "duplicate tool {}",
            tool.name
        );
        assert_eq!(tool.definition["inputSchema"]["type"], "object");
        let mut args = Map::new();
        for p in &tool.params {
            args.insert(p.arg.clone(), json!(HOSTILE));
        }
        if let Some(b) = &tool.body {
            args.insert(b.arg.clone(), json!({ "k": HOSTILE }));
        }
        let Ok(req) = request::build(tool, "/base", &args) else {
            continue;
        };
        check_request(&tool.path, &req.path_and_query);
        for (_, v) in &req.headers {
            assert!(!v.chars().any(char::is_control), "header value {v:?}");
        }
        // With no arguments at all, the request is refused or built; never a panic.
        let _ = request::build(tool, "/base", &Map::new());
        let _ = request::build(tool, "", &args_of(Value::Null, tool));
    }
}

fn args_of(v: Value, tool: &crate::openapi::Tool) -> Map<String, Value> {
    tool.params
        .iter()
        .map(|p| (p.arg.clone(), v.clone()))
        .collect()
}

/// Nothing the arguments added climbs the path, starts a fragment, or breaks the URL.
fn check_request(template: &str, path_and_query: &str) {
    let path = path_and_query.split('?').next().unwrap_or_default();
    if !template.split('/').any(|s| s == ".." || s == ".") {
        assert!(
            !path.split('/').any(|s| s == ".." || s == "."),
            "a dot segment in {path_and_query}"
        );
    }
    if !template.contains('#') && !template.contains('?') {
        assert!(
            !path_and_query.contains('#'),
            "a fragment in {path_and_query}"
        );
        assert_eq!(
            path_and_query.matches('?').count(),
            usize::from(path_and_query.contains('?')),
            "{path_and_query}"
        );
    }
    if template.bytes().all(|b| b.is_ascii_graphic()) {
        assert!(
            format!("http://h{path_and_query}")
                .parse::<http::Uri>()
                .is_ok(),
            "not a URL: {path_and_query}"
        );
    }
}
