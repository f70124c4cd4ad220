//! The connector of the remote-server HTTP client: egress check, TCP, TLS.
//!
//! hyper's own `HttpConnector` would resolve and dial on its own; this one dials only addresses
//! that passed [`Egress`], and speaks TLS with verification always on (system roots or the
//! policy's `ca_file`).

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::egress::Egress;

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

/// Builds the TLS client configuration: the policy's CA bundle if given, else the system's
/// trust store. Verification is never disabled.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, ConnectError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| ConnectError::Ca(format!("cannot read `{}`: {e}", path.display())))?
                .collect::<Result<_, _>>()
                .map_err(|e| ConnectError::Ca(format!("bad PEM in `{}`: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ConnectError::Ca(format!(
                    "no usable certificate in `{}`",
                    path.display()
                )));
            }
        }
        None => {
            // The system store, so that a corporate CA installed in the devcontainer works.
            let loaded = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(loaded.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Ca(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Why a TLS handshake failed, with the fix when it is the certificate that was not trusted.
fn tls_reason(e: &io::Error, custom_ca: bool) -> String {
    let bad_certificate = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
    if !bad_certificate {
        return e.to_string();
    }
    if custom_ca {
        format!("{e}; the certificate does not chain to the CAs in the server's ca_file, or does not name this host")
    } else {
        format!("{e}; if the server's certificate comes from a private CA, name that CA's PEM file in the server's ca_file")
    }
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
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    tcp = Some(s);
                    break;
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: timed out"),
            }
        }
        let tcp = tcp.ok_or_else(|| ConnectError::Connect {
            addr: format!("{host}:{port}"),
            reason: last,
        })?;
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(TokioIo::new(Stream::Plain(tcp)));
        }
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = ServerName::try_from(bare.clone()).map_err(|e| ConnectError::Tls {
            host: bare.clone(),
            reason: e.to_string(),
        })?;
        let tls = TlsConnector::from(self.tls.clone());
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
            .await
            .map_err(|_| ConnectError::Tls {
                host: bare.clone(),
                reason: "handshake timed out".to_owned(),
            })?
            .map_err(|e| ConnectError::Tls {
                reason: tls_reason(&e, self.custom_ca),
                host: bare,
            })?;
        Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
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

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
