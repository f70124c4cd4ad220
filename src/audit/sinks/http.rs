//! Splunk HTTP Event Collector and generic webhooks over HTTP/1.1 (TLS for https://).
//!
//! HEC: the body is one `{"event":RECORD,"time":SECONDS,"source":"portcullis",
//! "sourcetype":"portcullis:audit"}` object per record, concatenated (HEC's batch format), with
//! `Authorization: Splunk TOKEN`. Webhook: the body is the records as JSON Lines
//! (`application/x-ndjson`), signed with `X-Portcullis-Signature: sha256=HEX(HMAC-SHA256(secret,
//! body))` when `hmac_secret` is set. A 2xx answer acknowledges the whole batch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpStream;

use super::cursor::Item;
use super::tls;
use crate::audit::record::parse_ts_ms;

pub enum Auth {
    Hec(String),
    Hmac(String),
    None,
}

pub struct Http {
    host: String,
    port: u16,
    path: String,
    host_header: String,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    auth: Auth,
    timeout: Duration,
}

impl Http {
    pub fn new(url: &str, auth: Auth, ca_file: Option<&std::path::Path>) -> Result<Http, String> {
        let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("sink url {url:?} is not http(s)://"));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(p) => (h.to_string(), p),
                Err(_) => (authority.to_string(), if https { 443 } else { 80 }),
            },
            _ => (authority.to_string(), if https { 443 } else { 80 }),
        };
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let tls = if https {
            Some((tls::client_config(ca_file)?, tls::server_name(&bare)?))
        } else {
            None
        };
        Ok(Http {
            host: bare,
            port,
            path: path.to_string(),
            host_header: authority.to_string(),
            tls,
            auth,
            timeout: Duration::from_secs(15),
        })
    }

    pub fn body(&self, items: &[Item]) -> Vec<u8> {
        let mut body = Vec::new();
        match self.auth {
            Auth::Hec(_) => {
                for i in items {
                    let rec: serde_json::Value =
                        serde_json::from_slice(&i.line).unwrap_or_default();
                    let ms = rec
                        .get("ts")
                        .and_then(|t| t.as_str())
                        .and_then(parse_ts_ms)
                        .unwrap_or(0);
                    let ev = serde_json::json!({
                        "event": rec,
                        "time": format!("{}.{:03}", ms / 1000, ms % 1000).parse::<f64>().unwrap_or(0.0),
                        "source": "portcullis",
                        "sourcetype": "portcullis:audit",
                    });
                    body.extend_from_slice(ev.to_string().as_bytes());
                }
            }
            _ => {
                for i in items {
                    body.extend_from_slice(&i.line);
                    body.push(b'\n');
                }
            }
        }
        body
    }

    pub async fn send(&mut self, items: &[Item]) -> Result<(), String> {
        let body = self.body(items);
        tokio::time::timeout(self.timeout, self.post(body))
            .await
            .map_err(|_| {
                format!(
                    "no answer from {}:{} within {:?}",
                    self.host, self.port, self.timeout
                )
            })?
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let mut req = http::Request::post(self.path.as_str())
            .header(http::header::HOST, self.host_header.as_str())
            .header(
                http::header::USER_AGENT,
                concat!("portcullis/", env!("CARGO_PKG_VERSION")),
            );
        match &self.auth {
            Auth::Hec(token) => {
                req = req
                    .header(http::header::AUTHORIZATION, format!("Splunk {token}"))
                    .header(http::header::CONTENT_TYPE, "application/json");
            }
            Auth::Hmac(secret) => {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|e| e.to_string())?;
                mac.update(&body);
                let sig = hex::encode(mac.finalize().into_bytes());
                req = req
                    .header("x-portcullis-signature", format!("sha256={sig}"))
                    .header(http::header::CONTENT_TYPE, "application/x-ndjson");
            }
            Auth::None => {
                req = req.header(http::header::CONTENT_TYPE, "application/x-ndjson");
            }
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
        let status = match &self.tls {
            None => send_on(TokioIo::new(tcp), req).await?,
            Some((cfg, name)) => {
                let s = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                send_on(TokioIo::new(s), req).await?
            }
        };
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("receiver answered {status}"))
        }
    }
}

async fn send_on<IO>(io: IO, req: http::Request<Full<Bytes>>) -> Result<http::StatusCode, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP request: {e}"));
    let out = match resp {
        Ok(r) => {
            let status = r.status();
            // Drain a bounded amount so the receiver sees a clean exchange.
            let _ = http_body_util::Limited::new(r.into_body(), 64 << 10)
                .collect()
                .await;
            Ok(status)
        }
        Err(e) => Err(e),
    };
    driver.abort();
    out
}
