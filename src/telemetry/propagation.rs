//! W3C Trace Context (`traceparent`, `tracestate`): read from a request's `_meta` or its HTTP
//! headers, written into what goes to a server (`_meta`, and HTTP headers mirrored from it).

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use serde_json::{Map, Value};

use crate::mcp::TraceContext;

/// The span context a `traceparent` names (version 00; later versions are read as 00 with
/// their first four fields, as the specification asks), or `None` when it is malformed or
/// names the all-zero trace or span.
pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let t = traceparent.trim();
    let mut parts = t.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = tracestate
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    ))
}

/// The caller's span context: `_meta` first (the request's own), else the HTTP headers.
pub fn remote_parent(
    trace: &TraceContext,
    headers: Option<&http::HeaderMap>,
) -> Option<SpanContext> {
    if let Some(tp) = &trace.traceparent {
        return parse(tp, trace.tracestate.as_deref());
    }
    let h = headers?;
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    parse(get("traceparent")?, get("tracestate"))
}

/// `traceparent` of a span context.
pub fn format(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// Writes `cx` into a request's `params._meta` (creating `_meta` when needed), replacing the
/// caller's `traceparent`: the server's parent is now the gateway's upstream span. The
/// caller's `tracestate` is kept (vendors' entries travel with the trace).
pub fn inject(params: &mut Map<String, Value>, cx: &SpanContext) {
    if !cx.is_valid() {
        return;
    }
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = meta {
        m.insert("traceparent".into(), Value::String(format(cx)));
        let state = cx.trace_state().header();
        if !state.is_empty() {
            m.insert("tracestate".into(), Value::String(state));
        }
    }
}

/// Sets the `traceparent` and `tracestate` headers of a request to a server from the
/// `params._meta` of the JSON-RPC message it carries (the headers mirror the body, as the
/// 2026-07-28 request headers do). A message without them leaves the headers alone.
pub fn mirror_headers(msg: &[u8], headers: &mut http::HeaderMap) {
    // Most messages carry no trace context: look before parsing.
    if !msg.windows(11).any(|w| w == b"traceparent") {
        return;
    }
    #[derive(serde::Deserialize)]
    struct Msg {
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        #[serde(rename = "_meta")]
        meta: Option<Map<String, Value>>,
    }
    let Ok(Msg {
        params: Some(Params { meta: Some(meta) }),
    }) = serde_json::from_slice::<Msg>(msg)
    else {
        return;
    };
    for key in ["traceparent", "tracestate"] {
        if let Some(v) = meta
            .get(key)
            .and_then(Value::as_str)
            .and_then(|v| http::HeaderValue::from_str(v).ok())
        {
            headers.insert(key, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_ignored() {
        let cx = parse(TP, Some("congo=t61rcWkgMzE")).unwrap();
        assert!(cx.is_remote() && cx.is_sampled());
        assert_eq!(format(&cx), TP);
        assert_eq!(cx.trace_state().header(), "congo=t61rcWkgMzE");
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(parse(bad, None).is_none(), "{bad}");
        }
        let mut params = Map::new();
        inject(&mut params, &cx);
        assert_eq!(params["_meta"]["traceparent"], TP);
        let mut h = http::HeaderMap::new();
        h.insert("traceparent", TP.parse().unwrap());
        assert_eq!(
            remote_parent(&TraceContext::default(), Some(&h)).map(|c| c.trace_id()),
            Some(cx.trace_id())
        );
    }
}
