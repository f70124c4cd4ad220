//! `portcullis health`: asks a running gateway's `/health` whether it is alive. Container images
//! run it as their HEALTHCHECK, since they carry no curl or wget.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
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
    #[error("{addr}: closed the connection without an HTTP answer")]
    NoAnswer { addr: SocketAddr },
    #[error("{addr}: /health answered `{status_line}`")]
    Unhealthy {
        addr: SocketAddr,
        status_line: String,
    },
}

pub fn run(args: HealthArgs) -> ExitCode {
    match probe(args.addr) {
        Ok(()) => {
            println!("healthy: http://{}/health answered 200", args.addr);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One `GET /health`; `Ok` only for an HTTP 200.
pub fn probe(addr: SocketAddr) -> Result<(), ProbeError> {
    let io = |source| ProbeError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)
        .map_err(|source| ProbeError::Connect { addr, source })?;
    s.set_read_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
    // The Host header names the loopback address so the gateway's Host guard accepts it.
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut answer = Vec::new();
    s.take(MAX_ANSWER).read_to_end(&mut answer).map_err(io)?;
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
