//! One connection to one MCP server, kept alive.
//!
//! An `Upstream` owns a supervisor task that starts the server through a sandbox runtime,
//! performs the initialize handshake, and restarts it with exponential backoff when it dies.
//! Requests get gateway-assigned numeric ids; server-initiated messages are handed to the layer
//! above as `UpstreamEvent`s.

mod connection;
pub mod http;
mod openapi;
pub mod stderr;
mod stdio;
mod supervisor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};

use crate::mcp::{Id, Notification, Request};
use crate::policy::Server;
use crate::sandbox::{Purpose, Runtime};

pub use connection::Connection;

/// What the handshake told us about the server.
#[derive(Debug, Clone)]
pub struct InitInfo {
    /// The running instance (process or container) that completed the handshake.
    pub instance: crate::sandbox::InstanceInfo,
    pub protocol_version: String,
    pub capabilities: serde_json::Value,
    pub server_info: serde_json::Value,
    pub instructions: Option<String>,
}

impl InitInfo {
    /// Whether the server declared capability `name` (e.g. "tools").
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.get(name).is_some_and(|v| !v.is_null())
    }
}

#[derive(Debug, Clone)]
pub enum State {
    Starting,
    Ready(Arc<InitInfo>),
    /// Not running; `reason` says why (exit status, start failure).
    Down {
        reason: String,
    },
    Stopped,
}

/// Which running instance an event came from.
#[derive(Debug)]
pub struct Source {
    pub server: Arc<str>,
    /// Unique among all upstreams of this gateway process.
    pub instance: u64,
    /// The client session a dedicated instance belongs to; set once, when a pooled instance is
    /// handed to a session.
    pub owner: std::sync::OnceLock<Arc<str>>,
    /// Largest message accepted from this server (its `max_message_bytes`).
    pub max_message_bytes: usize,
}

/// Messages the server sent on its own initiative, and changes of its state.
#[derive(Debug)]
pub enum UpstreamEvent {
    Ready {
        from: Arc<Source>,
    },
    Down {
        from: Arc<Source>,
        reason: String,
    },
    Notification {
        from: Arc<Source>,
        message: Notification,
        handled: Handled,
    },
    Request {
        from: Arc<Source>,
        message: Request,
        handled: Handled,
    },
}

/// Signals the connection's reader when the router is done with a message, by being dropped.
///
/// The reader waits for it before reading on, so that a server's progress or log message
/// written before its response reaches the client before that response does: responses take a
/// direct path, server-initiated messages go through the router's event task.
#[derive(Debug)]
pub struct Handled(Option<tokio::sync::oneshot::Sender<()>>);

impl Handled {
    pub(crate) fn new() -> (Handled, tokio::sync::oneshot::Receiver<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Handled(Some(tx)), rx)
    }
}

impl Drop for Handled {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// How an upstream is started.
#[derive(Debug, Clone)]
pub struct StartOptions {
    pub owner: Option<Arc<str>>,
    pub purpose: Purpose,
    /// Restart with backoff when the server dies (false for single-use instances).
    pub restart: bool,
    pub policy_hash: String,
    /// When set, the first start waits until it reads `true`: a server replaced by a policy
    /// reload starts only once the instances it replaces have stopped, so that the two never
    /// hold the server's resources (network, egress rules) at the same time.
    pub start_after: Option<watch::Receiver<bool>>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            owner: None,
            purpose: Purpose::Shared,
            restart: true,
            policy_hash: String::new(),
            start_after: None,
        }
    }
}

/// Request ids are unique across every upstream of the process, so that a request is
/// identified by its id alone wherever it is tracked.
static NEXT_REQUEST_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(1);

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("server `{server}` is unavailable: {reason}")]
    Unavailable { server: String, reason: String },
    #[error("server `{server}` did not answer `{method}` within {}s", timeout.as_secs_f32())]
    Timeout {
        server: String,
        method: String,
        timeout: Duration,
    },
    #[error("server `{server}` went away while handling `{method}`: {reason}")]
    Lost {
        server: String,
        method: String,
        reason: String,
    },
    #[error("server `{server}` answered `{method}` with a message of {} bytes, over the limit of {limit} bytes: raise max_message_bytes (for this server or the gateway) or ask for less", size.map_or_else(|| format!("more than {limit}"), |n| n.to_string()))]
    TooLarge {
        server: String,
        method: String,
        /// `None` when the transport stopped reading before the end of the message.
        size: Option<u64>,
        limit: usize,
    },
}

/// The outcome of a request: the server's raw `result` or raw `error` object.
pub type Outcome = Result<Box<RawValue>, Box<RawValue>>;

pub struct Upstream {
    name: Arc<str>,
    source: Arc<Source>,
    state: watch::Receiver<State>,
    connection: Arc<Mutex<Option<Arc<Connection>>>>,
    shutdown: watch::Sender<bool>,
    /// The policy's `roots` of this server.
    roots: Arc<[String]>,
}

impl Upstream {
    /// Starts supervising `server`; events go to `events`.
    pub fn start(
        server: Server,
        runtime: Arc<dyn Runtime>,
        events: mpsc::Sender<UpstreamEvent>,
        options: StartOptions,
    ) -> Arc<Upstream> {
        let name: Arc<str> = Arc::from(server.name.as_str());
        let roots: Arc<[String]> = server.roots.clone().into();
        let source = Arc::new(Source {
            server: name.clone(),
            instance: NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed),
            owner: std::sync::OnceLock::new(),
            max_message_bytes: server.max_message_bytes,
        });
        if let Some(o) = &options.owner {
            let _ = source.owner.set(o.clone());
        }
        let (state_tx, state_rx) = watch::channel(State::Starting);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let connection = Arc::new(Mutex::new(None));
        let sup = supervisor::Supervisor {
            server,
            name: name.clone(),
            source: source.clone(),
            options,
            runtime,
            events,
            state: state_tx,
            connection: connection.clone(),
            shutdown: shutdown_rx,
        };
        tokio::spawn(sup.run());
        Arc::new(Upstream {
            name,
            source,
            state: state_rx,
            connection,
            shutdown: shutdown_tx,
            roots,
        })
    }

    /// What `roots/list` is answered with when no client session can be asked.
    pub fn configured_roots(&self) -> serde_json::Value {
        let roots: Vec<serde_json::Value> = self
            .roots
            .iter()
            .map(|uri| serde_json::json!({ "uri": uri }))
            .collect();
        serde_json::json!({ "roots": roots })
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub fn source(&self) -> &Arc<Source> {
        &self.source
    }

    pub fn instance(&self) -> u64 {
        self.source.instance
    }

    /// Largest message this server may send, and the gateway relay from it.
    pub fn max_message_bytes(&self) -> usize {
        self.source.max_message_bytes
    }

    pub fn state(&self) -> State {
        self.state.borrow().clone()
    }

    /// A receiver of this instance's state; it keeps reporting after the `Upstream` is dropped,
    /// until the supervisor has stopped the server.
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    pub fn init_info(&self) -> Option<Arc<InitInfo>> {
        match &*self.state.borrow() {
            State::Ready(info) => Some(info.clone()),
            _ => None,
        }
    }

    /// A fresh id for a request to this server.
    pub fn next_request_id(&self) -> u64 {
        NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed)
    }

    /// Waits until the server is ready (or has failed), at most `limit`.
    pub async fn ready(&self, limit: Duration) -> Result<Arc<Connection>, UpstreamError> {
        let mut rx = self.state.clone();
        let wait = rx.wait_for(|s| !matches!(s, State::Starting));
        let state = match tokio::time::timeout(limit, wait).await {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => State::Stopped,
            Err(_) => {
                return Err(UpstreamError::Unavailable {
                    server: self.name.to_string(),
                    reason: format!("still starting after {}s", limit.as_secs_f32()),
                })
            }
        };
        match state {
            State::Ready(_) => self.current().ok_or_else(|| self.unavailable("restarting")),
            State::Down { reason } => Err(self.unavailable(&reason)),
            State::Stopped => Err(self.unavailable("stopped")),
            State::Starting => Err(self.unavailable("starting")),
        }
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.connection.lock().ok().and_then(|c| c.clone())
    }

    fn unavailable(&self, reason: &str) -> UpstreamError {
        UpstreamError::Unavailable {
            server: self.name.to_string(),
            reason: reason.to_owned(),
        }
    }

    /// Sends request `id` and waits for its answer, at most `timeout` (start-up wait included).
    /// Dropping the future forgets the request; the caller sends `notifications/cancelled`.
    pub async fn call(
        &self,
        id: u64,
        method: &str,
        params: Option<Box<RawValue>>,
        timeout: Duration,
    ) -> Result<Outcome, UpstreamError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = self.ready(timeout).await?;
        let answer = conn.request(id, method, params).await;
        let answer = match answer {
            Ok(rx) => rx,
            Err(reason) => {
                return Err(UpstreamError::Lost {
                    server: self.name.to_string(),
                    method: method.to_owned(),
                    reason,
                })
            }
        };
        let guard = connection::PendingGuard::new(&conn, id);
        let lost = |reason: String| UpstreamError::Lost {
            server: self.name.to_string(),
            method: method.to_owned(),
            reason,
        };
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(Ok(outcome))) => {
                guard.disarm();
                Ok(outcome)
            }
            Ok(Ok(Err(connection::Broken::TooLarge { size, limit }))) => {
                Err(UpstreamError::TooLarge {
                    server: self.name.to_string(),
                    method: method.to_owned(),
                    size,
                    limit,
                })
            }
            Ok(Ok(Err(connection::Broken::Lost(reason)))) => Err(lost(reason)),
            Ok(Err(_)) => Err(lost("the connection closed".to_owned())),
            Err(_) => Err(UpstreamError::Timeout {
                server: self.name.to_string(),
                method: method.to_owned(),
                timeout,
            }),
        }
    }

    /// Sends a notification if the server is connected; dropped otherwise (notifications to a
    /// server that is down have no one to act on them).
    pub async fn notify(&self, method: &str, params: Option<Box<RawValue>>) {
        if let Some(conn) = self.current() {
            conn.notify(method, params).await;
        }
    }

    /// Answers a request the server sent (sampling, elicitation, roots).
    pub async fn respond(&self, id: Id, outcome: Outcome) {
        if let Some(conn) = self.current() {
            conn.respond(id, outcome).await;
        }
    }

    /// Stops the server for good.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until the supervisor has stopped the server.
    pub async fn stopped(&self) {
        let mut rx = self.state.clone();
        let _ = rx.wait_for(|s| matches!(s, State::Stopped)).await;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
