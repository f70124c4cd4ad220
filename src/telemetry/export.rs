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

use super::TelemetryError;
use crate::policy::model::{OtlpProtocol, Telemetry as Config};

/// Spans per export request.
const BATCH: usize = 512;
/// How long a partial batch waits for more spans.
const LINGER: Duration = Duration::from_millis(500);

/// The OTLP exporter for `config`, with `headers` (secret values already read).
pub fn exporter(
    config: &Config,
    headers: &[(String, String)],
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let build = match config.protocol {
        OtlpProtocol::HttpProtobuf => {
            let mut url = config.endpoint.trim_end_matches('/').to_owned();
            if !url.ends_with("/v1/traces") {
                url.push_str("/v1/traces");
            }
            // hyper's client on the gateway's own runtime: never a blocking thread per export.
            let client = opentelemetry_http::hyper::HyperClient::with_default_connector(
                config.timeout,
                None,
            );
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(config.timeout)
                .with_headers(headers.iter().cloned().collect::<HashMap<_, _>>())
                .build()
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
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map),
                )
                .build()
        }
    };
    build.map_err(|e| TelemetryError::Config(e.to_string()))
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
}

impl Bounded {
    pub fn new(
        exporter: opentelemetry_otlp::SpanExporter,
        queue: usize,
        timeout: Duration,
    ) -> (Bounded, Starter) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let pending = Arc::new(Mutex::new(Some((exporter, rx))));
        (
            Bounded {
                tx,
                pending: pending.clone(),
            },
            Starter { pending, timeout },
        )
    }
}

impl Starter {
    /// Spawns the export task on the current runtime (once).
    pub fn start(&self) {
        let taken = self.pending.lock().ok().and_then(|mut p| p.take());
        let Some((exporter, rx)) = taken else {
            return;
        };
        tokio::spawn(run(exporter, rx, self.timeout));
    }
}

async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<SpanData>,
    timeout: Duration,
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
            Ok(Ok(())) => metrics.telemetry_spans("exported", n),
            Ok(Err(e)) => {
                metrics.telemetry_spans("export_failed", n);
                tracing::debug!(error = %e, spans = n, "trace export failed; the spans are dropped");
            }
            Err(_) => {
                metrics.telemetry_spans("export_timeout", n);
                tracing::debug!(
                    spans = n,
                    ?timeout,
                    "trace export timed out; the spans are dropped"
                );
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
