//! The gateway's side of the devcontainer kit's workspace egress: a Unix socket the workspace's
//! egress agent (`portcullis egress-agent --connect`, see `agent/connect.rs`) connects to.
//!
//! Why a socket and not the Docker attach of sidecar mode: compose starts the agent (the
//! workspace must join its namespace, `network_mode: service:egress-agent`, which compose can
//! only do for a service it made), so the gateway cannot own the agent's stdio. The socket lives
//! in a volume only the gateway and the agent mount: being able to open it is the
//! authentication, and the workspace can reach neither the volume nor, through its network, a
//! Unix socket.
//!
//! Contract, per connection (one agent at a time; a new connection replaces the old one):
//! 1. send the `config` of a server named [`SUBJECT`] whose egress rules are the policy's
//!    `[workspace]` (the same document and parser as a sidecar agent's, so the table, the
//!    pinning resolver, the TTL-bounded pins and IPv6 handling are exactly a server's);
//! 2. wait for `ready` (the table is verified by read-back); an `error` or silence becomes a
//!    `tamper` record naming the workspace, and no ready file is written (below);
//! 3. pass the agent's reports to the firewall's event stream as [`SUBJECT`]'s: denials become
//!    `egress_denied` records with `server = "workspace"`, tampering becomes `tamper` records;
//! 4. when the connection ends without the gateway closing it, a `tamper` record says the
//!    workspace's table is no longer watched (its owned, persistent table stays in force).
//!
//! Between `ready` and the end of the connection the file [`ready_file`] exists beside the
//! socket: the agent container's healthcheck (`egress-agent --connect SOCKET --check`) reads
//! it, and compose starts the workspace only once that check passes, so the workspace never
//! runs in the namespace before its table does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::agent::protocol::{self, FromAgent, ToAgent};
use super::EgressEvent;
use crate::policy::{Egress, EgressSettings, Server};

/// The name the workspace has in the agent's table (`srv_workspace`) and in audit records.
pub const SUBJECT: &str = crate::policy::RESERVED_WORKSPACE;
/// How long a connected agent may take to program and verify its table.
const READY_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("workspace egress agent socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the workspace's rules do not make a valid agent config: {0}")]
    Config(String),
}

/// What the gateway hands the agent: the `[workspace]` rules and the resolver settings.
#[derive(Debug, Clone)]
pub struct WorkspaceRules {
    /// Names the table (`inet portcullis_<instance>`).
    pub instance: String,
    pub settings: EgressSettings,
    pub egress: Egress,
}

/// The file that says the agent beside `socket` has a verified table.
pub fn ready_file(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".ready");
    PathBuf::from(name)
}

/// `[workspace]` as the server the agent's config carries (a placeholder runtime: the agent
/// never starts it).
pub fn as_server(egress: &Egress) -> Result<Server, WorkspaceError> {
    let doc = format!("[servers.{SUBJECT}]\nruntime = \"process\"\ncommand = \"true\"\n");
    let policy = crate::policy::parse(&doc, "<workspace>")
        .map_err(|e| WorkspaceError::Config(e.to_string()))?;
    let mut server = policy
        .servers
        .get(SUBJECT)
        .cloned()
        .ok_or_else(|| WorkspaceError::Config("no placeholder server".into()))?;
    server.egress = egress.clone();
    Ok(server)
}

/// The config line for `rules`.
pub fn config(rules: &WorkspaceRules) -> Result<ToAgent, WorkspaceError> {
    let server = as_server(&rules.egress)?;
    Ok(ToAgent::Config {
        server: SUBJECT.into(),
        instance: rules.instance.clone(),
        policy: protocol::config_policy(&server, &rules.settings),
    })
}

/// Binds `path` (replacing a stale socket) and serves agents for the life of the gateway.
pub fn listen(
    path: &Path,
    rules: WorkspaceRules,
    events: mpsc::Sender<EgressEvent>,
) -> Result<tokio::task::JoinHandle<()>, WorkspaceError> {
    let err = |source| WorkspaceError::Socket {
        path: path.to_owned(),
        source,
    };
    let line = protocol::encode(&config(&rules)?);
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let _ = std::fs::remove_file(ready_file(path));
    let listener = UnixListener::bind(path).map_err(err)?;
    let socket = path.to_owned();
    tracing::info!(socket = %path.display(), "waiting for the workspace's egress agent");
    Ok(tokio::spawn(async move {
        let mut current: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "workspace egress agent socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if let Some(old) = current.take() {
                old.abort();
            }
            // Until the new agent says `ready`, nothing is verified.
            let _ = std::fs::remove_file(ready_file(&socket));
            let dns_rate = rules.egress.dns_rate_in(&rules.settings);
            current = Some(tokio::spawn(serve_agent(
                stream,
                ready_file(&socket),
                line.clone(),
                dns_rate,
                events.clone(),
            )));
        }
    }))
}

fn lost(error: String) -> EgressEvent {
    EgressEvent::RestoreFailed {
        servers: vec![SUBJECT.into()],
        error,
    }
}

/// Steps 1-4 of the module contract for one connection.
async fn serve_agent(
    stream: UnixStream,
    ready: PathBuf,
    config: String,
    dns_rate: crate::policy::Rate,
    events: mpsc::Sender<EgressEvent>,
) {
    let (rd, mut wr) = stream.into_split();
    if let Err(e) = async {
        wr.write_all(config.as_bytes()).await?;
        wr.flush().await
    }
    .await
    {
        let _ = events.try_send(lost(format!(
            "the workspace's egress agent could not be sent its rules: {e}"
        )));
        return;
    }
    let mut lines = BufReader::new(rd).lines();
    match tokio::time::timeout(READY_WAIT, lines.next_line()).await {
        Ok(Ok(Some(l))) => match protocol::decode_from_agent(&l) {
            Ok(FromAgent::Ready {
                table, protection, ..
            }) => {
                tracing::info!(%table, %protection, "workspace egress agent ready: [workspace] rules verified in the workspace's namespace");
                if let Err(e) = std::fs::write(&ready, format!("{table}\n")) {
                    tracing::warn!(file = %ready.display(), error = %e, "could not write the workspace agent's ready file: its healthcheck will fail");
                }
            }
            other => {
                let _ = events.try_send(lost(format!(
                    "the workspace's egress agent failed to program its table: {other:?}"
                )));
                return;
            }
        },
        other => {
            let _ = events.try_send(lost(format!(
                "the workspace's egress agent never said ready: {other:?}"
            )));
            return;
        }
    }
    let server = SUBJECT.to_owned();
    let mut last_error = None;
    while let Ok(Some(l)) = lines.next_line().await {
        let ev = match protocol::decode_from_agent(&l)
            .map(|m| m.into_event(&server, "the workspace", dns_rate))
        {
            Ok(Ok(ev)) => ev,
            Ok(Err(FromAgent::Pin { addrs })) => {
                tracing::debug!(subject = SUBJECT, ?addrs, "workspace egress agent pinned");
                continue;
            }
            Ok(Err(FromAgent::Error { step, message })) => {
                last_error = Some(format!("{step}: {message}"));
                continue;
            }
            Ok(Err(other)) => {
                tracing::debug!(?other, "workspace egress agent");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "workspace egress agent sent a line outside the protocol");
                continue;
            }
        };
        let _ = events.try_send(ev);
    }
    let _ = std::fs::remove_file(&ready);
    let why = last_error.unwrap_or_else(|| "its connection ended".into());
    let _ = events.try_send(lost(format!(
        "the workspace's egress agent is gone ({why}); its table stays in force but is no longer watched"
    )));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_config_carries_its_rules_as_a_server_named_workspace() {
        let p = crate::policy::parse(
            "[egress]\nupstream_resolvers = [\"198.18.0.53:53\"]\n[workspace]\nallow = [\"api.example.test:443\", \"10.1.2.3:8811\"]\n",
            "<test>",
        )
        .unwrap();
        let rules = WorkspaceRules {
            instance: "kit".into(),
            settings: p.egress.clone(),
            egress: p.workspace.clone().unwrap(),
        };
        let ToAgent::Config {
            server,
            instance,
            policy,
        } = config(&rules).unwrap();
        assert_eq!((server.as_str(), instance.as_str()), (SUBJECT, "kit"));
        let back = crate::policy::parse(&policy, "<agent>").unwrap();
        assert_eq!(back.servers[SUBJECT].egress, rules.egress);
        assert_eq!(back.egress.upstream_resolvers, p.egress.upstream_resolvers);
    }
}
