//! `portcullis egress-agent --rules FILE`: an egress agent that no gateway drives, for a
//! Kubernetes pod (`deploy/kubernetes/egress-sidecar.yaml`) where the gateway can neither start
//! the agent nor reach it: the server container shares the agent's pod network namespace, and
//! the gateway reaches the server over the network as a remote server.
//!
//! Contract:
//! - FILE is the document a gateway sends in its `config` line (see
//!   [`super::protocol::config_policy`]): `[egress]` settings and exactly one server with its
//!   `egress.allow`. It is parsed and validated by the policy parser, so errors carry the
//!   file's line and column.
//! - What the gateway decides in the other modes is decided here: the server is the file's one
//!   server, the table is `inet portcullis_<--instance>` (default [`DEFAULT_INSTANCE`]), and
//!   `--accept-tcp` opens ports to new inbound TCP (the gateway's connections to the server;
//!   nothing else may come in).
//! - Steps 1, 3 and 4 are those of every agent ([`super::enforce`]): drop to the agent's uid,
//!   program and read back the table, start the resolver, then `ready`; any failure before is
//!   one `error` line naming the step and exit status 1 (fail closed: the probe never passes,
//!   so the server container never starts).
//! - stdout carries the same JSON lines as the gateway protocol (`ready`, `applied`, `pin`,
//!   `denied`, `tamper`, `restore_failed`, `error`) plus `rejected` (below): it is what
//!   `kubectl logs` ships to a SIEM. Logs go to stderr.
//! - FILE is re-read every [`POLL`] by path (a ConfigMap update swaps the `..data` symlink, so
//!   the path is opened anew each time) and compared by content hash. A changed, valid file is
//!   applied in place (`applied`), as a gateway reload is; an invalid one, one naming another
//!   server, or one changing `[egress]` (the resolver's settings are fixed at start) is
//!   reported as `rejected` and the rules in force stay.
//! - SIGTERM or SIGINT ends it with status 0 (as PID 1 it would otherwise ignore SIGTERM); the
//!   table is owned and persistent, so it stays closed until the pod's namespace goes.
//!
//! Readiness (`--check`, `check.rs`) reads the live table of this namespace back, so a probe
//! cannot pass on anything the agent merely said.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use super::protocol::{self, FromAgent};
use super::{fail, send, AgentError};
use crate::policy::Policy;

pub mod check;

/// The instance (and so the table, `inet portcullis_standalone`) when `--instance` is not given:
/// one agent per pod, so a fixed name is unique in its namespace.
pub const DEFAULT_INSTANCE: &str = "standalone";
/// How often the rules file is re-read.
pub const POLL: Duration = Duration::from_secs(1);

/// What the command line says.
#[derive(Debug, Clone)]
pub struct Options {
    pub rules: PathBuf,
    pub instance: String,
    pub accept_tcp: Vec<u16>,
    /// OWNER | PERSIST on the table (off only to exercise the watch alone, like `serve`:
    /// `PORTCULLIS_EGRESS_TABLE_FLAGS=off`).
    pub table_flags: bool,
}

/// The lines only this mode writes.
#[derive(Debug, Serialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
enum Standalone<'a> {
    /// A changed rules file was not applied; the rules in force stay.
    Rejected { file: &'a str, message: String },
}

/// One validated rules file: its one server and the policy holding it.
#[derive(Debug, Clone)]
pub struct Rules {
    pub server: String,
    pub policy: Policy,
}

/// Parses a rules file's text; errors are the policy parser's (with `origin`'s line and
/// column) or say why the document is not one agent's rules.
pub fn parse(text: &str, origin: &str) -> Result<Rules, String> {
    let policy = crate::policy::parse(text, origin).map_err(|e| e.to_string())?;
    let mut names = policy.servers.keys();
    let (Some(server), None) = (names.next(), names.next()) else {
        return Err(format!(
            "{origin}: an egress agent's rules name exactly one server ([servers.NAME] with its egress.allow); this file has {}",
            policy.servers.len()
        ));
    };
    Ok(Rules {
        server: server.clone(),
        policy,
    })
}

/// Reads and parses the rules file, with its content hash.
fn load(path: &Path) -> Result<(Rules, [u8; 32]), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let rules = parse(&text, &path.display().to_string())?;
    Ok((rules, Sha256::digest(text.as_bytes()).into()))
}

/// Whether `new` may replace `old` in place: same server, same `[egress]` settings.
pub fn reload_refusal(old: &Rules, new: &Rules) -> Option<String> {
    if new.server != old.server {
        return Some(format!(
            "this agent serves `{}`, the file now names `{}`: restart the agent to change servers",
            old.server, new.server
        ));
    }
    if new.policy.egress != old.policy.egress {
        return Some(
            "[egress] changed: the resolver's settings are fixed when the agent starts; restart it (roll the pod) to apply them"
                .into(),
        );
    }
    None
}

/// The subcommand with `--rules`: called from `main` before any thread exists.
pub fn main(opts: &Options) -> ExitCode {
    let (uid, rt) = match super::start() {
        Ok(started) => started,
        Err(code) => return code,
    };
    let mut out = tokio::io::stdout();
    match rt.block_on(run(uid, opts, &mut out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => super::exit_with(e.step, e.message),
    }
}

/// Everything after the privilege drop, with stdout given.
pub async fn run(
    uid: u32,
    opts: &Options,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<(), AgentError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| fail("watching for SIGTERM")(e.to_string()))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| fail("watching for SIGINT")(e.to_string()))?;
    let (mut rules, mut seen) = load(&opts.rules).map_err(fail("reading the rules file"))?;
    let (egress, mut events, ready) = super::enforce(
        uid,
        &rules.server,
        &opts.instance,
        &rules.policy,
        opts.accept_tcp.clone(),
        opts.table_flags,
    )
    .await?;
    send(out, &ready).await;
    let file = opts.rules.display().to_string();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            ev = events.recv() => match ev {
                Some(ev) => send(out, &super::report(ev)).await,
                None => return Err(fail("watching the table")("the nftables worker stopped".into())),
            },
            _ = tick.tick() => {
                let path = opts.rules.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    let hash: [u8; 32] = Sha256::digest(&text).into();
                    Ok::<_, String>((text, hash))
                })
                .await
                .map_err(|e| fail("reading the rules file")(e.to_string()))?;
                let (text, hash) = match loaded {
                    // A file that vanished mid-swap is looked at again on the next tick.
                    Err(_) => continue,
                    Ok(v) => v,
                };
                if hash == seen {
                    continue;
                }
                seen = hash;
                let new = String::from_utf8(text)
                    .map_err(|e| format!("{file}: not UTF-8: {e}"))
                    .and_then(|t| parse(&t, &file))
                    .and_then(|n| match reload_refusal(&rules, &n) {
                        Some(why) => Err(format!("{file}: {why}")),
                        None => Ok(n),
                    });
                match new {
                    Err(message) => {
                        let line = protocol::encode(&Standalone::Rejected { file: &file, message });
                        write_line(out, &line).await;
                    }
                    Ok(n) => {
                        egress
                            .reprogram(&n.policy.servers[&n.server])
                            .await
                            .map_err(|e| fail("re-programming the table")(e.to_string()))?;
                        rules = n;
                        send(out, &FromAgent::Applied).await;
                    }
                }
            }
        }
    }
}

async fn write_line(out: &mut (impl AsyncWrite + Unpin), line: &str) {
    use tokio::io::AsyncWriteExt;
    let _ = out.write_all(line.as_bytes()).await;
    let _ = out.flush().await;
}

#[cfg(test)]
mod tests;
