//! The connector of the remote-server HTTP client: egress check, TCP, TLS.
//!
//! hyper's own `HttpConnector` would resolve and dial on its own; this one dials only addresses
//! that passed [`Egress`], and speaks TLS with verification always on (system roots or the
//! policy's `ca_file`).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;

use super::egress::Egress;
pub use crate::dial::Stream;
use crate::dial::{self, DialError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Egress(#[from] super::egress::EgressError),
    #[error("url has no host")]
    NoHost,
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with `{host}` failed: {reason}")]
    Tls { host: String, reason: String },
    #[error("CA bundle: {0}")]
    Ca(String),
}

/// The TLS client configuration for remote servers: see [`dial::tls_config`].
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    dial::tls_config(ca_file).map_err(ConnectError::Ca)
}

#[derive(Clone)]
pub struct Connector {
    egress: Arc<Egress>,
    tls: Arc<rustls::ClientConfig>,
    /// The policy named a `ca_file` (for the hint when a certificate is refused).
    custom_ca: bool,
}

impl Connector {
    pub fn new(egress: Egress, tls: Arc<rustls::ClientConfig>, custom_ca: bool) -> Connector {
        Connector {
            egress: Arc::new(egress),
            tls,
            custom_ca,
        }
    }

    async fn connect(self, uri: Uri) -> Result<TokioIo<Stream>, ConnectError> {
        let host = uri.host().ok_or(ConnectError::NoHost)?.to_owned();
        let https = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addrs = self.egress.resolve(&host, port).await?;
        let mut last = String::from("no address");
        let mut tcp = None;
        for addr in &addrs {
            match dial::tcp_to(*addr, CONNECT_TIMEOUT).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        let tcp = tcp.ok_or_else(|| ConnectError::Connect {
            addr: format!("{host}:{port}"),
            reason: last,
        })?;
        if !https {
            return Ok(Stream::Plain(tcp).into_io());
        }
        let hint = if self.custom_ca {
            "the certificate does not chain to the CAs in the server's ca_file, or does not name this host"
        } else {
            "if the server's certificate comes from a private CA, name that CA's PEM file in the server's ca_file"
        };
        match dial::tls(tcp, self.tls.clone(), &host, CONNECT_TIMEOUT).await {
            Ok(s) => Ok(s.into_io()),
            Err(DialError::Tls { reason, untrusted }) => Err(ConnectError::Tls {
                host: dial::bare_host(&host).to_owned(),
                reason: dial::with_hint(reason, untrusted, hint),
            }),
            Err(DialError::Connect { reason }) => Err(ConnectError::Connect {
                addr: format!("{host}:{port}"),
                reason,
            }),
        }
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}
