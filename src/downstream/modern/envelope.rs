//! Decoding one 2026-07-28 request: its `_meta` envelope (revision, capabilities, client info,
//! log level) into the request context, and its request metadata headers checked against the
//! body. The checks run in the specification's order, so that a client learns the first thing
//! wrong with its request: missing envelope (-32602), a header that disagrees with the body or
//! is missing (-32020), a revision the gateway does not serve (-32022).

use http::{HeaderMap, StatusCode};
use serde_json::{json, Map, Value};

use crate::mcp::context::{level_rank, LogLevel, RequestContext, TraceContext};
use crate::mcp::{headers, meta, protocol, ClientCaps, ErrorCode, Id, Request};

/// Why a request was refused before it reached anything: a JSON-RPC error and its HTTP status.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    pub data: Option<Value>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Rejection {
        Rejection {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn mismatch(message: impl Into<String>) -> Rejection {
        Rejection::new(ErrorCode::HEADER_MISMATCH, message)
    }

    /// The HTTP status this rejection is sent with.
    pub fn status(&self) -> StatusCode {
        super::encode::status_of(self.code.0)
    }

    pub fn bytes(&self, id: Option<&Id>) -> bytes::Bytes {
        crate::mcp::error_response_with_data(id, self.code, &self.message, self.data.as_ref())
    }

    /// Whether this rejection is about the request's headers (audited as a refused call).
    pub fn is_header_mismatch(&self) -> bool {
        self.code == ErrorCode::HEADER_MISMATCH
    }
}

/// A decoded request: the era's `_meta` keys lifted out of `params` into `context`.
#[derive(Debug)]
pub struct Decoded {
    pub id: Id,
    pub method: String,
    pub params: Map<String, Value>,
    pub context: RequestContext,
}

/// The `UnsupportedProtocolVersionError` for `requested`: lists every revision served, so that
/// a dual-era client can fall back to the handshake.
pub fn unsupported(requested: &str) -> Rejection {
    Rejection {
        code: ErrorCode::UNSUPPORTED_PROTOCOL_VERSION,
        message: format!(
            "unsupported protocol version `{requested}`: this gateway serves {} statelessly and {} through initialize",
            protocol::MODERN.join(", "),
            protocol::SUPPORTED.join(", ")
        ),
        data: Some(json!({ "supported": protocol::SERVED, "requested": requested })),
    }
}

/// A header's single value, decoded; `Err` when it appears more than once or holds bytes no
/// header value may.
fn single(headers: &HeaderMap, name: &str) -> Result<Option<String>, Rejection> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::mismatch(format!(
            "header mismatch: {name} appears more than once"
        )));
    }
    headers::decode_value(first.as_bytes())
        .map(Some)
        .ok_or_else(|| {
            Rejection::mismatch(format!(
                "header mismatch: {name} holds characters a header may not, or a malformed =?base64?…?= value"
            ))
        })
}

/// Checks and decodes `req`, sent with `headers`.
pub fn decode(headers: &HeaderMap, req: &Request) -> Result<Decoded, Rejection> {
    // Read every mirrored header first: a duplicate is refused whatever else is wrong.
    let version_header = single(headers, headers::PROTOCOL_VERSION)?;
    let method_header = single(headers, headers::METHOD)?;
    let name_header = single(headers, headers::NAME)?;

    let mut params: Map<String, Value> = match req.params.as_deref() {
        None => Map::new(),
        Some(raw) => match serde_json::from_str(raw.get()) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Rejection::new(
                    ErrorCode::INVALID_PARAMS,
                    "`params` must be an object",
                ))
            }
        },
    };
    let mut envelope = match params.remove("_meta") {
        Some(Value::Object(m)) => m,
        _ => {
            return Err(Rejection::new(
                ErrorCode::INVALID_PARAMS,
                format!(
                    "params._meta must be an object with `{}` and `{}` (2026-07-28 requests carry their revision and capabilities)",
                    meta::PROTOCOL_VERSION,
                    meta::CLIENT_CAPABILITIES
                ),
            ))
        }
    };
    let missing: Vec<&str> = [meta::PROTOCOL_VERSION, meta::CLIENT_CAPABILITIES]
        .into_iter()
        .filter(|k| !envelope.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Err(Rejection::new(
            ErrorCode::INVALID_PARAMS,
            format!("params._meta lacks {}", missing.join(" and ")),
        ));
    }
    let version = envelope.get(meta::PROTOCOL_VERSION).cloned();

    // Headers against the body: the body decides, a header must agree with it.
    match (&version_header, &version) {
        (None, _) => {
            return Err(Rejection::mismatch(
                "header mismatch: MCP-Protocol-Version is required",
            ))
        }
        (Some(h), Some(Value::String(v))) if h == v => {}
        (Some(h), _) => {
            return Err(Rejection::mismatch(format!(
                "header mismatch: MCP-Protocol-Version `{h}` differs from the body's {}",
                meta::PROTOCOL_VERSION
            )))
        }
    }
    match &method_header {
        None => {
            return Err(Rejection::mismatch(
                "header mismatch: Mcp-Method is required",
            ))
        }
        Some(m) if *m == req.method => {}
        Some(m) => {
            return Err(Rejection::mismatch(format!(
                "header mismatch: Mcp-Method `{m}` differs from the body's method `{}`",
                req.method
            )))
        }
    }
    if let Some(key) = headers::name_param(&req.method) {
        if let Some(body) = params.get(key) {
            let body = body.as_str().unwrap_or_default();
            match &name_header {
                None => {
                    return Err(Rejection::mismatch(format!(
                        "header mismatch: Mcp-Name is required for {} (the body's `{key}`)",
                        req.method
                    )))
                }
                Some(n) if n == body => {}
                Some(_) => {
                    return Err(Rejection::mismatch(format!(
                        "header mismatch: Mcp-Name differs from the body's `{key}`"
                    )))
                }
            }
        }
    }

    let Some(Value::String(version)) = version else {
        return Err(Rejection::new(
            ErrorCode::INVALID_PARAMS,
            format!("{} must be a string", meta::PROTOCOL_VERSION),
        ));
    };
    let Some(protocol) = protocol::modern(&version) else {
        return Err(unsupported(&version));
    };
    let caps = match envelope.get(meta::CLIENT_CAPABILITIES) {
        Some(c @ Value::Object(_)) => ClientCaps::from_capabilities(c),
        _ => {
            return Err(Rejection::new(
                ErrorCode::INVALID_PARAMS,
                format!("{} must be an object", meta::CLIENT_CAPABILITIES),
            ))
        }
    };
    let log = match envelope.get(meta::LOG_LEVEL) {
        None | Some(Value::Null) => LogLevel::Silent,
        Some(Value::String(l)) => match level_rank(l) {
            Some(rank) => LogLevel::AtLeast(rank),
            None => {
                return Err(Rejection::new(
                    ErrorCode::INVALID_PARAMS,
                    format!("{} `{l}` is not a log level; use one of debug, info, notice, warning, error, critical, alert, emergency", meta::LOG_LEVEL),
                ))
            }
        },
        Some(_) => {
            return Err(Rejection::new(
                ErrorCode::INVALID_PARAMS,
                format!("{} must be a string", meta::LOG_LEVEL),
            ))
        }
    };
    let client_info = match envelope.get(meta::CLIENT_INFO) {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(crate::mcp::to_raw(v)),
        Some(_) => {
            return Err(Rejection::new(
                ErrorCode::INVALID_PARAMS,
                format!(
                    "{} must be an object (an Implementation with name and version)",
                    meta::CLIENT_INFO
                ),
            ))
        }
    };
    for key in meta::REQUEST_ENVELOPE {
        envelope.remove(key);
    }
    if !envelope.is_empty() {
        // Progress tokens, trace context and anything else stay for the server.
        params.insert("_meta".into(), Value::Object(envelope));
    }
    let trace = TraceContext::from_meta(params.get("_meta").and_then(Value::as_object));
    Ok(Decoded {
        id: req.id.clone(),
        method: req.method.clone(),
        params,
        context: RequestContext {
            protocol,
            caps,
            client_info,
            trace,
            log,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn request(method: &str, params: Value) -> Request {
        Request {
            id: Id::Num(1),
            method: method.into(),
            params: Some(crate::mcp::to_raw(&params)),
        }
    }

    fn heads(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn envelope() -> Value {
        json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
            "io.modelcontextprotocol/logLevel": "info",
            "progressToken": 5,
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        })
    }

    #[test]
    fn decodes_the_envelope_and_keeps_the_rest_for_the_server() {
        let h = heads(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "a__x"),
        ]);
        let d = decode(
            &h,
            &request("tools/call", json!({"name": "a__x", "_meta": envelope()})),
        )
        .unwrap();
        assert_eq!(d.context.protocol, "2026-07-28");
        assert!(d.context.caps.elicitation);
        assert_eq!(d.context.log, LogLevel::AtLeast(1));
        assert!(d.context.trace.traceparent.is_some());
        let kept = d.params["_meta"].as_object().unwrap();
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept.contains_key("progressToken") && kept.contains_key("traceparent"));
    }

    #[test]
    fn a_client_info_that_is_not_an_object_is_refused() {
        let h = heads(&[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ]);
        let mut meta = envelope();
        meta["io.modelcontextprotocol/clientInfo"] = json!("x".repeat(1000));
        let rej = decode(&h, &request("tools/list", json!({"_meta": meta}))).unwrap_err();
        assert_eq!(rej.code, ErrorCode::INVALID_PARAMS);
        assert!(rej.message.contains("clientInfo"), "{}", rej.message);
        meta["io.modelcontextprotocol/clientInfo"] = Value::Null;
        assert!(decode(&h, &request("tools/list", json!({"_meta": meta}))).is_ok());
    }

    #[test]
    fn refuses_in_the_specified_order() {
        let call = |h: &[(&str, &str)], p: Value| {
            decode(&heads(h), &request("tools/call", p))
                .unwrap_err()
                .code
        };
        let ok = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "a__x"),
        ];
        assert_eq!(
            call(&ok, json!({"name": "a__x"})),
            ErrorCode::INVALID_PARAMS
        );
        assert_eq!(
            call(&ok[..2], json!({"name": "a__x", "_meta": envelope()})),
            ErrorCode::HEADER_MISMATCH
        );
        assert_eq!(
            call(
                &[ok[0], ok[1], ("mcp-name", "a__y")],
                json!({"name": "a__x", "_meta": envelope()})
            ),
            ErrorCode::HEADER_MISMATCH
        );
        assert_eq!(
            call(
                &[ok[0], ok[1], ok[1], ok[2]],
                json!({"name": "a__x", "_meta": envelope()})
            ),
            ErrorCode::HEADER_MISMATCH,
            "two Mcp-Method headers"
        );
        let mut old = envelope();
        old["io.modelcontextprotocol/protocolVersion"] = json!("2025-11-25");
        let rej = decode(
            &heads(&[("mcp-protocol-version", "2025-11-25"), ok[1], ok[2]]),
            &request("tools/call", json!({"name": "a__x", "_meta": old})),
        )
        .unwrap_err();
        assert_eq!(rej.code, ErrorCode::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(rej.status(), StatusCode::BAD_REQUEST);
        assert_eq!(rej.data.unwrap()["supported"][0], "2026-07-28");
        // A base64 name is decoded before comparing.
        let d = decode(
            &heads(&[ok[0], ok[1], ("mcp-name", "=?base64?YV9feA==?=")]),
            &request("tools/call", json!({"name": "a__x", "_meta": envelope()})),
        );
        assert!(d.is_ok(), "{d:?}");
    }
}
