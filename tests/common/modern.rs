//! A 2026-07-28 client on the wire: the per-request envelope, the request metadata headers, and
//! conforming requests built from both.
#![allow(dead_code)]

use serde_json::{json, Value};

use super::client::{Mcp, Raw};
use super::Gateway;

pub const MODERN: &str = "2026-07-28";

/// The hex SHA-256 of a client token, as a policy's `token_sha256`.
pub fn sha(t: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(t.as_bytes()))
}

pub fn client(gw: &Gateway, token: Option<&str>) -> Mcp {
    let mut c = Mcp::new(&gw.url);
    c.bearer = token.map(str::to_owned);
    c
}

pub fn envelope(caps: Value) -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": caps,
        "io.modelcontextprotocol/clientInfo": {"name": "modern-test", "version": "1"}
    })
}

/// A request body with the envelope merged into `params._meta`.
pub fn body(id: u64, method: &str, mut params: Value, caps: Value) -> String {
    let mut meta = envelope(caps);
    if let Some(extra) = params.get("_meta").and_then(Value::as_object) {
        for (k, v) in extra {
            meta[k] = v.clone();
        }
    }
    params["_meta"] = meta;
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string()
}

/// The request metadata headers a conforming client sends for `method` on `name`.
pub fn headers(method: &str, name: Option<&str>) -> Vec<(String, String)> {
    let mut h = vec![
        ("mcp-protocol-version".to_owned(), MODERN.to_owned()),
        ("mcp-method".to_owned(), method.to_owned()),
    ];
    if let Some(n) = name {
        h.push(("mcp-name".to_owned(), n.to_owned()));
    }
    h
}

pub async fn send(c: &Mcp, body: &str, headers: &[(String, String)]) -> Raw {
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    c.post_with(body, &h).await
}

/// A conforming request: body and matching headers.
pub async fn request(c: &Mcp, id: u64, method: &str, params: Value, caps: Value) -> Raw {
    let name = params
        .get("name")
        .or_else(|| params.get("uri"))
        .and_then(Value::as_str)
        .filter(|_| matches!(method, "tools/call" | "prompts/get" | "resources/read"))
        .map(str::to_owned);
    send(
        c,
        &body(id, method, params, caps),
        &headers(method, name.as_deref()),
    )
    .await
}

pub fn text(msg: &Value) -> String {
    msg["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {msg}"))
        .to_owned()
}

/// Opens a `subscriptions/listen` stream of `c` for tool list changes; the answer as it came
/// (a refusal is a JSON body).
pub async fn open_listen(c: &Mcp, url: &str, id: u64) -> reqwest::Response {
    open_listen_for(c, url, id, json!({"toolsListChanged": true})).await
}

/// [`open_listen`] with the filter `notifications`.
pub async fn open_listen_for(
    c: &Mcp,
    url: &str,
    id: u64,
    notifications: Value,
) -> reqwest::Response {
    let b = body(
        id,
        "subscriptions/listen",
        json!({ "notifications": notifications }),
        json!({}),
    );
    let mut req = c
        .http
        .post(url)
        .body(b)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in headers("subscriptions/listen", None) {
        req = req.header(k, v);
    }
    if let Some(t) = &c.bearer {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.send().await.unwrap()
}

/// [`open_listen`], which must open.
pub async fn listen_for_tools(c: &Mcp, url: &str, id: u64) -> reqwest::Response {
    let resp = open_listen(c, url, id).await;
    assert_eq!(resp.status(), 200);
    resp
}

/// Reads `resp` until its text holds `needle` or `limit` passes; the text read.
pub async fn read_for(
    resp: &mut reqwest::Response,
    needle: &str,
    limit: std::time::Duration,
) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + limit;
    while !text.contains(needle) {
        match tokio::time::timeout_at(deadline, resp.chunk()).await {
            Ok(Ok(Some(c))) => text.push_str(&String::from_utf8_lossy(&c)),
            _ => break,
        }
    }
    text
}

/// `shapes`: a script server answering in 2026-07-28 shapes (tasks, its own request state,
/// mirrored arguments), logging every request it gets to `{shared}/shapes.log`.
pub fn shapes_server() -> String {
    format!(
        "[servers.shapes]\nruntime = \"process\"\ncommand = \"{{peers}}/venv/bin/python\"\nargs = [\"{}\"]\nenv = {{ SHAPES_LOG = \"{{shared}}/shapes.log\" }}\nmounts = [{{ source = \"{{shared}}\", target = \"{{shared}}\", read_only = false }}]\n",
        super::repo_root()
            .join("tests/python/servers/stateless_shapes.py")
            .display()
    )
}

/// The retry of `params` answering the first input request of `first` (an
/// `input_required` answer) with `content`, carrying its `requestState`.
pub fn answer_input(first: &Value, params: &Value, content: Value) -> Value {
    let r = &first["result"];
    assert_eq!(r["resultType"], "input_required", "{first}");
    let key = r["inputRequests"]
        .as_object()
        .and_then(|m| m.keys().next())
        .unwrap_or_else(|| panic!("no input request in {first}"))
        .clone();
    let mut retry = params.clone();
    retry["requestState"] = r["requestState"].clone();
    retry["inputResponses"] = json!({ key: {"action": "accept", "content": content} });
    retry
}
