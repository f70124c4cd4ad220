//! A request as a 2026-07-28 server wants it: what the initialize handshake used to settle once
//! per session goes into each request's `_meta`.
//!
//! - `protocolVersion`: 2026-07-28.
//! - `clientInfo`: the gateway's (the client's own is self-reported and never forwarded as
//!   ours).
//! - `clientCapabilities`: what the caller can answer, within what the policy lets the server
//!   ask (`client_capabilities`). A 2025-era caller's server requests are relayed by the
//!   gateway, which answers `roots/list` from the policy when the caller cannot; a
//!   2026-07-28 caller answers multi round-trip requests itself, so only its own capabilities
//!   count. The tasks extension is declared only for a caller that declared it.
//! - `logLevel`: the caller's, when it asked for logs; for a 2025-era caller that never set a
//!   level, `debug` (a 2025-era server sends its logs without being asked, and the gateway
//!   relays them all to such a caller).
//!
//! Every other member of `_meta` (progress token, trace context) is kept as the caller sent it.

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::probe::{client_info, VERSION};
use crate::mcp::{context, meta, protocol, LogLevel, RequestContext};
use crate::policy::ClientCapabilities;

/// Whether the caller takes an `InputRequiredResult` itself (a 2026-07-28 client); a 2025-era
/// caller gets the server's input requests as requests on its session instead.
pub fn takes_input_required(caller: &RequestContext) -> bool {
    protocol::is_modern(caller.protocol)
}

/// The `clientCapabilities` declared for `caller`'s request.
pub fn capabilities(caller: Option<&RequestContext>, policy: ClientCapabilities) -> Value {
    let mut caps = Map::new();
    let Some(c) = caller else {
        return Value::Object(caps);
    };
    let relayed = !takes_input_required(c);
    if policy.sampling && c.caps.sampling {
        caps.insert("sampling".into(), json!({}));
    }
    if policy.elicitation && c.caps.elicitation {
        caps.insert("elicitation".into(), json!({}));
    }
    if policy.roots && (c.caps.roots || relayed) {
        caps.insert("roots".into(), json!({}));
    }
    if c.caps.tasks && !relayed {
        caps.insert("extensions".into(), json!({ meta::TASKS_EXTENSION: {} }));
    }
    Value::Object(caps)
}

/// `params` with the envelope of a 2026-07-28 request for `caller` in its `_meta`.
pub fn encode(
    params: &Map<String, Value>,
    caller: Option<&RequestContext>,
    policy: ClientCapabilities,
) -> Box<RawValue> {
    let mut params = params.clone();
    let mut m = match params.remove("_meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for key in meta::REQUEST_ENVELOPE {
        m.remove(key);
    }
    m.insert(meta::PROTOCOL_VERSION.into(), Value::String(VERSION.into()));
    m.insert(meta::CLIENT_INFO.into(), client_info());
    m.insert(
        meta::CLIENT_CAPABILITIES.into(),
        capabilities(caller, policy),
    );
    let level = match caller.map(|c| c.log) {
        Some(LogLevel::AtLeast(rank)) => context::LEVELS.get(usize::from(rank)).copied(),
        Some(LogLevel::Unset) => context::LEVELS.first().copied(),
        Some(LogLevel::Silent) | None => None,
    };
    if let Some(level) = level {
        m.insert(meta::LOG_LEVEL.into(), Value::String(level.into()));
    }
    params.insert("_meta".into(), Value::Object(m));
    crate::mcp::to_raw(&params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::{ClientCaps, RequestContext};

    fn caller(protocol: &'static str, caps: ClientCaps, log: LogLevel) -> RequestContext {
        RequestContext {
            protocol,
            caps,
            client_info: None,
            trace: Default::default(),
            log,
        }
    }

    #[test]
    fn the_envelope_replaces_the_callers_and_keeps_the_rest() {
        let params: Map<String, Value> = serde_json::from_value(json!({
            "name": "t",
            "_meta": {
                "progressToken": "p1",
                "traceparent": "00-ab-cd-01",
                "io.modelcontextprotocol/clientInfo": {"name": "forged"},
                "io.modelcontextprotocol/protocolVersion": "1999-01-01"
            }
        }))
        .unwrap();
        let c = caller("2025-11-25", ClientCaps::default(), LogLevel::AtLeast(3));
        let out: Value =
            serde_json::from_str(encode(&params, Some(&c), ClientCapabilities::default()).get())
                .unwrap();
        let m = &out["_meta"];
        assert_eq!(m["progressToken"], "p1");
        assert_eq!(m["traceparent"], "00-ab-cd-01");
        assert_eq!(m["io.modelcontextprotocol/protocolVersion"], "2026-07-28");
        assert_eq!(
            m["io.modelcontextprotocol/clientInfo"]["name"],
            "portcullis"
        );
        assert_eq!(m["io.modelcontextprotocol/logLevel"], "warning");
        assert_eq!(out["name"], "t");
        let level = |log| {
            let c = caller("2025-11-25", ClientCaps::default(), log);
            let out: Value = serde_json::from_str(
                encode(&Map::new(), Some(&c), ClientCapabilities::default()).get(),
            )
            .unwrap();
            out["_meta"]["io.modelcontextprotocol/logLevel"].clone()
        };
        assert_eq!(
            level(LogLevel::Unset),
            "debug",
            "a 2025 caller that never chose hears all"
        );
        assert_eq!(level(LogLevel::Silent), Value::Null);
    }

    #[test]
    fn capabilities_follow_the_caller_within_the_policy() {
        let all = ClientCaps {
            sampling: true,
            elicitation: true,
            roots: false,
            tasks: true,
        };
        let policy = ClientCapabilities::default();
        let legacy = capabilities(Some(&caller("2025-06-18", all, LogLevel::Unset)), policy);
        // Roots of a 2025-era caller come from the policy when it has none: declared.
        assert_eq!(
            legacy,
            json!({"sampling": {}, "elicitation": {}, "roots": {}})
        );
        let modern = capabilities(Some(&caller("2026-07-28", all, LogLevel::Silent)), policy);
        assert_eq!(
            modern,
            json!({"sampling": {}, "elicitation": {}, "extensions": {"io.modelcontextprotocol/tasks": {}}})
        );
        let narrow = ClientCapabilities {
            roots: false,
            sampling: false,
            elicitation: true,
        };
        assert_eq!(
            capabilities(Some(&caller("2025-06-18", all, LogLevel::Unset)), narrow),
            json!({"elicitation": {}})
        );
        assert_eq!(capabilities(None, policy), json!({}));
    }
}
