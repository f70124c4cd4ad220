//! RFC 5424 messages over TCP with octet-counting framing (RFC 6587 3.4.1 / RFC 5425), plain or
//! TLS. Body: the canonical record (JSON) or CEF.
//!
//! TCP has no application acknowledgement, so a write that succeeded may still be lost when the
//! receiver dies. The runner therefore commits the cursor for a batch only after the connection
//! has stayed up for a confirmation window after it, and on a broken connection resends from
//! the last committed cursor: duplicates are possible, losses are not (within that window).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::cursor::Item;
use super::tls;
use crate::audit::export::to_cef;
use crate::policy::{validate_host_port, SinkFormat};

/// Facility 13, "log audit" (RFC 5424 table 1).
const FACILITY: u8 = 13;
/// SD-ID under the documentation enterprise number (RFC 5612).
const SD_ID: &str = "portcullis@32473";

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

pub struct Syslog {
    address: String,
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    format: SinkFormat,
    hostname: String,
    conn: Option<Conn>,
    connect_timeout: Duration,
}

impl Syslog {
    pub fn new(
        address: &str,
        tls_on: bool,
        ca_file: Option<&std::path::Path>,
        server_name: Option<&str>,
        format: SinkFormat,
    ) -> Result<Syslog, String> {
        let (host, _) = validate_host_port(address)
            .ok_or_else(|| format!("syslog address {address:?} is not HOST:PORT"))?;
        let tls = if tls_on {
            let cfg = tls::client_config(ca_file)?;
            Some((cfg, tls::server_name(server_name.unwrap_or(&host))?))
        } else {
            None
        };
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty() && h.is_ascii() && !h.contains(' '))
            .unwrap_or_else(|| "-".into());
        Ok(Syslog {
            address: address.to_string(),
            tls,
            format,
            hostname,
            conn: None,
            connect_timeout: Duration::from_secs(10),
        })
    }

    async fn connect(&mut self) -> Result<(), String> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| format!("connecting to {} timed out", self.address))?
            .map_err(|e| format!("connecting to {}: {e}", self.address))?;
        let _ = tcp.set_nodelay(true);
        self.conn = Some(match &self.tls {
            None => Conn::Plain(tcp),
            Some((cfg, name)) => {
                let c = tokio_rustls::TlsConnector::from(cfg.clone());
                let s = tokio::time::timeout(self.connect_timeout, c.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| "TLS handshake timed out".to_string())?
                    .map_err(|e| format!("TLS handshake with {}: {e}", self.address))?;
                Conn::Tls(Box::new(s))
            }
        });
        Ok(())
    }

    pub fn frame(&self, item: &Item) -> Vec<u8> {
        let v: serde_json::Value = serde_json::from_slice(&item.line).unwrap_or_default();
        let kind = v.get("kind").and_then(|k| k.as_str()).unwrap_or("-");
        let ts = v.get("ts").and_then(|k| k.as_str()).unwrap_or("-");
        let severity = match kind {
            "tamper" | "recovery" | "denied" | "egress_denied" | "catalog_unstable"
            | "sanitized" | "lock_mismatch" => 4,
            _ => 6,
        };
        let body = match self.format {
            SinkFormat::Json => String::from_utf8_lossy(&item.line).into_owned(),
            SinkFormat::Cef => to_cef(&v),
        };
        let msgid: String = kind
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(32)
            .collect();
        let msg = format!(
            "<{}>1 {ts} {} portcullis {} {} [{SD_ID} log_id=\"{}\" seq=\"{}\"] {body}",
            FACILITY * 8 + severity,
            self.hostname,
            std::process::id(),
            if msgid.is_empty() { "-".into() } else { msgid },
            item.log_id.replace(['"', '\\', ']'], ""),
            item.seq,
        );
        let mut out = format!("{} ", msg.len()).into_bytes();
        out.extend_from_slice(msg.as_bytes());
        out
    }

    /// Writes the batch; `Ok` means the bytes left for the receiver, not that it has them.
    pub async fn send(&mut self, items: &[Item]) -> Result<(), String> {
        if self.conn.is_none() {
            self.connect().await?;
        }
        let mut buf = Vec::new();
        for i in items {
            buf.extend_from_slice(&self.frame(i));
        }
        // A receiver that stops reading fills the TCP window; do not wait on it forever.
        let limit = self.connect_timeout * 3;
        let write = async {
            match self.conn.as_mut() {
                Some(Conn::Plain(s)) => write_flush(s, &buf).await,
                Some(Conn::Tls(s)) => write_flush(s.as_mut(), &buf).await,
                None => Err("not connected".into()),
            }
        };
        let r = tokio::time::timeout(limit, write)
            .await
            .unwrap_or_else(|_| Err(format!("syslog write blocked for {limit:?}")));
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    /// Whether the connection is still up: the receiver sends nothing, so a readable socket
    /// means it closed (EOF) or failed.
    pub async fn alive(&mut self) -> bool {
        let mut b = [0u8; 64];
        let r = match self.conn.as_mut() {
            None => return false,
            Some(Conn::Plain(s)) => tokio::time::timeout(Duration::ZERO, s.read(&mut b)).await,
            Some(Conn::Tls(s)) => tokio::time::timeout(Duration::ZERO, s.read(&mut b)).await,
        };
        let up = r.is_err();
        if !up {
            self.conn = None;
        }
        up
    }

    pub fn disconnect(&mut self) {
        self.conn = None;
    }
}

async fn write_flush<S: tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    buf: &[u8],
) -> Result<(), String> {
    s.write_all(buf)
        .await
        .map_err(|e| format!("syslog write: {e}"))?;
    s.flush().await.map_err(|e| format!("syslog flush: {e}"))
}
