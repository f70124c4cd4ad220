//! One connection to one MCP server, kept alive.
//!
//! An `Upstream` owns a supervisor task that starts the server through a sandbox runtime,
//! settles which protocol era it speaks (the initialize handshake, or 2026-07-28 after a
//! `server/discover` probe: see [`modern`]), and restarts it with exponential backoff when it
//! dies. Requests get gateway-assigned numeric ids; server-initiated messages are handed to the
//! layer above as `UpstreamEvent`s. The era is this layer's business alone: the router sends
//! the same requests and gets the same results and events from servers of either era.

mod connection;
pub mod http;
mod modern;
mod openapi;
pub mod stderr;
mod stdio;
mod supervisor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};

use crate::mcp::{Id, Notification, Request, RequestContext};
use crate::policy::Server;
use crate::sandbox::{Purpose, Runtime};

pub use connection::Connection;

/// Which protocol era a server instance speaks, settled when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Era {
    /// The initialize handshake (2024-11-05 to 2025-11-25).
    #[default]
    Legacy,
    /// Stateless 2026-07-28: every request carries its envelope in `_meta`.
    Modern,
}

/// What the handshake (or the `server/discover` probe) told us about the server.
#[derive(Debug, Clone)]
pub struct InitInfo {
    /// The running instance (process or container) that completed the handshake.
    pub instance: crate::sandbox::InstanceInfo,
    pub protocol_version: String,
    pub era: Era,
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
        /// The gateway's id of the request this message belongs to, when the transport knows
        /// (it came on that request's response stream, or answers for it).
        related: Option<u64>,
    },
    Request {
        from: Arc<Source>,
        message: Request,
        handled: Handled,
        related: Option<u64>,
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
    /// Images docker servers must run (the lock file's), looked up at every start.
    pub image_pins: Option<Arc<crate::sandbox::ImagePins>>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            owner: None,
            purpose: Purpose::Shared,
            restart: true,
            policy_hash: String::new(),
            start_after: None,
            image_pins: None,
        }
    }
}

/// Pages fetched from one server for one list before the gateway stops following cursors.
const MAX_LIST_PAGES: usize = 1000;

/// A server's list: its entries, and the shortest `ttlMs` one of its pages gave.
pub type FetchedList = (Vec<serde_json::Map<String, serde_json::Value>>, Option<u64>);

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
    /// The client capabilities the policy lets the gateway declare to this server.
    client_capabilities: crate::policy::ClientCapabilities,
    /// Where requests made on a modern server's behalf (see [`modern`]) go.
    events: mpsc::Sender<UpstreamEvent>,
    /// Those requests that wait for the client's answer, by the id they went out with.
    asks: modern::Asks,
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
        let client_capabilities = server.client_capabilities;
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
            events: events.clone(),
            state: state_tx,
            connection: connection.clone(),
            shutdown: shutdown_rx,
            probe_broke: std::sync::atomic::AtomicBool::new(false),
        };
        tokio::spawn(sup.run());
        Arc::new(Upstream {
            name,
            source,
            state: state_rx,
            connection,
            shutdown: shutdown_tx,
            roots,
            client_capabilities,
            events,
            asks: modern::Asks::default(),
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
    /// `caller` is what the client that caused the request said about itself (`None` for the
    /// gateway's own requests): a 2026-07-28 server gets it in the request's `_meta`.
    /// Dropping the future forgets the request; the caller sends `notifications/cancelled`.
    pub async fn call(
        &self,
        id: u64,
        method: &str,
        params: Option<Box<RawValue>>,
        caller: Option<&RequestContext>,
        timeout: Duration,
    ) -> Result<Outcome, UpstreamError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let conn = self.ready(timeout).await?;
        match conn.era() {
            Era::Legacy => {
                self.exchange(&conn, id, method, params, deadline, timeout)
                    .await
            }
            Era::Modern => {
                let call = modern::Call {
                    id,
                    method,
                    params,
                    caller,
                    deadline,
                    timeout,
                };
                self.call_modern(&conn, call).await
            }
        }
    }

    /// One request and its answer on `conn`, as it is.
    async fn exchange(
        &self,
        conn: &Arc<Connection>,
        id: u64,
        method: &str,
        params: Option<Box<RawValue>>,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Outcome, UpstreamError> {
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
        let guard = connection::PendingGuard::new(conn, id);
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

    /// Every entry of one of the server's lists (`method`, e.g. `tools/list`, whose result holds
    /// the entries under `key`), following cursors; entries that are not objects are dropped.
    /// With them, the shortest `ttlMs` a page gave (2026-07-28 servers).
    pub async fn fetch_list(
        &self,
        method: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<FetchedList, String> {
        use serde_json::Value;
        let mut out = Vec::new();
        let mut ttl: Option<u64> = None;
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let params = cursor
                .as_ref()
                .map(|c| crate::mcp::to_raw(&serde_json::json!({ "cursor": c })));
            let id = self.next_request_id();
            let outcome = self
                .call(id, method, params, None, timeout)
                .await
                .map_err(|e| e.to_string())?;
            let result = outcome.map_err(|e| format!("server error: {}", e.get()))?;
            let mut page: serde_json::Map<String, Value> = serde_json::from_str(result.get())
                .map_err(|e| format!("unreadable result: {e}"))?;
            if let Some(t) = page.get("ttlMs").and_then(Value::as_u64) {
                ttl = Some(ttl.map_or(t, |m| m.min(t)));
            }
            if let Some(Value::Array(items)) = page.remove(key) {
                out.extend(items.into_iter().filter_map(|v| match v {
                    Value::Object(m) => Some(m),
                    _ => None,
                }));
            }
            match page.remove("nextCursor") {
                Some(Value::String(c)) if !c.is_empty() => cursor = Some(c),
                _ => return Ok((out, ttl)),
            }
        }
        Err(format!(
            "more than {MAX_LIST_PAGES} pages; stopped following cursors"
        ))
    }

    /// Sends a notification if the server is connected; dropped otherwise (notifications to a
    /// server that is down have no one to act on them).
    pub async fn notify(&self, method: &str, params: Option<Box<RawValue>>) {
        if let Some(conn) = self.current() {
            if conn.era() == Era::Modern && !modern::takes_notification(&conn, method) {
                return;
            }
            conn.notify(method, params).await;
        }
    }

    /// Answers a request the server sent (sampling, elicitation, roots), or one the gateway
    /// made on a modern server's behalf.
    pub async fn respond(&self, id: Id, outcome: Outcome) {
        let Some(outcome) = self.asks.answer(&id, outcome) else {
            return;
        };
        if let Some(conn) = self.current() {
            if conn.era() == Era::Modern {
                // A 2026-07-28 server sends no requests, so takes no responses.
                tracing::debug!(server = %self.name, %id, "dropping an answer for a 2026-07-28 server");
                return;
            }
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
