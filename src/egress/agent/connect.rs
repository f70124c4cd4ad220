//! `portcullis egress-agent --connect SOCKET`: the egress agent of the devcontainer kit's
//! workspace (the agent's own container), which compose starts rather than the gateway.
//!
//! The workspace joins this agent's network namespace (`network_mode: service:egress-agent`),
//! as a server container joins its sidecar agent's. The difference is only who starts it and
//! how the two talk: the gateway cannot attach to a container compose made, so the agent
//! connects to a Unix socket the gateway listens on (`serve --workspace-agent-socket`) in a
//! volume that only these two containers mount; the workspace has neither the volume nor any
//! way to reach a Unix socket through the network. Over that stream the line protocol and
//! steps 2-5 are exactly those of `run` in `mod.rs`: the gateway sends the `[workspace]` rules
//! as the config of a server named `workspace`, the agent programs and verifies the table,
//! starts the pinning resolver, says `ready`, and reports pins, denials and tampering.
//!
//! Contract:
//! - the socket is connected before the privilege drop (it belongs to the gateway's uid, and
//!   the agent keeps no capability that would bypass file permissions), retried for
//!   [`CONNECT_WAIT`] so the two services may start in any order;
//! - no thread exists before the drop (see `privs.rs`): the retries sleep on this thread;
//! - when the gateway goes away the agent exits like a sidecar agent; its table is owned and
//!   persistent, so the workspace stays confined (fail closed) until a new agent takes over.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::BufReader;

use super::protocol::FromAgent;

/// How long the agent waits for the gateway's socket to accept.
pub const CONNECT_WAIT: Duration = Duration::from_secs(120);

/// Connects to `path`, retrying until [`CONNECT_WAIT`] has passed.
fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let deadline = Instant::now() + CONNECT_WAIT;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// The subcommand with `--connect`: called from `main` before any thread exists.
pub fn main(path: &Path) -> ExitCode {
    let stream = match connect(path) {
        Ok(s) => s,
        Err(e) => {
            return super::exit_with(
                "connecting to the gateway",
                format!("{}: {e}", path.display()),
            )
        }
    };
    let (uid, rt) = match super::start() {
        Ok(started) => started,
        Err(code) => return code,
    };
    let r = rt.block_on(async {
        stream
            .set_nonblocking(true)
            .map_err(|e| super::AgentError {
                step: "connecting to the gateway",
                message: e.to_string(),
            })?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(|e| super::AgentError {
            step: "connecting to the gateway",
            message: e.to_string(),
        })?;
        let (rd, mut wr) = stream.into_split();
        let r = super::run(uid, BufReader::new(rd), &mut wr).await;
        if let Err(e) = &r {
            // The gateway audits the step that failed; stdout is for the operator.
            super::send(
                &mut wr,
                &FromAgent::Error {
                    step: e.step.into(),
                    message: e.message.clone(),
                },
            )
            .await;
        }
        r
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::exit_with(e.step, e.message),
    }
}

/// `--check`: the healthcheck. The gateway writes the ready file beside the socket after this
/// agent said `ready` and removes it when the agent is gone (`egress::workspace`).
pub fn check(socket: &Path) -> ExitCode {
    if crate::egress::workspace::ready_file(socket).exists() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
