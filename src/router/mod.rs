//! The router: one aggregated MCP server made of many upstream ones.
//!
//! It answers catalog requests from the merged catalog, forwards calls to the owning server
//! with gateway-assigned ids and progress tokens, and relays what servers send on their own
//! (progress, logging, list changes, sampling/elicitation/roots requests) to the session that
//! caused it. It knows sessions only as keys with message sinks; HTTP is the layer above.

mod approval;
pub use approval::ID_PREFIX as APPROVAL_ID_PREFIX;
pub mod audit_trail;
pub mod catalog;
mod debounce;
mod dispatch;
mod flapping;
mod forward;
mod guarded;
mod hints;
pub mod inbound;
mod list_cache;
mod locked;
pub mod naming;
mod refresh;
mod relay;
mod reload;
mod resolve;
mod servers;
mod sessions;
mod tasks;
pub mod uri_template;
pub mod views;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::access::{Access, Limited};
use crate::mcp::{error_response_bytes, methods, ErrorCode, Message, Notification, Response};
use crate::policy::{Naming, Policy};
use crate::sandbox::Runtime;
use crate::upstream::UpstreamEvent;
use catalog::{Catalog, Kind, KINDS};
pub use dispatch::Admission;
pub use inbound::Inbound;
pub use locked::ActiveLock;
pub use resolve::forwarded_methods;
pub use sessions::{ClientCaps, MessageSink, SessionInfo};
pub use tasks::TaskCall;

/// Queue between upstream readers and the router's event task.
const EVENT_QUEUE: usize = 4096;
/// How long catalog requests wait for servers that are still starting.
const CATALOG_WAIT: Duration = Duration::from_secs(30);

pub struct Router {
    servers: servers::Servers,
    catalog: Catalog,
    /// Pages of the merged lists as each client sees them, until the catalog or rules change.
    pages: list_cache::ListCache,
    sessions: sessions::Sessions,
    flights: forward::Flights,
    relay: relay::Relay,
    /// The gateway's own questions to clients (`confirm` rules) waiting for answers.
    approvals: approval::Approvals,
    settings: RwLock<Arc<Settings>>,
    /// Becomes true once every server has started (or failed to) and its lists are loaded.
    settled: watch::Receiver<bool>,
    settled_tx: watch::Sender<bool>,
    /// Servers of the start-up policy that have not yet reported their first start.
    unsettled: Mutex<HashSet<Arc<str>>>,
    /// Set at SIGTERM: this replica takes no new work and says so on `/ready`.
    draining: std::sync::atomic::AtomicBool,
    /// One list refresh at a time per server.
    refresh_locks: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    refreshes: refresh::Refreshes,
    /// Lists waiting for their `ttlMs` to run out, by instance.
    ttl_timers: Mutex<HashSet<(u64, Kind)>>,
    flapping: flapping::Flapping,
    debounce: Arc<debounce::Debouncer>,
    /// Each server's `instructions` from its handshake, merged into ours.
    instructions: std::sync::Mutex<std::collections::BTreeMap<Arc<str>, String>>,
    token_counter: AtomicU64,
    access: Arc<Access>,
    audit: audit_trail::AuditTrail,
    /// Guard findings already audited.
    reported: guarded::Reported,
    /// The lock file in force (`[gateway] lock`).
    lock: RwLock<Option<Arc<ActiveLock>>>,
}

/// The router's settings from the policy; replaced whole by a reload.
struct Settings {
    request_timeout: Duration,
    server_timeouts: HashMap<Arc<str>, Duration>,
    page_size: usize,
    list_ttl: Duration,
    passthrough_instructions: bool,
    list_changes: crate::policy::ListChanges,
    /// Servers whose `sanitize` is not the default.
    sanitize: HashMap<Arc<str>, crate::policy::Sanitize>,
    /// Secret values injected into servers, which answers must not echo.
    injected: Arc<crate::secrets::Redactor>,
}

impl Settings {
    fn sanitize_of(&self, server: &str) -> crate::policy::Sanitize {
        self.sanitize.get(server).copied().unwrap_or_default()
    }

    fn of(policy: &Policy) -> Settings {
        Settings {
            sanitize: policy
                .servers
                .iter()
                .filter(|(_, s)| s.sanitize != crate::policy::Sanitize::default())
                .map(|(name, s)| (Arc::from(name.as_str()), s.sanitize))
                .collect(),
            injected: Arc::new(crate::secrets::injected(policy)),
            request_timeout: policy.gateway.request_timeout,
            server_timeouts: policy
                .servers
                .iter()
                .filter_map(|(name, s)| Some((Arc::from(name.as_str()), s.request_timeout?)))
                .collect(),
            page_size: policy.gateway.page_size,
            list_ttl: policy.gateway.list_ttl,
            passthrough_instructions: policy.effective_naming() != Naming::Prefix,
            list_changes: policy.gateway.list_changes,
        }
    }
}

/// What the catalog needs from a policy: prefixed names or not, and each server's tool filter.
fn catalog_layout(policy: &Policy) -> (bool, HashMap<String, crate::policy::ToolFilter>) {
    let filters = policy
        .servers
        .iter()
        .map(|(name, s)| (name.clone(), s.tools.clone()))
        .collect();
    (policy.effective_naming() == Naming::Prefix, filters)
}

impl Router {
    /// Starts every server in `policy` and the event task; returns the running router.
    pub fn start(
        policy: &Policy,
        runtime: Arc<dyn Runtime>,
        access: Arc<Access>,
        audit: audit_trail::AuditTrail,
    ) -> Arc<Router> {
        Self::start_locked(policy, runtime, access, audit, None)
    }

    /// [`Router::start`] with the lock file `lock` in force from the first start of every
    /// server (image pins included).
    pub fn start_locked(
        policy: &Policy,
        runtime: Arc<dyn Runtime>,
        access: Arc<Access>,
        audit: audit_trail::AuditTrail,
        lock: Option<ActiveLock>,
    ) -> Arc<Router> {
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let pins = Arc::new(crate::sandbox::ImagePins::default());
        if let Some(l) = &lock {
            pins.replace(l.image_pins());
        }
        let servers = servers::Servers::start(policy, runtime, events_tx, pins);
        let (prefix, filters) = catalog_layout(policy);
        let (settled_tx, settled) = watch::channel(servers.len() == 0);
        let router = Arc::new(Router {
            unsettled: Mutex::new(servers.names().into_iter().collect()),
            draining: std::sync::atomic::AtomicBool::new(false),
            servers,
            catalog: Catalog::new(prefix, filters),
            pages: list_cache::ListCache::default(),
            sessions: sessions::Sessions::default(),
            flights: forward::Flights::default(),
            relay: relay::Relay::default(),
            approvals: approval::Approvals::default(),
            settings: RwLock::new(Arc::new(Settings::of(policy))),
            settled,
            settled_tx,
            refresh_locks: Mutex::new(HashMap::new()),
            refreshes: refresh::Refreshes::default(),
            ttl_timers: Mutex::new(HashSet::new()),
            flapping: flapping::Flapping::default(),
            debounce: Arc::default(),
            instructions: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            token_counter: AtomicU64::new(1),
            access,
            audit,
            reported: guarded::Reported::default(),
            lock: RwLock::new(lock.map(Arc::new)),
        });
        tokio::spawn(router.clone().run_events(events_rx));
        router
    }

    /// Server names and whether each is ready, for `/ready`.
    pub fn readiness(&self) -> Vec<(String, Result<(), String>)> {
        self.servers.readiness()
    }

    pub fn is_settled(&self) -> bool {
        *self.settled.borrow()
    }

    /// Marks this gateway as draining (SIGTERM): `/ready` answers 503 from now on.
    pub fn drain(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Requests forwarded to servers and not yet answered.
    pub fn calls_in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Stops every server and waits (bounded) for them to exit.
    pub async fn shutdown(&self) {
        self.servers.shutdown().await;
    }

    /// The result of `initialize` for a client that asked for `requested`.
    pub fn initialize_result(&self, negotiated: &str) -> Box<RawValue> {
        let mut result = json!({
            "protocolVersion": negotiated,
            "capabilities": {
                "tools": {"listChanged": true},
                "prompts": {"listChanged": true},
                "resources": {"subscribe": true, "listChanged": true},
                "logging": {},
                "completions": {}
            },
            "serverInfo": views::server_info()
        });
        if let Some(text) = self.instructions() {
            result["instructions"] = Value::String(text);
        }
        crate::mcp::to_raw(&result)
    }

    fn instructions(&self) -> Option<String> {
        let passthrough = self.settings().passthrough_instructions;
        let all = self.instructions.lock().ok()?;
        if passthrough {
            return all.values().next().cloned();
        }
        let parts: Vec<String> = all
            .iter()
            .map(|(name, text)| format!("## {name} (tools named `{name}__*`)\n{text}"))
            .collect();
        (!parts.is_empty()).then(|| parts.join("\n\n"))
    }

    pub fn open_session(&self, info: SessionInfo) {
        self.sessions.open(info);
    }

    /// Forgets a session: its subscriptions, dedicated instances and pending server requests.
    pub async fn close_session(&self, key: &str) {
        self.sessions.close(key);
        // Its unanswered approval questions end now, refusing their calls.
        self.approvals.drop_session(key);
        self.debounce.forget(key);
        let session: Arc<str> = Arc::from(key);
        for (server, uri) in self.relay.drop_session(key) {
            if !self.servers.is_shared(&server) {
                continue;
            }
            if let Some(lease) = self.servers.acquire(&server, &session) {
                let params = crate::mcp::to_raw(&json!({ "uri": uri }));
                let id = lease.up.next_request_id();
                let _ = lease
                    .up
                    .call(
                        id,
                        methods::RESOURCES_UNSUBSCRIBE,
                        Some(params),
                        None,
                        self.timeout_for(&server),
                    )
                    .await;
            }
        }
        for (instance, id) in self.relay.drop_pending_for(key) {
            if let Some(up) = self.servers.instance(instance) {
                let err = crate::mcp::error::error_object(
                    ErrorCode::INTERNAL_ERROR,
                    "the client session that this request was relayed to has ended",
                    None,
                );
                up.respond(id, Err(err)).await;
            }
        }
        self.servers.close_session(key);
    }

    async fn wait_settled(&self) {
        let mut rx = self.settled.clone();
        let _ = tokio::time::timeout(CATALOG_WAIT, rx.wait_for(|s| *s)).await;
    }

    fn settings(&self) -> Arc<Settings> {
        match self.settings.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn timeout_for(&self, server: &str) -> Duration {
        let s = self.settings();
        s.server_timeouts
            .get(server)
            .copied()
            .unwrap_or(s.request_timeout)
    }

    /// Handles a notification from a client session.
    pub async fn handle_notification(&self, key: &str, n: Notification) {
        match n.method.as_str() {
            methods::CANCELLED => self.cancel_from_client(key, n.params.as_deref()).await,
            methods::ROOTS_LIST_CHANGED => {
                for up in self.servers.for_session(key) {
                    up.notify(methods::ROOTS_LIST_CHANGED, None).await;
                }
            }
            methods::INITIALIZED => {}
            other => tracing::debug!(
                session = key,
                method = other,
                "ignoring client notification"
            ),
        }
    }

    /// Handles a client's answer to a request that a server sent through the gateway.
    pub async fn handle_response(&self, key: &str, resp: Response) {
        let Err(resp) = self.approvals.answer(key, resp) else {
            return;
        };
        match self.relay.take_pending(key, &resp.id) {
            Some((instance, upstream_id)) => {
                if let Some(up) = self.servers.instance(instance) {
                    up.respond(upstream_id, resp.outcome).await;
                }
            }
            None => {
                tracing::debug!(session = key, id = %resp.id, "answer to no pending server request")
            }
        }
    }

    async fn run_events(self: Arc<Self>, mut rx: mpsc::Receiver<UpstreamEvent>) {
        while let Some(ev) = rx.recv().await {
            match ev {
                UpstreamEvent::Ready { from } => {
                    if let Some(info) = self
                        .servers
                        .instance(from.instance)
                        .and_then(|u| u.init_info())
                    {
                        let mut ev =
                            crate::audit::AuditEvent::new(crate::audit::Kind::ContainerStart)
                                .server(from.server.to_string())
                                .container(info.instance.id.clone())
                                .detail(format!("protocol {}", info.protocol_version));
                        if let Some(d) = &info.instance.image_digest {
                            ev = ev.image_digest(d.clone());
                        }
                        self.check_running_image(&from.server, info.instance.image_id.as_deref());
                        if let Some(owner) = from.owner.get() {
                            ev = ev.session(audit_trail::session_tag(owner));
                        }
                        self.audit.record_later(ev);
                    }
                    if !self.servers.is_catalog_source(&from.server, from.instance) {
                        continue;
                    }
                    let Some(up) = self.servers.instance(from.instance) else {
                        continue;
                    };
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.refresh(&up, &KINDS).await;
                        me.servers.catalog_loaded(&from.server);
                        me.mark_settled(&from.server);
                    });
                }
                UpstreamEvent::Down { from, reason } => {
                    tracing::debug!(server = %from.server, %reason, "upstream down");
                    self.audit.record_later(
                        crate::audit::AuditEvent::new(crate::audit::Kind::ContainerStop)
                            .server(from.server.to_string())
                            .detail(reason.clone()),
                    );
                    if self.servers.is_catalog_source(&from.server, from.instance) {
                        self.servers.note_error(&from.server, &reason);
                        self.mark_settled(&from.server);
                    }
                }
                UpstreamEvent::Notification {
                    from,
                    message,
                    handled: _handled,
                    related,
                } => {
                    let kinds = Kind::from_list_changed(&message.method);
                    if !kinds.is_empty() {
                        self.list_changed(&from, &message.method, kinds);
                    } else {
                        self.relay_notification(&from, message, related);
                    }
                }
                UpstreamEvent::Request {
                    from,
                    message,
                    handled: _handled,
                    related,
                } => {
                    self.relay_request(&from, message, related).await;
                }
            }
        }
    }

    /// Notes that `server` has started (or failed to) for the first time; the router is
    /// settled once every server of the start-up policy has.
    fn mark_settled(&self, server: &str) {
        let Ok(mut pending) = self.unsettled.lock() else {
            return;
        };
        if pending.remove(server) && pending.is_empty() {
            let _ = self.settled_tx.send(true);
        }
    }

    /// Sends the most verbose level any session asked for to every server with logging, so that
    /// each session can be filtered at the gateway.
    async fn push_log_level(&self) {
        let Some(level) = self.sessions.most_verbose_level() else {
            return;
        };
        let params = crate::mcp::to_raw(&json!({ "level": level }));
        for up in self.servers.live() {
            if up.init_info().is_some_and(|i| i.has_capability("logging")) {
                let id = up.next_request_id();
                let _ = up
                    .call(
                        id,
                        methods::LOGGING_SET_LEVEL,
                        Some(params.clone()),
                        None,
                        self.timeout_for(up.name()),
                    )
                    .await;
            }
        }
    }

    fn next_token(&self) -> u64 {
        self.token_counter.fetch_add(1, Ordering::Relaxed)
    }
}

/// Why a request failed: the server's own error object, or one the gateway made.
enum Failure {
    Raw(Box<RawValue>),
    Gateway(ErrorCode, String),
    Limited(Limited),
}

impl Failure {
    fn answer(self, id: &crate::mcp::Id) -> Answer {
        match self {
            Failure::Raw(error) => {
                let code = serde_json::from_str::<Value>(error.get())
                    .ok()
                    .and_then(|v| v.get("code").and_then(Value::as_i64));
                Answer {
                    bytes: Message::Response(Response {
                        id: id.clone(),
                        outcome: Err(error),
                    })
                    .to_bytes(),
                    refusal: None,
                    code,
                }
            }
            Failure::Gateway(code, message) => {
                match code {
                    ErrorCode::FORBIDDEN => crate::metrics::global().refusal("forbidden"),
                    ErrorCode::BUSY => crate::metrics::global().refusal("busy"),
                    _ => {}
                }
                Answer {
                    bytes: error_response_bytes(Some(id), code, &message),
                    refusal: (code == ErrorCode::FORBIDDEN).then_some(Refusal::Forbidden),
                    code: Some(code.0),
                }
            }
            Failure::Limited(l) => {
                let secs = l.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let message = if l.store_error {
                    crate::metrics::global().refusal("quota_store_unavailable");
                    format!("rate limit unavailable: {}; retry in {secs}s", l.scope)
                } else {
                    crate::metrics::global().refusal("rate_limited");
                    format!("rate limited: {} exhausted; retry in {secs}s", l.scope)
                };
                let data = json!({ "retryAfterSeconds": secs, "scope": l.scope });
                Answer {
                    bytes: crate::mcp::error_response_with_data(
                        Some(id),
                        ErrorCode::RATE_LIMITED,
                        &message,
                        Some(&data),
                    ),
                    refusal: Some(Refusal::RateLimited {
                        retry_after_secs: secs,
                    }),
                    code: Some(ErrorCode::RATE_LIMITED.0),
                }
            }
        }
    }
}

/// The serialized response to one request, and whether it was a refusal the transport should
/// reflect in its status (HTTP 403 / 429 with `Retry-After`).
#[derive(Debug, Clone)]
pub struct Answer {
    pub bytes: Bytes,
    pub refusal: Option<Refusal>,
    /// The JSON-RPC error code, when the response is an error.
    pub code: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Forbidden,
    RateLimited { retry_after_secs: u64 },
}

impl Answer {
    fn ok(bytes: Bytes) -> Answer {
        Answer {
            bytes,
            refusal: None,
            code: None,
        }
    }

    /// An error response the caller made itself (outside the router).
    pub fn error(id: Option<&crate::mcp::Id>, code: ErrorCode, message: &str) -> Answer {
        Answer {
            bytes: error_response_bytes(id, code, message),
            refusal: (code == ErrorCode::FORBIDDEN).then_some(Refusal::Forbidden),
            code: Some(code.0),
        }
    }
}

fn notification_bytes(method: &str, params: Option<Box<RawValue>>) -> Bytes {
    Message::Notification(Notification {
        method: method.to_owned(),
        params,
    })
    .to_bytes()
}
