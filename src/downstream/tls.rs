//! TLS for the listener (rustls), with optional client-certificate verification (mTLS).

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::ServeError;
use crate::policy::Tls;

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServeError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            ServeError::Tls(format!(
                "cannot read certificates from `{}`: {e}",
                path.display()
            ))
        })?
        .collect();
    let certs = certs
        .map_err(|e| ServeError::Tls(format!("bad certificate in `{}`: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ServeError::Tls(format!(
            "no PEM certificate in `{}`",
            path.display()
        )));
    }
    Ok(certs)
}

pub fn acceptor(cfg: &Tls) -> Result<TlsAcceptor, ServeError> {
    let chain = certs(&cfg.cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| {
        ServeError::Tls(format!(
            "cannot read the private key `{}`: {e}",
            cfg.key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|e| {
                    ServeError::Tls(format!("bad CA certificate in `{}`: {e}", ca.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| ServeError::Tls(format!("client certificate verification: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| ServeError::Tls(format!("certificate and key do not fit together: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
