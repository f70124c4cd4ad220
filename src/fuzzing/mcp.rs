//! The JSON-RPC / MCP framing every POST body and every upstream line goes through.

use serde_json::Value;

use crate::mcp::{Body, Message, ParseError};

pub fn mcp_message(data: &[u8]) {
    match Body::parse(data) {
        Ok(Body::Single(m)) => check_message(&m),
        Ok(Body::Batch(items)) => {
            assert!(!items.is_empty(), "an empty batch was accepted");
            for item in &items {
                match item {
                    Ok(m) => check_message(m),
                    Err(e) => check_error(e),
                }
            }
        }
        Err(e) => check_error(&e),
    }
}

/// What the gateway forwards must be what it read: the serialized message parses back to the
/// same message, byte for byte.
fn check_message(m: &Message) {
    let bytes = m.to_bytes();
    let again = match Message::parse(&bytes) {
        Ok(again) => again,
        Err(e) => panic!(
            "a parsed message does not parse after serialization ({e}): {}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert_eq!(again.to_bytes(), bytes, "serialization is not stable");
}

/// The error response sent for bad input is itself a JSON-RPC error response carrying the id
/// that could be read.
fn check_error(e: &ParseError) {
    let bytes = e.to_response_bytes();
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(err) => panic!(
            "the error response is not JSON ({err}): {}",
            String::from_utf8_lossy(&bytes)
        ),
    };
    assert_eq!(v["jsonrpc"], "2.0");
    assert!(v["error"]["code"].is_i64(), "error code missing: {v}");
    assert!(
        v["error"]["message"].is_string(),
        "error message missing: {v}"
    );
    let id = serde_json::to_value(&e.id).unwrap_or(Value::Null);
    assert_eq!(v["id"], id, "the error response lost the request id");
}
