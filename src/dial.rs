//! Outbound connections of the gateway's own HTTP clients (remote servers, the fleet hop, the
//! OTLP collector): TCP with a deadline, then TLS with verification always on.
//!
//! Each client decides what it may dial and whether TLS is required (an egress check, the
//! owner's sealed scheme, the collector's configured endpoint) and words its own errors; what
//! they share is here, so that the deadline, the server name taken from the URL's host and the
//! "which CA to name" hint cannot drift apart between them.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Why a dial failed; the caller adds whose address or certificate it was.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{reason}")]
    Connect { reason: String },
    /// `untrusted`: the peer's certificate was refused (the caller names the CA setting).
    #[error("{reason}")]
    Tls { reason: String, untrusted: bool },
}

/// The TLS client configuration: the CAs in `ca_file` alone if given, else the system's trust
/// store (so that a corporate CA installed in the devcontainer works). Verification is never
/// disabled. Offers `http/1.1` by ALPN; callers needing `h2` change it on a copy.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("bad PEM in `{}`: {e}", path.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("no usable certificate in `{}`", path.display()));
            }
        }
        None => {
            let loaded = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(loaded.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The host of a URL without an IPv6 literal's brackets: what is dialled and verified.
pub fn bare_host(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// TCP to `host:port` (a name is resolved by the system), within `deadline`.
pub async fn tcp(host: &str, port: u16, deadline: Duration) -> Result<TcpStream, DialError> {
    let connecting = TcpStream::connect((bare_host(host), port));
    finish_tcp(tokio::time::timeout(deadline, connecting).await)
}

/// TCP to one address that was already judged (an egress check), within `deadline`.
pub async fn tcp_to(addr: SocketAddr, deadline: Duration) -> Result<TcpStream, DialError> {
    finish_tcp(tokio::time::timeout(deadline, TcpStream::connect(addr)).await)
}

fn finish_tcp(
    r: Result<io::Result<TcpStream>, tokio::time::error::Elapsed>,
) -> Result<TcpStream, DialError> {
    let s = r
        .map_err(|_| DialError::Connect {
            reason: "timed out".to_owned(),
        })?
        .map_err(|e| DialError::Connect {
            reason: e.to_string(),
        })?;
    // Requests are small and answered at once: no Nagle delay on them.
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// TLS over `tcp` to `host` (the URL's host, verified against the certificate), within
/// `deadline`.
pub async fn tls(
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    host: &str,
    deadline: Duration,
) -> Result<Stream, DialError> {
    let name = ServerName::try_from(bare_host(host).to_owned()).map_err(|e| DialError::Tls {
        reason: e.to_string(),
        untrusted: false,
    })?;
    let stream = tokio::time::timeout(deadline, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| DialError::Tls {
            reason: "handshake timed out".to_owned(),
            untrusted: false,
        })?
        .map_err(|e| DialError::Tls {
            untrusted: untrusted(&e),
            reason: e.to_string(),
        })?;
    Ok(Stream::Tls(Box::new(stream)))
}

/// The handshake failed because the peer's certificate was not trusted.
fn untrusted(e: &io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
}

/// `reason`, with `hint` added when the certificate was not trusted.
pub fn with_hint(reason: String, untrusted: bool, hint: &str) -> String {
    if untrusted {
        format!("{reason}; {hint}")
    } else {
        reason
    }
}

/// A dialled connection, plain or TLS, as hyper's client takes it.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    pub fn into_io(self) -> TokioIo<Stream> {
        TokioIo::new(self)
    }
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
