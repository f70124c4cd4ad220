//! The connection to the OTLP collector: TCP, and TLS when the endpoint is `https://`, with
//! verification always on (the system's trust store, or only the CAs in `ca_file`).
//!
//! Whether TLS is spoken is decided once, from the configured endpoint, when the connector is
//! built: a connector made for an https endpoint has no plain-TCP path at all, so spans (and
//! the header secrets that go with them) are never sent in clear because of a URI the
//! exporter passes in. The last connection error is kept for the export loop's warning: the
//! exporters reduce it to "connection failed", which would hide "wrong CA" from the operator.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;

use super::TelemetryError;
use crate::dial::{self, DialError, Stream};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The last connection error, shared with the export loop.
pub type LastError = Arc<Mutex<Option<String>>>;

#[derive(Debug, thiserror::Error)]
pub enum CollectorConnectError {
    #[error("the collector URL has no host")]
    NoHost,
    #[error("cannot connect to the collector at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with the collector `{host}` failed: {reason}")]
    Tls { host: String, reason: String },
}

/// Which application protocol the TLS handshake offers (ALPN): gRPC servers require `h2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    H2,
}

#[derive(Clone)]
pub struct CollectorConnector {
    /// Some exactly when the endpoint is https.
    tls: Option<Arc<rustls::ClientConfig>>,
    custom_ca: bool,
    last_error: LastError,
}

// hyper's and opentelemetry-http's client types want a `Debug` connector; the TLS
// configuration has nothing worth printing.
impl std::fmt::Debug for CollectorConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorConnector")
            .field("tls", &self.tls.is_some())
            .field("custom_ca", &self.custom_ca)
            .finish()
    }
}

impl CollectorConnector {
    /// A connector for `endpoint`: TLS if it is https (with `ca_file`'s CAs alone when given,
    /// else the system's), plain TCP otherwise.
    pub fn new(
        endpoint: &str,
        ca_file: Option<&Path>,
        alpn: Alpn,
    ) -> Result<CollectorConnector, TelemetryError> {
        let tls = if endpoint.starts_with("https://") {
            let base = dial::tls_config(ca_file)
                .map_err(|e| TelemetryError::Config(format!("ca_file: {e}")))?;
            let mut cfg = (*base).clone();
            cfg.alpn_protocols = match alpn {
                Alpn::Http1 => vec![b"http/1.1".to_vec()],
                Alpn::H2 => vec![b"h2".to_vec()],
            };
            Some(Arc::new(cfg))
        } else {
            None
        };
        Ok(CollectorConnector {
            tls,
            custom_ca: ca_file.is_some(),
            last_error: Arc::new(Mutex::new(None)),
        })
    }

    /// Where the connector leaves its last error (taken by the export loop).
    pub fn last_error(&self) -> LastError {
        self.last_error.clone()
    }

    async fn connect(self, uri: Uri) -> Result<TokioIo<Stream>, CollectorConnectError> {
        let result = self.dial(&uri).await;
        if let Err(e) = &result {
            if let Ok(mut slot) = self.last_error.lock() {
                *slot = Some(e.to_string());
            }
        }
        result
    }

    async fn dial(&self, uri: &Uri) -> Result<TokioIo<Stream>, CollectorConnectError> {
        let host = uri.host().ok_or(CollectorConnectError::NoHost)?.to_owned();
        let port = uri
            .port_u16()
            .unwrap_or(if self.tls.is_some() { 443 } else { 80 });
        let addr = format!("{host}:{port}");
        let tcp = dial::tcp(&host, port, CONNECT_TIMEOUT).await.map_err(|e| {
            CollectorConnectError::Connect {
                addr: addr.clone(),
                reason: e.to_string(),
            }
        })?;
        let Some(tls) = &self.tls else {
            return Ok(Stream::Plain(tcp).into_io());
        };
        let hint = if self.custom_ca {
            "the collector's certificate does not chain to the CAs in [telemetry] ca_file, or does not name this host"
        } else {
            "if the collector's certificate comes from a private CA, name that CA's PEM file in [telemetry] ca_file"
        };
        match dial::tls(tcp, tls.clone(), &host, CONNECT_TIMEOUT).await {
            Ok(s) => Ok(s.into_io()),
            Err(DialError::Tls { reason, untrusted }) => Err(CollectorConnectError::Tls {
                host: dial::bare_host(&host).to_owned(),
                reason: dial::with_hint(reason, untrusted, hint),
            }),
            Err(DialError::Connect { reason }) => {
                Err(CollectorConnectError::Connect { addr, reason })
            }
        }
    }
}

impl tower_service::Service<Uri> for CollectorConnector {
    type Response = TokioIo<Stream>;
    type Error = CollectorConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}
