//! The era probe: what a server's answer to `server/discover` says about it.
//!
//! Only positive evidence makes a server modern: a `DiscoverResult` that names 2026-07-28, or
//! a recognized 2026-07-28 error. Anything else (a method-not-found, a 4xx without a JSON-RPC
//! body, an answer naming only handshake revisions) is a 2025-era server, which then gets the
//! initialize handshake. The fallback is never keyed to one error code: 2025-era servers answer
//! an unknown pre-initialize request however they like.

use serde_json::{json, Value};

use super::super::{Era, InitInfo};
use crate::mcp::{meta, methods, protocol, ErrorCode};

/// The revision the gateway speaks to modern servers.
pub const VERSION: &str = protocol::MODERN[0];

/// What the probe settled.
#[derive(Debug)]
pub enum Verdict {
    /// A 2026-07-28 server; what it said about itself.
    Modern(Box<InitInfo>),
    /// A 2025-era server (why we think so, for the log).
    Legacy(String),
    /// A 2026-era server the gateway cannot talk to (the reason, for `/ready`).
    Refused(String),
}

/// The gateway's identity, sent in every modern request's `_meta`.
pub fn client_info() -> Value {
    json!({ "name": "portcullis", "version": env!("CARGO_PKG_VERSION") })
}

/// The params of the gateway's own `server/discover` (it asks nothing of the client side).
pub fn discover_params() -> Value {
    json!({
        "_meta": {
            meta::PROTOCOL_VERSION: VERSION,
            meta::CLIENT_INFO: client_info(),
            meta::CLIENT_CAPABILITIES: {},
        }
    })
}

/// Reads the answer to `server/discover`: its result, or its error object.
pub fn verdict(outcome: Result<&str, &str>) -> Verdict {
    match outcome {
        Ok(result) => from_result(result),
        Err(error) => from_error(error),
    }
}

fn from_result(result: &str) -> Verdict {
    let Ok(v) = serde_json::from_str::<Value>(result) else {
        return Verdict::Legacy("its server/discover result is not JSON".into());
    };
    let versions: Vec<&str> = v
        .get("supportedVersions")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !versions.contains(&VERSION) {
        return Verdict::Legacy(format!(
            "it answers server/discover but names no {VERSION} revision (it names: {})",
            versions.join(", ")
        ));
    }
    let server_info = v
        .get("_meta")
        .and_then(|m| m.get(meta::SERVER_INFO))
        .cloned()
        .unwrap_or_else(|| json!({}));
    Verdict::Modern(Box::new(InitInfo {
        instance: crate::sandbox::InstanceInfo::default(),
        protocol_version: VERSION.to_owned(),
        era: Era::Modern,
        capabilities: v.get("capabilities").cloned().unwrap_or_else(|| json!({})),
        server_info,
        instructions: v
            .get("instructions")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }))
}

fn from_error(error: &str) -> Verdict {
    let v: Value = serde_json::from_str(error).unwrap_or(Value::Null);
    let code = v.get("code").and_then(Value::as_i64).unwrap_or(0);
    let message = v
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    if code == ErrorCode::UNSUPPORTED_PROTOCOL_VERSION.0 {
        let supported: Vec<&str> = v
            .pointer("/data/supported")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if supported.iter().any(|s| protocol::is_supported(s)) {
            return Verdict::Legacy(format!(
                "it does not serve {VERSION} but names handshake revisions ({})",
                supported.join(", ")
            ));
        }
        return Verdict::Refused(format!(
            "the server speaks only protocol revisions {} and the gateway speaks {VERSION} or the initialize handshake",
            if supported.is_empty() { "it did not name".to_owned() } else { supported.join(", ") }
        ));
    }
    if code == ErrorCode::HEADER_MISMATCH.0 || code == ErrorCode::MISSING_CLIENT_CAPABILITY.0 {
        return Verdict::Refused(format!(
            "the server refused the gateway's {} request ({code}: {message})",
            methods::SERVER_DISCOVER
        ));
    }
    Verdict::Legacy(format!(
        "it answered server/discover with error {code} ({message})"
    ))
}

/// Reads an HTTP error body (a JSON-RPC response or a bare error object) for [`verdict`];
/// `None` when it holds no JSON-RPC error (a plain 4xx page: a 2025-era server).
pub fn error_in_body(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let error = v.get("error").unwrap_or(&v);
    error.get("code")?.as_i64()?;
    Some(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_discover_result_naming_the_revision_is_modern() {
        let r = json!({
            "resultType": "complete",
            "supportedVersions": ["2026-07-28"],
            "capabilities": {"tools": {"listChanged": true}},
            "instructions": "be nice",
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "s", "version": "1"}}
        })
        .to_string();
        let Verdict::Modern(info) = verdict(Ok(&r)) else {
            panic!("modern expected")
        };
        assert_eq!(info.era, Era::Modern);
        assert_eq!(info.server_info["name"], "s");
        assert!(info.has_capability("tools"));
        assert_eq!(info.instructions.as_deref(), Some("be nice"));
    }

    #[test]
    fn anything_else_is_legacy_unless_a_modern_error_says_otherwise() {
        let legacy = [
            Ok(json!({"supportedVersions": ["2025-11-25"]}).to_string()),
            Ok("[]".to_owned()),
            Err(json!({"code": -32601, "message": "Method not found"}).to_string()),
            Err(json!({"code": -32600, "message": "Missing session ID"}).to_string()),
            Err(json!({"code": -32022, "data": {"supported": ["2025-06-18"]}}).to_string()),
            Err("not json".to_owned()),
        ];
        for o in &legacy {
            let v = verdict(o.as_deref().map_err(String::as_str));
            assert!(matches!(v, Verdict::Legacy(_)), "{o:?}: {v:?}");
        }
        let refused = [
            json!({"code": -32022, "data": {"supported": ["2027-01-01"]}}).to_string(),
            json!({"code": -32020, "message": "Header mismatch"}).to_string(),
        ];
        for e in &refused {
            assert!(matches!(verdict(Err(e)), Verdict::Refused(_)), "{e}");
        }
    }

    #[test]
    fn http_error_bodies_are_read_for_their_error() {
        let body = br#"{"jsonrpc":"2.0","id":0,"error":{"code":-32022,"message":"x"}}"#;
        assert!(error_in_body(body).unwrap().contains("-32022"));
        assert!(error_in_body(b"Bad Request: Missing session ID").is_none());
        assert!(error_in_body(br#"{"detail":"nope"}"#).is_none());
    }
}
