//! What a client request says about itself, whichever era it came in: the one internal model
//! the edges produce (downstream decodes a session's handshake or a stateless request's
//! `_meta` into it) and consume (an upstream encoder writes it for the server's era). The
//! router, access and audit read it and never ask which era it came from.

use serde_json::value::RawValue;
use serde_json::Value;

use super::meta;

/// RFC 5424 severities as MCP names them, least severe first.
pub const LEVELS: [&str; 8] = [
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// The index of `level` in [`LEVELS`].
pub fn level_rank(level: &str) -> Option<u8> {
    LEVELS
        .iter()
        .position(|l| *l == level)
        .and_then(|i| u8::try_from(i).ok())
}

/// Which server log messages a request's caller hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Everything, until the caller sets a level (a 2025-era session before `logging/setLevel`).
    Unset,
    /// Messages at this rank of [`LEVELS`] or more severe.
    AtLeast(u8),
    /// None (a 2026-07-28 request without `io.modelcontextprotocol/logLevel`).
    Silent,
}

/// Client capabilities that decide what the gateway may ask of the client on a server's behalf.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientCaps {
    pub sampling: bool,
    pub elicitation: bool,
    pub roots: bool,
    /// The tasks extension (`extensions."io.modelcontextprotocol/tasks"`).
    pub tasks: bool,
}

impl ClientCaps {
    /// Reads the capabilities object of an `initialize` request.
    pub fn from_initialize(params: &Value) -> ClientCaps {
        params
            .get("capabilities")
            .map(ClientCaps::from_capabilities)
            .unwrap_or_default()
    }

    /// Reads a `ClientCapabilities` object.
    pub fn from_capabilities(caps: &Value) -> ClientCaps {
        let has = |k: &str| caps.get(k).is_some_and(|v| !v.is_null());
        ClientCaps {
            sampling: has("sampling"),
            elicitation: has("elicitation"),
            roots: has("roots"),
            tasks: caps
                .get("extensions")
                .and_then(|e| e.get(meta::TASKS_EXTENSION))
                .is_some_and(|v| !v.is_null()),
        }
    }

    /// Whether the client can answer a server request with method `method`.
    pub fn answers(&self, method: &str) -> bool {
        use super::methods::*;
        match method {
            SAMPLING_CREATE_MESSAGE => self.sampling,
            ELICITATION_CREATE => self.elicitation,
            ROOTS_LIST => self.roots,
            _ => false,
        }
    }

    /// The `ClientCapabilities` object naming the capability `method` needs, for a
    /// `MissingRequiredClientCapability` error.
    pub fn required_for(method: &str) -> Option<Value> {
        use super::methods::*;
        let key = match method {
            SAMPLING_CREATE_MESSAGE => "sampling",
            ELICITATION_CREATE => "elicitation",
            ROOTS_LIST => "roots",
            _ => return None,
        };
        Some(serde_json::json!({ key: {} }))
    }
}

/// W3C trace context from a request's `_meta`, kept verbatim. The values also stay in the
/// request's `_meta`, so servers receive them unchanged; this copy is for the gateway's own use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub baggage: Option<String>,
}

impl TraceContext {
    /// Reads the trace keys of a `_meta` object (only string values count).
    pub fn from_meta(meta: Option<&serde_json::Map<String, Value>>) -> TraceContext {
        let get = |k: &str| {
            meta.and_then(|m| m.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        TraceContext {
            traceparent: get(meta::TRACEPARENT),
            tracestate: get(meta::TRACESTATE),
            baggage: get(meta::BAGGAGE),
        }
    }
}

/// Everything about a request besides its method and parameters.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The revision the client speaks for this request.
    pub protocol: &'static str,
    pub caps: ClientCaps,
    /// The client's self-reported `Implementation` (display and logs only, never decisions).
    pub client_info: Option<Box<RawValue>>,
    pub trace: TraceContext,
    pub log: LogLevel,
}

impl RequestContext {
    /// The context of a request on a session: what the handshake settled, and the request's own
    /// trace keys.
    pub fn of_session(
        protocol: &'static str,
        caps: ClientCaps,
        params: Option<&RawValue>,
    ) -> RequestContext {
        RequestContext {
            protocol,
            caps,
            client_info: None,
            trace: trace_of(params),
            log: LogLevel::Unset,
        }
    }
}

/// The trace keys of a request's raw params, read without parsing more than `_meta`.
pub fn trace_of(params: Option<&RawValue>) -> TraceContext {
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: Option<serde_json::Map<String, Value>>,
    }
    let Some(raw) = params else {
        return TraceContext::default();
    };
    // A cheap test first: most requests carry no trace context at all.
    if !raw.get().contains("trace") && !raw.get().contains("baggage") {
        return TraceContext::default();
    }
    match serde_json::from_str::<Params>(raw.get()) {
        Ok(p) => TraceContext::from_meta(p.meta.as_ref()),
        Err(_) => TraceContext::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn capabilities_of_both_eras() {
        let c = ClientCaps::from_initialize(
            &json!({"capabilities": {"sampling": {}, "roots": {"listChanged": true}}}),
        );
        assert!(c.sampling && c.roots && !c.elicitation && !c.tasks);
        let m = ClientCaps::from_capabilities(
            &json!({"elicitation": {"form": {}}, "extensions": {"io.modelcontextprotocol/tasks": {}}}),
        );
        assert!(m.elicitation && m.tasks && !m.sampling);
        assert!(m.answers("elicitation/create") && !m.answers("sampling/createMessage"));
        assert_eq!(
            ClientCaps::required_for("roots/list"),
            Some(json!({"roots": {}}))
        );
    }

    #[test]
    fn trace_keys_are_read_verbatim() {
        let raw = crate::mcp::to_raw(
            &json!({"_meta": {"traceparent": "00-ab-cd-01", "tracestate": "k=v"}}),
        );
        let t = trace_of(Some(&raw));
        assert_eq!(t.traceparent.as_deref(), Some("00-ab-cd-01"));
        assert_eq!(t.tracestate.as_deref(), Some("k=v"));
        assert_eq!(trace_of(None), TraceContext::default());
    }
}
