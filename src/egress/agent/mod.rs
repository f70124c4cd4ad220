//! `portcullis egress-agent`: the egress enforcement of one docker server in sidecar mode.
//!
//! The gateway starts it in a container of its own (from the gateway's image) on the server's
//! network, with only NET_ADMIN and NET_BIND_SERVICE; the server's container later joins this
//! container's network namespace (`network_mode: container:<agent>`). Contract, in order:
//! 1. drop to [`crate::policy::AGENT_UID`] keeping those two capabilities (`privs.rs`);
//! 2. read one `config` line on stdin (the server's rules, see `protocol.rs`);
//! 3. program `table inet portcullis_<instance>` in this namespace over netlink
//!    (`sidecar_rules.rs` through the same worker as host mode: owned and persistent, so
//!    nobody else can change it and it outlives the agent), read it back, start the pinning
//!    resolver on `127.0.0.1:53`;
//! 4. only then print `ready`. Any failure before is one `error` line naming the step, and
//!    exit status 1: the gateway never starts the server (fail closed);
//! 5. afterwards: report pins, denials, restores after tampering and failed restores; apply a
//!    later `config` (reload) in place; exit when stdin ends (the gateway is gone).
//!
//! The devcontainer kit's agent connects to the gateway instead (`connect.rs`), and the
//! Kubernetes agent reads its rules from a file (`standalone.rs`); both go through [`enforce`]
//! for steps 3-4, so the table is programmed and verified the same way in every mode.

pub mod connect;
pub mod privs;
pub mod protocol;
pub mod standalone;

use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::{Attachment, Egress, EgressEvent, EgressOptions, Names, Shape};
use crate::policy::AGENT_UID;
use protocol::{FromAgent, ToAgent};

/// How long the agent waits for its config before giving up.
const CONFIG_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("{step}: {message}")]
pub struct AgentError {
    pub step: &'static str,
    pub message: String,
}

fn fail(step: &'static str) -> impl FnOnce(String) -> AgentError {
    move |message| AgentError { step, message }
}

/// The first steps of every mode, called from `main` before any thread exists (see
/// `privs.rs`): drop to the agent's uid, then build the runtime. On failure the `error` line
/// is already printed and the exit code is returned.
fn start() -> Result<(u32, tokio::runtime::Runtime), ExitCode> {
    let uid = privs::drop_to(AGENT_UID).map_err(|e| exit_with("dropping to the agent's uid", e))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| exit_with("starting the async runtime", e))?;
    Ok((uid, rt))
}

/// Prints the `error` line naming `step` on stdout (at once, without the runtime) and gives
/// the failing exit code.
fn exit_with(step: &str, message: impl std::fmt::Display) -> ExitCode {
    report_sync(&FromAgent::Error {
        step: step.into(),
        message: message.to_string(),
    });
    ExitCode::FAILURE
}

/// The subcommand: called from `main` before any thread exists (see `privs.rs`).
pub fn main() -> ExitCode {
    let (uid, rt) = match start() {
        Ok(started) => started,
        Err(code) => return code,
    };
    let mut out = tokio::io::stdout();
    let r = rt.block_on(async {
        let stdin = BufReader::new(tokio::io::stdin());
        run(uid, stdin, &mut out).await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            rt.block_on(send(
                &mut out,
                &FromAgent::Error {
                    step: e.step.into(),
                    message: e.message,
                },
            ));
            ExitCode::FAILURE
        }
    }
}

fn report_sync(msg: &FromAgent) {
    use std::io::Write;
    let mut o = std::io::stdout();
    let _ = o.write_all(protocol::encode(msg).as_bytes());
    let _ = o.flush();
}

async fn send(out: &mut (impl AsyncWrite + Unpin), msg: &FromAgent) {
    // A gateway that stopped reading is gone; the agent notices on stdin.
    let _ = out.write_all(protocol::encode(msg).as_bytes()).await;
    let _ = out.flush().await;
}

async fn next_config(
    lines: &mut tokio::io::Lines<impl tokio::io::AsyncBufRead + Unpin>,
) -> Result<Option<(String, String, crate::policy::Policy)>, AgentError> {
    let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| fail("reading the config")(e.to_string()))?
    else {
        return Ok(None);
    };
    let ToAgent::Config {
        server,
        instance,
        policy,
    } = protocol::decode_to_agent(&line).map_err(|e| fail("reading the config")(e.to_string()))?;
    let policy = crate::policy::parse(&policy, "<egress-agent config>")
        .map_err(|e| fail("validating the config")(e.to_string()))?;
    if !policy.servers.contains_key(&server) {
        return Err(fail("validating the config")(format!(
            "the config has no server `{server}`"
        )));
    }
    Ok(Some((server, instance, policy)))
}

/// Steps 2-5 of the module contract, with stdin and stdout given (tests drive it in-process).
pub async fn run(
    uid: u32,
    input: impl tokio::io::AsyncBufRead + Unpin,
    out: &mut (impl AsyncWrite + Unpin),
) -> Result<(), AgentError> {
    let mut lines = input.lines();
    let first = tokio::time::timeout(CONFIG_WAIT, next_config(&mut lines))
        .await
        .map_err(|_| fail("reading the config")(format!("none within {CONFIG_WAIT:?}")))??;
    let Some((name, instance, policy)) = first else {
        return Err(fail("reading the config")("stdin closed first".into()));
    };
    let (egress, mut events, ready) =
        enforce(uid, &name, &instance, &policy, Vec::new(), true).await?;
    send(out, &ready).await;
    loop {
        tokio::select! {
            cfg = next_config(&mut lines) => match cfg {
                Ok(None) => return Ok(()),
                Ok(Some((n, _, p))) if n == name => {
                    match egress.reprogram(&p.servers[&n]).await {
                        Ok(_) => send(out, &FromAgent::Applied).await,
                        Err(e) => return Err(fail("re-programming the table")(e.to_string())),
                    }
                }
                Ok(Some((n, _, _))) => {
                    return Err(fail("validating the config")(format!(
                        "this agent serves `{name}`, not `{n}`"
                    )))
                }
                Err(e) => return Err(e),
            },
            ev = events.recv() => match ev {
                Some(ev) => send(out, &report(ev)).await,
                None => return Err(fail("watching the table")("the nftables worker stopped".into())),
            },
        }
    }
}

/// Steps 3-4 of the module contract, shared by every mode: programs `policy`'s server `name`
/// in this namespace as table `inet portcullis_<instance>` (with `accept_tcp` open to new
/// inbound TCP; `table_flags`: OWNER | PERSIST when the kernel has them), reads it back, starts the resolver on `127.0.0.1:53`, and returns the
/// service, its events and the `ready` line to send. Any error is the step that failed.
pub(crate) async fn enforce(
    uid: u32,
    name: &str,
    instance: &str,
    policy: &crate::policy::Policy,
    accept_tcp: Vec<u16>,
    table_flags: bool,
) -> Result<(Egress, tokio::sync::mpsc::Receiver<EgressEvent>, FromAgent), AgentError> {
    let id = crate::instance::InstanceId::parse(instance).map_err(fail("reading the config"))?;
    let server = policy
        .servers
        .get(name)
        .ok_or_else(|| fail("validating the config")(format!("no server `{name}`")))?;
    let options = EgressOptions {
        names: Names::new(id),
        comment: format!("portcullis egress-agent of server {name}"),
        shape: Shape::Sidecar {
            agent_uid: uid,
            upstream: policy.egress.upstream_resolvers.clone(),
            accept_tcp,
        },
        table_flags,
        ..Default::default()
    };
    let egress = Egress::start_with(policy, options)
        .await
        .map_err(|e| fail("starting the nftables worker")(e.to_string()))?;
    let events = egress
        .take_events()
        .ok_or_else(|| fail("starting the nftables worker")("no event stream".into()))?;
    let prepared = egress
        .prepare(server, Attachment::Sidecar)
        .await
        .map_err(|e| fail("programming and verifying the table")(e.to_string()))?;
    let ready = FromAgent::Ready {
        table: egress.names().table(),
        protection: egress.protection().mode().into(),
        resolver: prepared.resolver.to_string(),
    };
    Ok((egress, events, ready))
}

/// An event of the worker as a line for the gateway.
pub(crate) fn report(ev: EgressEvent) -> FromAgent {
    match ev {
        EgressEvent::Denied {
            packets,
            destinations,
            ..
        } => FromAgent::Denied {
            packets,
            destinations,
        },
        EgressEvent::DnsOverBudget { queries, .. } => FromAgent::DnsOverBudget { queries },
        EgressEvent::Restored { reason } => FromAgent::Tamper { reason },
        EgressEvent::RestoreFailed { error, .. } => FromAgent::RestoreFailed { error },
        EgressEvent::Pinned { pins, .. } => FromAgent::Pin {
            addrs: pins
                .iter()
                .map(|p| match p.port {
                    Some(port) => format!("{}:{port}", p.addr),
                    None => p.addr.to_string(),
                })
                .collect(),
        },
    }
}
