//! The 2026-07-28 request path: the request metadata headers (`MCP-Protocol-Version`,
//! `Mcp-Method`, `Mcp-Name`, `Mcp-Param-*`) against the body, and the `_meta` envelope.
//!
//! Input: header lines `Name: value` (lines that are no valid header are skipped), an empty
//! line, the body. Each input is checked twice:
//!
//! - directly, through the decoder and the `Mcp-Param-*` check with a fixed tool schema
//!   (`region` string and `opts.limit` integer mirrored): whatever they accept has headers that
//!   agree with the body (one of each, decoded equal), the envelope lifted out of `_meta` and
//!   everything else kept;
//! - end to end, as `POST /mcp` to the in-process gateway of the `http_request` harness (Host,
//!   Content-Type, Accept and client `fuzz`'s credential are added when the input has none):
//!   no answer is a 500, a JSON answer is JSON, and a successful stateless answer came for a
//!   request whose headers agree with its body and carries `resultType` and the gateway's
//!   `serverInfo`.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use super::http::{with_gateway, FUZZ_TOKEN};
use crate::downstream::modern::{encode, envelope, mirror};
use crate::mcp::headers::{self, ParamHeader};
use crate::mcp::{meta, protocol, Message};

pub fn modern_request(data: &[u8]) {
    let (head, body) = split_head(data);
    let headers = header_map(head);
    check_decoder(&headers, body);
    check_gateway(headers, body);
}

fn split_head(data: &[u8]) -> (&[u8], &[u8]) {
    for (sep, n) in [(&b"\r\n\r\n"[..], 4), (b"\n\n", 2)] {
        if let Some(i) = data.windows(sep.len()).position(|w| w == sep) {
            return (&data[..i], &data[i + n..]);
        }
    }
    (data, &[])
}

fn header_map(head: &[u8]) -> HeaderMap {
    let mut out = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            out.append(name, value);
        }
    }
    out
}

/// The one decoded value of a header, when it appears exactly once.
fn one(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut all = headers.get_all(name).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    headers::decode_value(v.as_bytes())
}

fn schema() -> Vec<ParamHeader> {
    let s = json!({"type": "object", "properties": {
        "region": {"type": "string", "x-mcp-header": "Region"},
        "opts": {"type": "object", "properties": {"limit": {"type": "integer", "x-mcp-header": "Limit"}}}
    }});
    headers::annotations(&s).unwrap_or_default()
}

/// What the headers of an accepted request must say: the body's revision, method and name.
fn assert_headers_agree(headers: &HeaderMap, body: &Value) {
    let method = body["method"].as_str().unwrap_or_default();
    let version = &body["params"]["_meta"][meta::PROTOCOL_VERSION];
    assert_eq!(
        one(headers, headers::PROTOCOL_VERSION)
            .map(Value::String)
            .as_ref(),
        Some(version),
        "accepted with an MCP-Protocol-Version that is not the body's"
    );
    assert_eq!(
        one(headers, headers::METHOD).as_deref(),
        Some(method),
        "accepted with an Mcp-Method that is not the body's"
    );
    if let Some(key) = headers::name_param(method) {
        if let Some(name) = body["params"].get(key).filter(|v| !v.is_null()) {
            assert_eq!(
                one(headers, headers::NAME).map(Value::String).as_ref(),
                Some(name),
                "accepted with an Mcp-Name that is not the body's `{key}`"
            );
        }
    }
}

fn check_decoder(headers: &HeaderMap, body: &[u8]) {
    let Ok(Message::Request(req)) = Message::parse(body) else {
        return;
    };
    let Ok(raw) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let decoded = match envelope::decode(headers, &req) {
        Ok(d) => d,
        Err(rej) => {
            assert!(
                rej.status().is_client_error(),
                "a refusal with {}",
                rej.status()
            );
            let bytes = rej.bytes(Some(&req.id));
            if let Err(e) = serde_json::from_slice::<Value>(&bytes) {
                panic!("a refusal is not JSON ({e})");
            }
            return;
        }
    };
    assert!(protocol::is_modern(decoded.context.protocol));
    assert_headers_agree(headers, &raw);
    // The envelope is lifted out; every other `_meta` key stays for the server, unchanged.
    let sent = raw["params"]["_meta"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let kept = decoded.params.get("_meta").and_then(Value::as_object);
    for (k, v) in &sent {
        let lifted = meta::REQUEST_ENVELOPE.contains(&k.as_str());
        assert_eq!(
            kept.and_then(|m| m.get(k)).is_some(),
            !lifted,
            "`_meta.{k}` handled wrongly"
        );
        if !lifted {
            assert_eq!(kept.and_then(|m| m.get(k)), Some(v), "`_meta.{k}` changed");
        }
    }
    let mirrored = schema();
    let arguments = decoded.params.get("arguments");
    if mirror::check(&mirrored, arguments, headers).is_ok() {
        for m in &mirrored {
            let sent = headers.get_all(m.header_name().as_str()).iter().count();
            match m.value_in(arguments).and_then(headers::render) {
                Some(_) => assert_eq!(sent, 1, "a mirrored argument passed without its header"),
                None => assert_eq!(sent, 0, "a header passed without its argument"),
            }
        }
    }
    // The stateless encoding of any object keeps its members and adds the era's.
    let params = Value::Object(decoded.params.clone()).to_string();
    let out: Value = match serde_json::from_str(&encode::result(&params, None)) {
        Ok(v) => v,
        Err(e) => panic!("an encoded result is not JSON ({e})"),
    };
    assert!(out["resultType"].is_string());
    assert_eq!(out["_meta"][meta::SERVER_INFO]["name"], "portcullis");
}

fn check_gateway(mut headers: HeaderMap, body: &[u8]) {
    let defaults = [
        (header::HOST, "127.0.0.1:8811".to_owned()),
        (header::CONTENT_TYPE, "application/json".to_owned()),
        (
            header::ACCEPT,
            "application/json, text/event-stream".to_owned(),
        ),
        (header::AUTHORIZATION, format!("Bearer {FUZZ_TOKEN}")),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(&name) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }
    let mut builder = Request::post("/mcp");
    for (k, v) in &headers {
        builder = builder.header(k, v);
    }
    let Ok(req) = builder.body(Full::new(Bytes::copy_from_slice(body))) else {
        return;
    };
    let raw = serde_json::from_slice::<Value>(body).ok();
    with_gateway(|rt, gateway| {
        rt.block_on(async {
            let reply = gateway.handle(req).await;
            let status = reply.status();
            assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR);
            let json = reply
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes() == b"application/json");
            if !json {
                // Event streams (subscriptions/listen) stay open: dropping them is the client
                // going away.
                return;
            }
            let Ok(bytes) = reply.into_body().collect().await.map(|c| c.to_bytes());
            let answer: Value = match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(e) => panic!("a JSON reply is not JSON ({e})"),
            };
            let stateless = !headers.contains_key("mcp-session-id")
                && raw.as_ref().is_some_and(|r| r["method"] != "initialize");
            if let (true, StatusCode::OK, Some(result), Some(raw)) =
                (stateless, status, answer.get("result"), raw.as_ref())
            {
                assert_headers_agree(&headers, raw);
                assert!(
                    result["resultType"].is_string(),
                    "a result without resultType"
                );
                assert_eq!(result["_meta"][meta::SERVER_INFO]["name"], "portcullis");
            }
            gateway.close_all_sessions().await;
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(headers: &str, body: Value) -> Vec<u8> {
        format!("{headers}\n\n{body}").into_bytes()
    }

    /// The harness reaches the accepting paths, and its checks hold there: without this the
    /// fuzzer would only meet refusals.
    #[test]
    fn accepted_and_refused_requests_pass_the_checks() {
        let envelope = json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        });
        let discover = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": envelope}});
        let ok = input(
            "MCP-Protocol-Version: 2026-07-28\nMcp-Method: server/discover",
            discover.clone(),
        );
        let (head, body) = split_head(&ok);
        let req = match Message::parse(body) {
            Ok(Message::Request(r)) => r,
            other => panic!("{other:?}"),
        };
        assert!(envelope::decode(&header_map(head), &req).is_ok());
        modern_request(&ok);
        modern_request(&input(
            "MCP-Protocol-Version: 2026-07-28\nMcp-Method: tools/list",
            discover,
        ));
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "x", "arguments": {"region": "eu", "opts": {"limit": 3}}, "_meta": envelope}});
        modern_request(&input(
            "MCP-Protocol-Version: 2026-07-28\nMcp-Method: tools/call\nMcp-Name: x\nMcp-Param-Region: eu\nMcp-Param-Limit: 3",
            call,
        ));
        modern_request(b"garbage");
    }
}
