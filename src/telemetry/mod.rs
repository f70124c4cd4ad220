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

pub mod connector;
pub mod export;
pub mod propagation;

use std::sync::{Arc, RwLock};

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

/// The tracer in force and what it was built from.
struct Installed {
    tracer: SdkTracer,
    config: Config,
    /// Digest of the header values as read (secrets included), to see a changed secret.
    headers: String,
    // Held so the provider lives while installed; dropping it (after a reload replaced it)
    // lets its export task drain and end.
    _provider: SdkTracerProvider,
}

/// The installed tracer. A lock rather than a `OnceLock` so that a reload can replace it; a
/// read is an uncontended lock and an `Arc` clone per span, next to nothing beside the call.
static INSTALLED: RwLock<Option<Arc<Installed>>> = RwLock::new(None);

fn current() -> Option<Arc<Installed>> {
    INSTALLED.read().ok().and_then(|i| i.clone())
}

/// A tracer built from a configuration, not yet in force ([`apply`] puts it there).
pub struct Pipeline {
    installed: Installed,
    starter: export::Starter,
}

/// What a reload does to the tracer: put in a new one, or remove it (`None`).
pub struct Change(Option<Pipeline>);

impl Change {
    /// The endpoint spans go to after the change (`None`: no spans).
    pub fn endpoint(&self) -> Option<&str> {
        self.0
            .as_ref()
            .map(|p| p.installed.config.endpoint.as_str())
    }
}

fn read_headers(config: &Config) -> Result<Vec<(String, String)>, TelemetryError> {
    let mut headers = Vec::new();
    for (name, value) in &config.headers {
        let v = match value {
            HeaderValue::Literal(v) => v.clone(),
            HeaderValue::Secret(r) => crate::secrets::resolve(name, r)
                .map_err(|e| TelemetryError::Secret(name.clone(), e.to_string()))?,
        };
        headers.push((name.clone(), v));
    }
    Ok(headers)
}

fn digest(headers: &[(String, String)]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in headers {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// Reads the header secrets and builds the exporter and the provider, without starting or
/// installing anything: every error (a secret that cannot be read, a bad `ca_file`) comes
/// out here, before a start or a reload changes anything. Call on the gateway's runtime.
pub fn prepare(config: &Config) -> Result<Pipeline, TelemetryError> {
    let headers = read_headers(config)?;
    let (exporter, last_error) = export::exporter(config, &headers)?;
    let (processor, starter) = export::Bounded::new(exporter, config, last_error);
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
    let tracer = provider.tracer("portcullis");
    Ok(Pipeline {
        installed: Installed {
            tracer,
            config: config.clone(),
            headers: digest(&headers),
            _provider: provider,
        },
        starter,
    })
}

/// For a reload to `config`: `Ok(None)` when the tracer in force already matches it (same
/// settings, same header values), else the [`Change`] to apply with [`apply`].
pub fn prepare_change(config: Option<&Config>) -> Result<Option<Change>, TelemetryError> {
    let now = current();
    match (config, now) {
        (None, None) => Ok(None),
        (None, Some(_)) => Ok(Some(Change(None))),
        (Some(c), Some(i)) if i.config == *c && i.headers == digest(&read_headers(c)?) => Ok(None),
        (Some(c), _) => Ok(Some(Change(Some(prepare(c)?)))),
    }
}

/// Puts a prepared pipeline in force, or removes the tracer. Spans already started keep the
/// tracer they started with: they end to the collector they began with, whose export task
/// drains its queue and ends after the last of them.
pub fn apply(change: Change) {
    let next = change.0.map(|p| {
        p.starter.start();
        Arc::new(p.installed)
    });
    let old = match INSTALLED.write() {
        Ok(mut slot) => std::mem::replace(&mut *slot, next),
        Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), next),
    };
    // Dropped outside the lock: the provider's shutdown runs here, never under it.
    drop(old);
}

/// Builds the exporter and starts exporting (start-up). Call on the gateway's runtime.
pub fn init(config: &Config) -> Result<(), TelemetryError> {
    apply(Change(Some(prepare(config)?)));
    Ok(())
}

/// Whether spans are made.
pub fn enabled() -> bool {
    INSTALLED.read().map(|i| i.is_some()).unwrap_or(false)
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
    let Some(i) = current() else {
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
    let Some(i) = current() else {
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
