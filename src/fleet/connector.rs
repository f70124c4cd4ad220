//! The connection a replica opens to the owner of held state (the fleet hop): plain TCP to an
//! `http://` replica URL, TLS to an `https://` one, verified against `[gateway] fleet_ca` (or
//! the system's trust store without it).
//!
//! The scheme comes from the owner's URL sealed in the client's token, so nobody but a replica
//! chooses it; and an `https://` owner is reached over TLS or not at all: there is no plain
//! fallback, so a hop (which carries the client's credentials) is never sent in clear to a
//! replica that asked for TLS. Verification is never disabled.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;

use crate::dial::{self, DialError, Stream};

#[derive(Debug, thiserror::Error)]
pub enum HopConnectError {
    #[error("the replica URL has no host")]
    NoHost,
    #[error("the replica URL's scheme is not http or https")]
    Scheme,
    #[error("cannot connect to replica {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("TLS with replica `{host}` failed: {reason}")]
    Tls { host: String, reason: String },
    #[error(
        "no TLS to replicas: [gateway] fleet_ca could not be loaded when the listener started"
    )]
    NoTls,
    #[error("[gateway] fleet_ca: {0}")]
    Ca(String),
}

#[derive(Clone)]
pub struct HopConnector {
    /// `None` only where the configuration could not be built (a listener refuses to start
    /// then; see [`HopConnector::new`]): https hops then fail, they are never made in clear.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `fleet_ca` was given (for the hint when a certificate is refused).
    custom_ca: bool,
    connect_timeout: Duration,
}

impl HopConnector {
    /// A connector trusting the CAs in `fleet_ca`, or the system's store without it. A CA file
    /// that cannot be read or holds no certificate is an error: a fleet configured for TLS
    /// must not start unable to reach its peers.
    pub fn new(
        fleet_ca: Option<&Path>,
        connect_timeout: Duration,
    ) -> Result<HopConnector, HopConnectError> {
        let tls = dial::tls_config(fleet_ca).map_err(HopConnectError::Ca)?;
        Ok(HopConnector {
            tls: Some(tls),
            custom_ca: fleet_ca.is_some(),
            connect_timeout,
        })
    }

    /// A connector that reaches `http://` replicas only (in-process handling and the admin
    /// listener, which never forward; or a configuration already reported as broken).
    pub fn plain_only(connect_timeout: Duration) -> HopConnector {
        HopConnector {
            tls: None,
            custom_ca: false,
            connect_timeout,
        }
    }

    async fn connect(self, uri: Uri) -> Result<TokioIo<Stream>, HopConnectError> {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HopConnectError::Scheme),
        };
        // Checked before dialling: without TLS nothing is sent to an https owner at all.
        let tls = match (https, &self.tls) {
            (true, Some(t)) => Some(t.clone()),
            (true, None) => return Err(HopConnectError::NoTls),
            (false, _) => None,
        };
        let host = uri.host().ok_or(HopConnectError::NoHost)?.to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addr = format!("{host}:{port}");
        let tcp = dial::tcp(&host, port, self.connect_timeout)
            .await
            .map_err(|e| HopConnectError::Connect {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let Some(tls) = tls else {
            return Ok(Stream::Plain(tcp).into_io());
        };
        let hint = if self.custom_ca {
            "the replica's certificate does not chain to the CAs in [gateway] fleet_ca, or does not name the host of its replica URL"
        } else {
            "name the PEM file of the CA that signed the replicas' certificates in [gateway] fleet_ca"
        };
        match dial::tls(tcp, tls, &host, self.connect_timeout).await {
            Ok(s) => Ok(s.into_io()),
            Err(DialError::Tls { reason, untrusted }) => Err(HopConnectError::Tls {
                host: dial::bare_host(&host).to_owned(),
                reason: dial::with_hint(reason, untrusted, hint),
            }),
            Err(DialError::Connect { reason }) => Err(HopConnectError::Connect { addr, reason }),
        }
    }
}

impl tower_service::Service<Uri> for HopConnector {
    type Response = TokioIo<Stream>;
    type Error = HopConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_ca_without_a_certificate_is_refused_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("ca.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = HopConnector::new(Some(&empty), Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("[gateway] fleet_ca:"), "{e}");
        assert!(e.contains("ca.pem"), "{e}");
        let e = HopConnector::new(Some(&dir.path().join("gone.pem")), Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("gone.pem"), "{e}");
    }

    #[tokio::test]
    async fn an_https_owner_is_never_dialled_without_tls() {
        // A listener that would see any byte sent in clear: it must not even be connected to.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let c = HopConnector::plain_only(Duration::from_secs(1));
        let e = c
            .connect(format!("https://{addr}/_fleet/mcp").parse().unwrap())
            .await
            .err()
            .unwrap();
        assert!(matches!(e, HopConnectError::NoTls), "{e}");
        let accepted = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(accepted.is_err(), "nothing connected");
    }
}
