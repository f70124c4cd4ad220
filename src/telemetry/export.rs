//! Getting spans to the collector without ever holding up a call: a span that ends is put on
//! a bounded queue with `try_send` (a full queue drops it and counts the drop); one task takes
//! batches off the queue and exports each with a deadline. A collector that is down, refuses,
//! or never answers costs that batch, counted in `/metrics`, and nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;

use super::connector::{Alpn, CollectorConnector, LastError};
use super::TelemetryError;
use crate::policy::model::{OtlpProtocol, Telemetry as Config};

/// Spans per export request.
const BATCH: usize = 512;
/// How long a partial batch waits for more spans.
const LINGER: Duration = Duration::from_millis(500);

/// The OTLP exporter for `config`, with `headers` (secret values already read), and where its
/// connector leaves the last connection error.
pub fn exporter(
    config: &Config,
    headers: &[(String, String)],
) -> Result<(opentelemetry_otlp::SpanExporter, LastError), TelemetryError> {
    let ca_file = config.ca_file.as_deref();
    let (build, last_error) = match config.protocol {
        OtlpProtocol::HttpProtobuf => {
            let mut url = config.endpoint.trim_end_matches('/').to_owned();
            if !url.ends_with("/v1/traces") {
                url.push_str("/v1/traces");
            }
            // hyper's client on the gateway's own runtime (never a blocking thread per
            // export), over our connector: TLS exactly when the endpoint is https.
            let connector = CollectorConnector::new(&config.endpoint, ca_file, Alpn::Http1)?;
            let last_error = connector.last_error();
            let client =
                opentelemetry_http::hyper::HyperClient::new(connector, config.timeout, None);
            let build = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(config.timeout)
                .with_headers(headers.iter().cloned().collect::<HashMap<_, _>>())
                .build();
            (build, last_error)
        }
        OtlpProtocol::Grpc => {
            let mut map = http::HeaderMap::new();
            for (k, v) in headers {
                let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|e| TelemetryError::Config(format!("header `{k}`: {e}")))?;
                let value = http::HeaderValue::from_str(v).map_err(|_| {
                    TelemetryError::Config(format!(
                        "header `{k}` has a value that is not valid in a header"
                    ))
                })?;
                map.insert(name, value);
            }
            // Our own channel rather than tonic's TLS features: the same rustls set-up
            // (roots, `ca_file`, ring) as the HTTP exporter and the gateway's remote servers,
            // and TLS decided by the configured scheme alone.
            let connector = CollectorConnector::new(&config.endpoint, ca_file, Alpn::H2)?;
            let last_error = connector.last_error();
            let channel = tonic::transport::Endpoint::from_shared(config.endpoint.clone())
                .map_err(|e| TelemetryError::Config(format!("endpoint: {e}")))?
                .timeout(config.timeout)
                .connect_with_connector_lazy(connector);
            let build = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(channel)
                .with_timeout(config.timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map),
                )
                .build();
            (build, last_error)
        }
    };
    let exporter = build.map_err(|e| TelemetryError::Config(e.to_string()))?;
    Ok((exporter, last_error))
}

/// The bounded, never-blocking batch processor.
#[derive(Debug)]
pub struct Bounded {
    tx: mpsc::Sender<SpanData>,
    /// The exporter and the queue's receiving end until [`Bounded::start`] takes them.
    pending: Pending,
}

type Pending = Arc<Mutex<Option<(opentelemetry_otlp::SpanExporter, mpsc::Receiver<SpanData>)>>>;

/// What [`Bounded::start`] needs after the provider took the processor.
#[derive(Clone)]
pub struct Starter {
    pending: Pending,
    timeout: Duration,
    /// For the warning when exports fail: where to, and the connector's last error.
    endpoint: String,
    last_error: LastError,
}

impl Bounded {
    pub fn new(
        exporter: opentelemetry_otlp::SpanExporter,
        config: &Config,
        last_error: LastError,
    ) -> (Bounded, Starter) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let pending = Arc::new(Mutex::new(Some((exporter, rx))));
        (
            Bounded {
                tx,
                pending: pending.clone(),
            },
            Starter {
                pending,
                timeout: config.timeout,
                endpoint: config.endpoint.clone(),
                last_error,
            },
        )
    }
}

impl Starter {
    /// Spawns the export task on the current runtime (once). It ends when every span of its
    /// provider has ended and the provider is gone (a reload that replaced it): what is still
    /// queued is exported first.
    pub fn start(&self) {
        let taken = self.pending.lock().ok().and_then(|mut p| p.take());
        let Some((exporter, rx)) = taken else {
            return;
        };
        let health = Health {
            endpoint: self.endpoint.clone(),
            last_error: self.last_error.clone(),
            failing: false,
            warned: None,
        };
        tokio::spawn(run(exporter, rx, self.timeout, health));
    }
}

/// How often a collector that keeps failing is warned about.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Whether exports work, for warnings that are visible without flooding the log: the first
/// failure, then once a minute while it lasts, and the recovery.
struct Health {
    endpoint: String,
    last_error: LastError,
    failing: bool,
    warned: Option<std::time::Instant>,
}

impl Health {
    fn ok(&mut self) {
        if self.failing {
            tracing::info!(endpoint = %self.endpoint, "trace export to the collector works again");
        }
        self.failing = false;
        self.warned = None;
    }

    fn failed(&mut self, spans: u64, what: String) {
        self.failing = true;
        // The exporters say "connection failed"; the connector knows it was, say, the CA.
        let cause = self
            .last_error
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        let due = self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY);
        if due {
            self.warned = Some(std::time::Instant::now());
            tracing::warn!(endpoint = %self.endpoint, spans, "trace export to the collector failed: {what}{cause}; the spans are dropped (calls are not affected; counted in portcullis_telemetry_spans_total)");
        } else {
            tracing::debug!(endpoint = %self.endpoint, spans, "trace export failed: {what}{cause}");
        }
    }
}

async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    timeout: Duration,
    mut health: Health,
) {
    let metrics = crate::metrics::global();
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while batch.len() < BATCH {
            tokio::select! {
                next = rx.recv() => match next {
                    Some(s) => batch.push(s),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        let n = batch.len() as u64;
        match tokio::time::timeout(timeout, exporter.export(batch)).await {
            Ok(Ok(())) => {
                metrics.telemetry_spans("exported", n);
                health.ok();
            }
            Ok(Err(e)) => {
                metrics.telemetry_spans("export_failed", n);
                health.failed(n, e.to_string());
            }
            Err(_) => {
                metrics.telemetry_spans("export_timeout", n);
                health.failed(n, format!("no answer within {timeout:?}"));
            }
        }
    }
}

impl SpanProcessor for Bounded {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(span).is_err() {
            crate::metrics::global().telemetry_spans("dropped_queue_full", 1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self.pending.lock() {
            Ok(mut p) => {
                if let Some((exporter, _)) = p.as_mut() {
                    exporter.set_resource(resource);
                }
            }
            Err(_) => {
                tracing::warn!("the span exporter's lock is poisoned; its resource is not set")
            }
        }
    }
}
