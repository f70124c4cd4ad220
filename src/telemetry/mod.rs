//! OpenTelemetry trace spans and W3C trace-context propagation (`[telemetry]`).
//!
//! One span per client request (`mcp <method>`, kind server), its parent the caller's
//! `traceparent` (from `_meta`, else the HTTP header); children `access` (the decision and
//! quotas), `audit` (each durable record) and `upstream` (the server's part, kind client),
//! whose context goes to the server in `_meta.traceparent` and, for HTTP servers, the
//! `traceparent` header. Attributes are the method, server, tool, client, protocol era,
//! outcome and JSON-RPC error code: never arguments, results or secrets.
//!
//! Spans are made with the `opentelemetry` API directly rather than through
//! `tracing-opentelemetry`: the gateway's log events carry details (reasons, URIs, server
//! stderr) that must not become span events, and the attributes a span gets are exactly the
//! ones listed here.
//!
//! Export never sits on a call's path ([`export`]): spans go on a bounded queue and a
//! separate task exports them with a deadline. Without `[telemetry]` nothing is made at all.

pub mod export;
pub mod propagation;

use std::sync::OnceLock;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::mcp::RequestContext;
use crate::policy::model::{HeaderValue, Telemetry as Config};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("telemetry: {0}")]
    Config(String),
    #[error("telemetry header `{0}`: {1}")]
    Secret(String, String),
}

struct Installed {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Builds the exporter and starts exporting. Call once, on the gateway's runtime; a second
/// call keeps the first configuration (a reload does not change where spans go).
pub fn init(config: &Config) -> Result<(), TelemetryError> {
    if INSTALLED.get().is_some() {
        return Ok(());
    }
    let mut headers = Vec::new();
    for (name, value) in &config.headers {
        let v = match value {
            HeaderValue::Literal(v) => v.clone(),
            HeaderValue::Secret(r) => crate::secrets::resolve(name, r)
                .map_err(|e| TelemetryError::Secret(name.clone(), e.to_string()))?,
        };
        headers.push((name.clone(), v));
    }
    let exporter = export::exporter(config, &headers)?;
    let (processor, starter) = export::Bounded::new(exporter, config.queue, config.timeout);
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(config.service_name.clone())
                .build(),
        )
        .with_span_processor(processor)
        .build();
    starter.start();
    let tracer = provider.tracer("portcullis");
    let _ = INSTALLED.set(Installed { provider, tracer });
    Ok(())
}

/// Whether spans are made.
pub fn enabled() -> bool {
    INSTALLED.get().is_some()
}

/// Ends the provider (spans still queued may be lost; export never delays shutdown).
pub fn shutdown() {
    if let Some(i) = INSTALLED.get() {
        let _ = i.provider.shutdown();
    }
}

/// The protocol era of a revision: `2026-07-28` and later are stateless (`modern`), the rest
/// speak sessions (`legacy`). Only an attribute: nothing decides by it.
fn era(protocol: &str) -> &'static str {
    if protocol >= "2026-07-28" {
        "modern"
    } else {
        "legacy"
    }
}

/// A client request's span. Run the request's work inside [`RequestSpan::context`]; end it
/// with [`RequestSpan::finish`] (dropping it ends it too, without an outcome).
pub struct RequestSpan {
    cx: Option<Context>,
}

/// Starts the span of one client request.
pub fn request(method: &str, client: &str, context: &RequestContext) -> RequestSpan {
    let Some(i) = INSTALLED.get() else {
        return RequestSpan { cx: None };
    };
    let parent = match propagation::remote_parent(&context.trace, None) {
        Some(remote) => Context::new().with_remote_span_context(remote),
        None => Context::new(),
    };
    let span = i
        .tracer
        .span_builder(format!("mcp {method}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("mcp.method.name", method.to_owned()),
            KeyValue::new("portcullis.client", client.to_owned()),
            KeyValue::new("mcp.protocol.version", context.protocol),
            KeyValue::new("portcullis.era", era(context.protocol)),
        ])
        .start_with_context(&i.tracer, &parent);
    RequestSpan {
        cx: Some(parent.with_span(span)),
    }
}

impl RequestSpan {
    /// The context to run the request in (`opentelemetry::context::FutureExt::with_context`).
    pub fn context(&self) -> Context {
        self.cx.clone().unwrap_or_default()
    }

    /// Ends the span with the request's outcome and, for an error, its JSON-RPC code.
    pub fn finish(self, error_code: Option<i64>) {
        let Some(cx) = self.cx else {
            return;
        };
        let span = cx.span();
        match error_code {
            None => span.set_attribute(KeyValue::new("portcullis.outcome", "ok")),
            Some(code) => {
                span.set_attribute(KeyValue::new("portcullis.outcome", "error"));
                span.set_attribute(KeyValue::new("rpc.jsonrpc.error_code", code));
                span.set_status(Status::error(format!("JSON-RPC error {code}")));
            }
        }
        span.end();
    }
}

/// Names the server and tool a request went to on the current request span.
pub fn annotate(server: &str, tool: Option<&str>) {
    if !enabled() {
        return;
    }
    let cx = Context::current();
    let span = cx.span();
    span.set_attribute(KeyValue::new("mcp.server", server.to_owned()));
    if let Some(t) = tool {
        span.set_attribute(KeyValue::new("mcp.tool.name", t.to_owned()));
    }
}

/// A child of the current span: `access`, `audit` or `upstream`. Ends when dropped.
pub struct Child {
    span: Option<opentelemetry_sdk::trace::Span>,
}

/// Starts a child span of the current context's span (none without `[telemetry]`, or
/// outside a request).
pub fn child(name: &'static str) -> Child {
    let Some(i) = INSTALLED.get() else {
        return Child { span: None };
    };
    let cx = Context::current();
    if !cx.has_active_span() {
        return Child { span: None };
    }
    let kind = if name == "upstream" {
        SpanKind::Client
    } else {
        SpanKind::Internal
    };
    Child {
        span: Some(
            i.tracer
                .span_builder(name)
                .with_kind(kind)
                .start_with_context(&i.tracer, &cx),
        ),
    }
}

impl Child {
    /// The span's own context, for propagation to a server.
    pub fn span_context(&self) -> Option<SpanContext> {
        self.span.as_ref().map(|s| s.span_context().clone())
    }

    pub fn outcome(&mut self, outcome: &'static str) {
        if let Some(s) = self.span.as_mut() {
            s.set_attribute(KeyValue::new("portcullis.outcome", outcome));
            if outcome != "ok" && outcome != "allowed" {
                s.set_status(Status::error(outcome));
            }
        }
    }

    pub fn attribute(&mut self, key: &'static str, value: String) {
        if let Some(s) = self.span.as_mut() {
            s.set_attribute(KeyValue::new(key, value));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(s) = self.span.as_mut() {
            s.end();
        }
    }
}
