//! Keeps one server running: start, handshake, watch, restart with exponential backoff.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::connection::{Connection, PendingGuard};
use super::modern::listen;
use super::modern::stdio_probe::{self, settle};
use super::{InitInfo, State, UpstreamEvent};
use crate::mcp::{methods, protocol, to_raw};
use crate::policy::{ProtocolChoice, Server};
use crate::sandbox::{Runtime, SpawnContext, Spawned};
use crate::secrets::Redactor;

const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A server that stayed up this long is considered healthy again: its next crash restarts fast.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// How long to wait for an instance's exit status once its stdout has closed.
const EXIT_REASON_GRACE: Duration = Duration::from_secs(1);
/// How long a failure report waits for the rest of the server's stderr.
const STDERR_DRAIN: Duration = Duration::from_millis(300);
/// Stderr lines quoted in a failure report (and so in `/ready`).
const STDERR_IN_REASON: usize = 5;
/// How long a stdio server may take to answer the `server/discover` probe before it is taken
/// for a 2025-era server that ignores requests before `initialize`.
const PROBE_WAIT: Duration = Duration::from_secs(5);

pub(super) struct Supervisor {
    pub server: Server,
    pub name: Arc<str>,
    pub source: Arc<super::Source>,
    pub options: super::StartOptions,
    pub runtime: Arc<dyn Runtime>,
    pub events: mpsc::Sender<UpstreamEvent>,
    pub state: watch::Sender<State>,
    pub connection: Arc<Mutex<Option<Arc<Connection>>>>,
    pub shutdown: watch::Receiver<bool>,
    /// Set when an instance died while probed with `server/discover`: later starts skip the
    /// probe (a 2025-era server that cannot take it would otherwise crash at every start).
    pub probe_broke: std::sync::atomic::AtomicBool,
}

impl Supervisor {
    pub(super) async fn run(mut self) {
        if let Some(mut gate) = self.options.start_after.take() {
            let mut stop = self.shutdown.clone();
            tokio::select! {
                // A dropped sender opens the gate too: whoever held it is gone.
                _ = gate.wait_for(|open| *open) => {}
                _ = stop.wait_for(|s| *s) => {
                    self.state.send_replace(State::Stopped);
                    return;
                }
            }
        }
        let mut backoff = BACKOFF_START;
        loop {
            if *self.shutdown.borrow() {
                break;
            }
            self.state.send_replace(State::Starting);
            let started = tokio::time::Instant::now();
            // A start (container create, handshake) can take long; shutdown must not wait
            // for it. Whatever was created is dropped, and so removed (the runtime also
            // tracks it for its final sweep).
            let mut stop = self.shutdown.clone();
            let attempt = tokio::select! {
                r = self.start() => r,
                _ = stop.wait_for(|s| *s) => break,
            };
            let reason = match attempt {
                Ok(mut running) => {
                    self.state.send_replace(State::Ready(running.info.clone()));
                    tracing::info!(server = %self.name, instance = %running.spawned_desc, protocol = %running.info.protocol_version, "server ready");
                    crate::metrics::global().upstream_up(&self.name, true);
                    let _ = self
                        .events
                        .send(UpstreamEvent::Ready {
                            from: self.source.clone(),
                        })
                        .await;
                    let reason = tokio::select! {
                        r = running.instance.wait() => r,
                        r = &mut running.reader => {
                            let r = r.unwrap_or_else(|e| format!("reader failed: {e}"));
                            // stdout usually closes because the instance is exiting; its exit
                            // status ("OOM-killed", "exited with status 3") says more.
                            let r = tokio::time::timeout(EXIT_REASON_GRACE, running.instance.wait())
                                .await
                                .unwrap_or(r);
                            running.instance.kill().await;
                            r
                        }
                        _ = self.shutdown.changed() => {
                            running.instance.kill().await;
                            "stopped by the gateway".to_owned()
                        }
                    };
                    running
                        .conn
                        .fail_all(&format!("server `{}` {reason}", self.name));
                    if let Some(t) = running.listen_task.take() {
                        t.abort();
                    }
                    if *self.shutdown.borrow() {
                        reason
                    } else {
                        // For `/ready` and the log: what the server said before it went.
                        self.with_stderr(&mut running.stderr_task, &reason).await
                    }
                }
                Err(reason) => reason,
            };
            crate::metrics::global().upstream_up(&self.name, false);
            if let Ok(mut c) = self.connection.lock() {
                *c = None;
            }
            if *self.shutdown.borrow() {
                break;
            }
            if !self.options.restart {
                tracing::info!(server = %self.name, %reason, "single-use server ended");
                let _ = self
                    .events
                    .send(UpstreamEvent::Down {
                        from: self.source.clone(),
                        reason,
                    })
                    .await;
                break;
            }
            if started.elapsed() > HEALTHY_AFTER {
                backoff = BACKOFF_START;
            }
            tracing::warn!(server = %self.name, %reason, retry_in_ms = backoff.as_millis() as u64, "server down");
            self.state.send_replace(State::Down {
                reason: reason.clone(),
            });
            let _ = self
                .events
                .send(UpstreamEvent::Down {
                    from: self.source.clone(),
                    reason,
                })
                .await;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.shutdown.changed() => break,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.state.send_replace(State::Stopped);
    }

    async fn start(&self) -> Result<Running, String> {
        let secrets = self.resolve_secrets()?;
        let redactor = Arc::new(Redactor::new(
            secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        ));
        match self.server.runtime {
            crate::policy::Runtime::Remote(_) => {
                return self.start_remote(&secrets, redactor).await
            }
            crate::policy::Runtime::OpenApi(_) => return self.start_openapi(&secrets, redactor),
            _ => {}
        }
        let ctx = SpawnContext {
            secrets,
            session: self.options.owner.clone(),
            policy_hash: self.options.policy_hash.clone(),
            purpose: Some(self.options.purpose),
            image_pin: self
                .options
                .image_pins
                .as_ref()
                .and_then(|p| p.get(&self.server.name)),
        };
        let Spawned {
            stdin,
            stdout,
            stderr,
            mut instance,
            info: instance_info,
        } = self
            .runtime
            .spawn(&self.server, &ctx)
            .await
            .map_err(|e| e.to_string())?;
        let spawned_desc = instance.describe();
        crate::metrics::global().upstream_started(&self.name);
        let mut stderr_task = stderr.map(|stderr| {
            tokio::spawn(super::stderr::forward(
                self.name.clone(),
                stderr,
                redactor.clone(),
                self.server.log_rate,
            ))
        });
        let (conn, mut reader) =
            Connection::start(self.source.clone(), stdin, stdout, self.events.clone());
        // 2026-07-28 first, unless pinned or known to break this server.
        let probed = match self.server.protocol {
            ProtocolChoice::Legacy => None,
            _ if self.probe_broke.load(Ordering::Relaxed) => None,
            choice => {
                let wait = PROBE_WAIT.min(self.server.startup_timeout);
                let probe = tokio::time::timeout(wait, stdio_probe::send(&conn));
                let verdict = tokio::select! {
                    v = probe => v,
                    r = &mut reader => {
                        let r = r.unwrap_or_else(|e| format!("reader failed: {e}"));
                        let r = tokio::time::timeout(EXIT_REASON_GRACE, instance.wait())
                            .await
                            .unwrap_or(r);
                        instance.kill().await;
                        if choice == ProtocolChoice::Auto {
                            self.probe_broke.store(true, Ordering::Relaxed);
                        }
                        let r = format!("{r} during the server/discover probe");
                        return Err(self.with_stderr(&mut stderr_task, &r).await);
                    }
                };
                match settle(choice, verdict, wait) {
                    Ok(info) => info,
                    Err(why) => {
                        instance.kill().await;
                        return Err(self.with_stderr(&mut stderr_task, &why).await);
                    }
                }
            }
        };
        if let Some(info) = probed {
            conn.set_era(super::Era::Modern);
            let caps = info.capabilities.clone();
            let listen = tokio::spawn(listen::stdio_loop(
                conn.clone(),
                caps,
                self.server.client_capabilities,
                || super::NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed),
            ));
            if let Ok(mut c) = self.connection.lock() {
                *c = Some(conn.clone());
            }
            return Ok(Running {
                conn,
                reader,
                instance,
                info: Arc::new(InitInfo {
                    instance: instance_info,
                    ..info
                }),
                spawned_desc,
                stderr_task,
                listen_task: Some(listen),
            });
        }
        let handshake = tokio::time::timeout(
            self.server.startup_timeout,
            handshake(&conn, self.server.client_capabilities),
        );
        // A server that dies during the handshake closes its stdout: report that at once,
        // with its exit status, instead of waiting out the whole startup timeout.
        let outcome = tokio::select! {
            r = handshake => r,
            r = &mut reader => {
                let r = r.unwrap_or_else(|e| format!("reader failed: {e}"));
                let r = tokio::time::timeout(EXIT_REASON_GRACE, instance.wait())
                    .await
                    .unwrap_or(r);
                instance.kill().await;
                let r = format!("{r} during the initialize handshake");
                return Err(self.with_stderr(&mut stderr_task, &r).await);
            }
        };
        let info = match outcome {
            Ok(Ok(info)) => InitInfo {
                instance: instance_info,
                ..info
            },
            Ok(Err(e)) => {
                instance.kill().await;
                // The server's own error text may quote its environment.
                let r = format!("initialize failed: {}", redactor.redact(&e));
                return Err(self.with_stderr(&mut stderr_task, &r).await);
            }
            Err(_) => {
                instance.kill().await;
                let r = format!(
                    "did not complete the initialize handshake within {}s",
                    self.server.startup_timeout.as_secs_f32()
                );
                return Err(self.with_stderr(&mut stderr_task, &r).await);
            }
        };
        if let Ok(mut c) = self.connection.lock() {
            *c = Some(conn.clone());
        }
        Ok(Running {
            conn,
            reader,
            instance,
            info: Arc::new(info),
            spawned_desc,
            stderr_task,
            listen_task: None,
        })
    }

    /// `reason` with the server's last stderr lines, once what it wrote before dying has been
    /// read (briefly waited for: the pipe drains after the process is gone).
    async fn with_stderr(
        &self,
        task: &mut Option<tokio::task::JoinHandle<()>>,
        reason: &str,
    ) -> String {
        if let Some(t) = task.take() {
            let _ = tokio::time::timeout(STDERR_DRAIN, t).await;
        }
        super::stderr::with_tail(&self.name, reason, STDERR_IN_REASON)
    }

    /// Connects to a remote server over HTTP. The "instance" is the HTTP session: it ends when
    /// the server becomes unreachable, and the usual restart-with-backoff reconnects.
    async fn start_remote(
        &self,
        secrets: &[(String, String)],
        redactor: Arc<Redactor>,
    ) -> Result<Running, String> {
        let connect = super::http::connect(
            &self.server,
            self.source.clone(),
            self.events.clone(),
            secrets,
            redactor.clone(),
        );
        let connected = match tokio::time::timeout(self.server.startup_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(redactor.redact(&e).into_owned()),
            Err(_) => {
                return Err(format!(
                    "did not complete the initialize handshake within {}s",
                    self.server.startup_timeout.as_secs_f32()
                ))
            }
        };
        let remote = connected.remote;
        let info = match connected.info {
            Some(info) => info,
            None => {
                let hs = tokio::time::timeout(
                    self.server.startup_timeout,
                    handshake(&connected.conn, self.server.client_capabilities),
                )
                .await;
                match hs {
                    Ok(Ok(info)) => info,
                    Ok(Err(e)) => {
                        remote.close().await;
                        return Err(format!("initialize failed: {}", redactor.redact(&e)));
                    }
                    Err(_) => {
                        remote.close().await;
                        return Err(format!(
                            "did not complete the initialize handshake within {}s",
                            self.server.startup_timeout.as_secs_f32()
                        ));
                    }
                }
            }
        };
        let reader = tokio::spawn(until_dead(remote.dead(), "the connection closed"));
        if let Ok(mut c) = self.connection.lock() {
            *c = Some(connected.conn.clone());
        }
        Ok(Running {
            conn: connected.conn,
            reader,
            spawned_desc: remote.describe(),
            instance: Box::new(RemoteInstance { remote }),
            info: Arc::new(info),
            stderr_task: None,
            listen_task: None,
        })
    }

    /// Starts an openapi server. There is no handshake: the gateway makes the server itself,
    /// and the "instance" runs until it is stopped (a failing API fails calls, not the server).
    fn start_openapi(
        &self,
        secrets: &[(String, String)],
        redactor: Arc<Redactor>,
    ) -> Result<Running, String> {
        let (api, conn, info) = super::openapi::start(
            &self.server,
            self.source.clone(),
            self.events.clone(),
            secrets,
            redactor.clone(),
        )
        .map_err(|e| redactor.redact(&e).into_owned())?;
        let reader = tokio::spawn(until_dead(api.dead(), "stopped"));
        if let Ok(mut c) = self.connection.lock() {
            *c = Some(conn.clone());
        }
        Ok(Running {
            conn,
            reader,
            spawned_desc: api.describe(),
            instance: Box::new(OpenApiInstance { api }),
            info: Arc::new(info),
            stderr_task: None,
            listen_task: None,
        })
    }

    fn resolve_secrets(&self) -> Result<Vec<(String, String)>, String> {
        self.server
            .secrets
            .iter()
            .map(|(name, source)| {
                crate::secrets::resolve(name, source)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}

struct Running {
    conn: Arc<Connection>,
    reader: tokio::task::JoinHandle<String>,
    instance: Box<dyn crate::sandbox::Instance>,
    info: Arc<InitInfo>,
    spawned_desc: String,
    /// Reads the server's stderr; `None` for remote servers.
    stderr_task: Option<tokio::task::JoinHandle<()>>,
    /// Keeps a 2026-07-28 stdio server's `subscriptions/listen` request open (HTTP transports
    /// keep theirs themselves).
    listen_task: Option<tokio::task::JoinHandle<()>>,
}

/// The reason an in-process instance (an HTTP session, an openapi server) ended, once it has;
/// `closed` when its sender went away without one.
async fn until_dead(mut dead: watch::Receiver<Option<String>>, closed: &'static str) -> String {
    match dead.wait_for(Option::is_some).await {
        Ok(reason) => reason.clone().unwrap_or_default(),
        Err(_) => closed.to_owned(),
    }
}

/// A remote server's HTTP session, seen as an instance the supervisor watches.
struct RemoteInstance {
    remote: Arc<super::http::Remote>,
}

impl crate::sandbox::Instance for RemoteInstance {
    fn describe(&self) -> String {
        self.remote.describe()
    }

    fn wait(&mut self) -> crate::sandbox::BoxFuture<'_, String> {
        Box::pin(until_dead(self.remote.dead(), "the connection closed"))
    }

    fn kill(&mut self) -> crate::sandbox::BoxFuture<'_, ()> {
        Box::pin(async move { self.remote.close().await })
    }
}

/// An openapi server, seen as an instance the supervisor watches.
struct OpenApiInstance {
    api: Arc<super::openapi::OpenApi>,
}

impl crate::sandbox::Instance for OpenApiInstance {
    fn describe(&self) -> String {
        self.api.describe()
    }

    fn wait(&mut self) -> crate::sandbox::BoxFuture<'_, String> {
        Box::pin(until_dead(self.api.dead(), "stopped"))
    }

    fn kill(&mut self) -> crate::sandbox::BoxFuture<'_, ()> {
        self.api.close();
        Box::pin(async {})
    }
}

/// The params of the gateway's `initialize` request to a server.
pub(super) fn init_params(caps: crate::policy::ClientCapabilities) -> serde_json::Value {
    // The gateway relays these to whichever client session caused the request; a client that
    // lacks one gets an error back upstream (roots: the server's configured roots instead).
    let mut capabilities = serde_json::Map::new();
    if caps.roots {
        capabilities.insert("roots".into(), json!({"listChanged": true}));
    }
    if caps.sampling {
        capabilities.insert("sampling".into(), json!({}));
    }
    if caps.elicitation {
        capabilities.insert("elicitation".into(), json!({}));
    }
    json!({
        "protocolVersion": protocol::LATEST,
        "capabilities": capabilities,
        "clientInfo": {"name": "portcullis", "version": env!("CARGO_PKG_VERSION")}
    })
}

/// Reads a server's answer to `initialize`.
pub(super) fn parse_init(outcome: super::Outcome) -> Result<InitInfo, String> {
    let result =
        outcome.map_err(|err| format!("the server answered with an error: {}", err.get()))?;
    let v: serde_json::Value = serde_json::from_str(result.get())
        .map_err(|e| format!("unreadable initialize result: {e}"))?;
    let version = v
        .get("protocolVersion")
        .and_then(|p| p.as_str())
        .ok_or("initialize result has no protocolVersion")?;
    if !protocol::is_supported(version) {
        return Err(format!(
            "the server chose protocol version {version}, which Portcullis does not speak (supported: {})",
            protocol::SUPPORTED.join(", ")
        ));
    }
    Ok(InitInfo {
        instance: crate::sandbox::InstanceInfo::default(),
        protocol_version: version.to_owned(),
        era: super::Era::Legacy,
        capabilities: v.get("capabilities").cloned().unwrap_or(json!({})),
        server_info: v.get("serverInfo").cloned().unwrap_or(json!({})),
        instructions: v
            .get("instructions")
            .and_then(|i| i.as_str())
            .map(str::to_owned),
    })
}

/// The client side of the MCP initialize handshake, as the gateway speaks it upstream.
pub(super) async fn handshake(
    conn: &Connection,
    caps: crate::policy::ClientCapabilities,
) -> Result<InitInfo, String> {
    const INIT_ID: u64 = 0;
    let rx = conn
        .request(
            INIT_ID,
            methods::INITIALIZE,
            Some(to_raw(&init_params(caps))),
        )
        .await?;
    let guard = PendingGuard::new(conn, INIT_ID);
    let outcome = rx
        .await
        .map_err(|_| "the server closed the connection".to_owned())??;
    guard.disarm();
    let info = parse_init(outcome)?;
    conn.notify(methods::INITIALIZED, None).await;
    Ok(info)
}
