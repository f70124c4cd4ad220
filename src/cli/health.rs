//! `portcullis health`: asks a running gateway's `/health` whether it is alive. Container images
//! run it as their HEALTHCHECK, since they carry no curl or wget. With `--ca` it speaks TLS:
//! a listener that other containers reach (the devcontainer kit's) is TLS-only, and a plain
//! probe of it could never pass.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// One probe never takes longer than this per step (connect, write, read).
const STEP_TIMEOUT: Duration = Duration::from_secs(3);
/// The status line and headers are all we look at; the body of `/health` is tiny anyway.
const MAX_ANSWER: u64 = 16 * 1024;

#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The gateway's listener (plain HTTP). Inside the gateway's container this is the
    /// container-side port, whatever the host publishes it as.
    #[arg(long, env = "PORTCULLIS_HEALTH_ADDR", default_value = "127.0.0.1:8811")]
    pub addr: SocketAddr,
    /// Speak TLS, trusting only the CA certificate(s) in this PEM file (the gateway's
    /// `[gateway.tls]` listener).
    #[arg(long, env = "PORTCULLIS_HEALTH_CA")]
    pub ca: Option<PathBuf>,
    /// With --ca: the name the gateway's certificate is checked against.
    #[arg(
        long,
        env = "PORTCULLIS_HEALTH_SERVER_NAME",
        default_value = "localhost",
        requires = "ca"
    )]
    pub server_name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS for {addr}: {message}")]
    Tls { addr: SocketAddr, message: String },
    #[error("{addr}: closed the connection without an HTTP answer")]
    NoAnswer { addr: SocketAddr },
    #[error("{addr}: /health answered `{status_line}`")]
    Unhealthy {
        addr: SocketAddr,
        status_line: String,
    },
}

pub fn run(args: HealthArgs) -> ExitCode {
    let tls = args.ca.as_deref().map(|ca| (ca, args.server_name.as_str()));
    match probe_with(args.addr, tls) {
        Ok(()) => {
            let scheme = if tls.is_some() { "https" } else { "http" };
            println!("healthy: {scheme}://{}/health answered 200", args.addr);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One plain `GET /health`; `Ok` only for an HTTP 200.
pub fn probe(addr: SocketAddr) -> Result<(), ProbeError> {
    probe_with(addr, None)
}

/// [`probe`], over TLS when `tls` names the CA file and the server name to check.
pub fn probe_with(addr: SocketAddr, tls: Option<(&Path, &str)>) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Io { addr, source };
    let s = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
        .map_err(|source| ProbeError::Connect { addr, source })?;
    s.set_read_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
    match tls {
        None => ask(addr, s),
        Some((ca, name)) => {
            let fail = |message: String| ProbeError::Tls { addr, message };
            let cfg = crate::audit::sinks::tls::client_config(Some(ca)).map_err(fail)?;
            let name = crate::audit::sinks::tls::server_name(name).map_err(fail)?;
            let conn = rustls::ClientConnection::new(Arc::clone(&cfg), name)
                .map_err(|e| fail(e.to_string()))?;
            ask(addr, rustls::StreamOwned::new(conn, s))
        }
    }
}

fn ask(addr: SocketAddr, mut s: impl Read + Write) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Io { addr, source };
    // The Host header names the loopback address so the gateway's Host guard accepts it.
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    match s.take(MAX_ANSWER).read_to_end(&mut answer) {
        Ok(_) => {}
        // A TLS peer that closes without close_notify: what arrived is still the answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => {}
        Err(e) => return Err(io(e)),
    }
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default().trim().to_owned();
    if status_line.is_empty() {
        return Err(ProbeError::NoAnswer { addr });
    }
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(ProbeError::Unhealthy { addr, status_line }),
    }
}
