//! The router: one aggregated MCP server made of many upstream ones.
//!
//! It answers catalog requests from the merged catalog, forwards calls to the owning server
//! with gateway-assigned ids and progress tokens, and relays what servers send on their own
//! (progress, logging, list changes, sampling/elicitation/roots requests) to the session that
//! caused it. It knows sessions only as keys with message sinks; HTTP is the layer above.

pub mod audit_trail;
pub mod catalog;
mod debounce;
mod flapping;
mod forward;
mod guarded;
mod hints;
mod locked;
pub mod naming;
mod refresh;
mod relay;
mod reload;
mod servers;
mod sessions;
pub mod uri_template;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, watch};

use crate::access::{Access, Identity, Limited};
use crate::mcp::{
    error_response_bytes, methods, ErrorCode, Message, Notification, Request, Response,
};
use crate::policy::{Naming, Policy};
use crate::sandbox::Runtime;
use crate::upstream::UpstreamEvent;
use catalog::{Catalog, Kind, KINDS};
pub use locked::ActiveLock;
pub use sessions::{ClientCaps, MessageSink, SessionInfo};

/// Queue between upstream readers and the router's event task.
const EVENT_QUEUE: usize = 4096;
/// How long catalog requests wait for servers that are still starting.
const CATALOG_WAIT: Duration = Duration::from_secs(30);

pub struct Router {
    servers: servers::Servers,
    catalog: Catalog,
    sessions: sessions::Sessions,
    flights: forward::Flights,
    relay: relay::Relay,
    settings: RwLock<Arc<Settings>>,
    /// Becomes true once every server has started (or failed to) and its lists are loaded.
    settled: watch::Receiver<bool>,
    settled_tx: watch::Sender<bool>,
    /// Servers of the start-up policy that have not yet reported their first start.
    unsettled: Mutex<HashSet<Arc<str>>>,
    /// One list refresh at a time per server.
    refresh_locks: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    refreshes: refresh::Refreshes,
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
            servers,
            catalog: Catalog::new(prefix, filters),
            sessions: sessions::Sessions::default(),
            flights: forward::Flights::default(),
            relay: relay::Relay::default(),
            settings: RwLock::new(Arc::new(Settings::of(policy))),
            settled,
            settled_tx,
            refresh_locks: Mutex::new(HashMap::new()),
            refreshes: refresh::Refreshes::default(),
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
            "serverInfo": {
                "name": "portcullis",
                "title": "Portcullis MCP gateway",
                "version": env!("CARGO_PKG_VERSION")
            }
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

    /// Handles one request from session `key`; `related` carries messages tied to it (the SSE
    /// stream of its POST), when there is one. Returns the serialized response.
    pub async fn handle_request(
        &self,
        key: &str,
        identity: &Identity,
        req: Request,
        related: Option<Arc<dyn MessageSink>>,
        admission: Option<Admission>,
    ) -> Answer {
        let id = req.id.clone();
        match self.dispatch(key, identity, req, related, admission).await {
            Ok(result) => Answer::ok(
                Message::Response(Response {
                    id,
                    outcome: Ok(result),
                })
                .to_bytes(),
            ),
            Err(f) => f.answer(&id),
        }
    }

    /// Authorization and rate limits for a request, before it is answered: lets the transport
    /// refuse with HTTP 403/429 rather than inside an already-started stream. The returned
    /// admission is handed to `handle_request`, so quotas are taken once.
    pub fn admit(
        &self,
        session: &str,
        identity: &Identity,
        req: &Request,
    ) -> Result<Option<Admission>, Answer> {
        if req.method != methods::TOOLS_CALL {
            return Ok(None);
        }
        let Some(name) = req
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
        else {
            return Ok(None);
        };
        let agg = self.catalog.snapshot();
        let Some(route) = agg.tool(&name) else {
            return Ok(None);
        };
        self.check_call(identity, session, route)
            .map(|()| Some(Admission(())))
            .map_err(|f| f.answer(&req.id))
    }

    fn check_call(
        &self,
        identity: &Identity,
        session: &str,
        route: &catalog::Route,
    ) -> Result<(), Failure> {
        let deny = |outcome, reason: &str| {
            self.audit.record_later(audit_trail::AuditTrail::denied(
                Some(identity),
                Some(session),
                Some(&route.server),
                Some(&route.name),
                outcome,
                reason,
            ));
        };
        if !self
            .access
            .rules(&identity.client)
            .permits(&route.server, &route.name)
        {
            let reason = format!(
                "client `{}` may not call `{}__{}` (clients.{}.allow/deny in the policy)",
                identity.client, route.server, route.name, identity.client
            );
            deny(
                crate::audit::Outcome::Error(ErrorCode::FORBIDDEN.0),
                &reason,
            );
            return Err(Failure::Gateway(ErrorCode::FORBIDDEN, reason));
        }
        self.access
            .limits
            .check(&identity.client, &route.server, Some(&route.name))
            .map_err(|l| {
                deny(crate::audit::Outcome::RateLimited, &l.scope);
                Failure::Limited(l)
            })
    }

    async fn dispatch(
        &self,
        key: &str,
        identity: &Identity,
        req: Request,
        related: Option<Arc<dyn MessageSink>>,
        admission: Option<Admission>,
    ) -> Result<Box<RawValue>, Failure> {
        let params = object_params(req.params.as_deref())?;
        match req.method.as_str() {
            methods::PING => Ok(crate::mcp::to_raw(&json!({}))),
            methods::INITIALIZE => Err(Failure::Gateway(
                ErrorCode::INVALID_REQUEST,
                "this session is already initialized; open a new session to initialize again"
                    .into(),
            )),
            methods::TOOLS_LIST => self.list(Kind::Tools, &params, identity).await,
            methods::PROMPTS_LIST => self.list(Kind::Prompts, &params, identity).await,
            methods::RESOURCES_LIST => self.list(Kind::Resources, &params, identity).await,
            methods::RESOURCE_TEMPLATES_LIST => self.list(Kind::Templates, &params, identity).await,
            methods::TOOLS_CALL | methods::PROMPTS_GET => {
                self.wait_settled().await;
                let name = str_param(&params, "name")?;
                let agg = self.catalog.snapshot();
                let is_tool = req.method == methods::TOOLS_CALL;
                let (route, what) = if is_tool {
                    (agg.tool(name), "tool")
                } else {
                    (agg.prompt(name), "prompt")
                };
                let kind = if is_tool { Kind::Tools } else { Kind::Prompts };
                if route.is_none() {
                    self.refuse_withheld(identity, key, &agg, kind, name)?;
                }
                let route = route.ok_or_else(|| {
                    // A server that is down contributes nothing to the lists; say which and
                    // why, or the caller cannot tell a typo from an outage.
                    let down: Vec<(String, String)> = self
                        .readiness()
                        .into_iter()
                        .filter_map(|(server, r)| r.err().map(|why| (server, why)))
                        .collect();
                    let rules = self.access.rules(&identity.client);
                    let visible: Vec<&str> = agg
                        .names(kind)
                        .filter(|(_, r)| rules.permits(&r.server, &r.name))
                        .map(|(n, _)| n)
                        .collect();
                    Failure::Gateway(
                        ErrorCode::INVALID_PARAMS,
                        hints::unknown_item(what, name, &down, &visible),
                    )
                })?;
                if is_tool && admission.is_none() {
                    self.check_call(identity, key, route)?;
                }
                let mut params = params;
                params.insert("name".into(), Value::String(route.name.clone()));
                let server = route.server.clone();
                self.forward(
                    key,
                    identity,
                    &req.id,
                    &server,
                    &req.method,
                    params,
                    related,
                )
                .await
            }
            methods::RESOURCES_READ
            | methods::RESOURCES_SUBSCRIBE
            | methods::RESOURCES_UNSUBSCRIBE => {
                self.wait_settled().await;
                let uri = str_param(&params, "uri")?.to_owned();
                let server = self.resource_owner(&uri)?;
                if req.method == methods::RESOURCES_UNSUBSCRIBE {
                    // Other sessions may still want updates for this URI; the server keeps
                    // its subscription until the last one leaves.
                    if !self.relay.unsubscribe(key, &server, &uri) {
                        return Ok(crate::mcp::to_raw(&json!({})));
                    }
                }
                let result = self
                    .forward(
                        key,
                        identity,
                        &req.id,
                        &server,
                        &req.method,
                        params,
                        related,
                    )
                    .await;
                if req.method == methods::RESOURCES_SUBSCRIBE && result.is_ok() {
                    self.relay.subscribe(key, &server, &uri);
                }
                result
            }
            methods::COMPLETION_COMPLETE => {
                self.wait_settled().await;
                let server = self.completion_target(&params)?;
                let mut params = params;
                if let Some(Value::Object(r)) = params.get_mut("ref") {
                    if r.get("type").and_then(Value::as_str) == Some("ref/prompt") {
                        if let Some(route) = r
                            .get("name")
                            .and_then(Value::as_str)
                            .and_then(|n| self.catalog.snapshot().prompt(n).cloned())
                        {
                            r.insert("name".into(), Value::String(route.name));
                        }
                    }
                }
                self.forward(
                    key,
                    identity,
                    &req.id,
                    &server,
                    &req.method,
                    params,
                    related,
                )
                .await
            }
            methods::LOGGING_SET_LEVEL => {
                let level = str_param(&params, "level")?;
                let Some(rank) = sessions::level_rank(level) else {
                    return Err(Failure::Gateway(
                        ErrorCode::INVALID_PARAMS,
                        format!("unknown log level `{level}`; use one of debug, info, notice, warning, error, critical, alert, emergency"),
                    ));
                };
                self.sessions.set_level(key, rank);
                self.push_log_level().await;
                Ok(crate::mcp::to_raw(&json!({})))
            }
            methods::SERVER_DISCOVER => Err(Failure::Gateway(
                ErrorCode::METHOD_NOT_FOUND,
                "server/discover is not supported: this gateway speaks the initialize handshake"
                    .into(),
            )),
            other => Err(Failure::Gateway(
                ErrorCode::METHOD_NOT_FOUND,
                format!("method `{other}` is not supported by this gateway"),
            )),
        }
    }

    fn resource_owner(&self, uri: &str) -> Result<Arc<str>, Failure> {
        let agg = self.catalog.snapshot();
        if let Some(s) = agg.resource_server(uri) {
            return Ok(s.clone());
        }
        if let Some((_, why)) = agg.withheld_template(uri) {
            return Err(Failure::Gateway(ErrorCode::WITHHELD, why.to_owned()));
        }
        // With a single server there is no ambiguity: let it decide whether the URI exists.
        if let [only] = self.servers.names().as_slice() {
            return Ok(only.clone());
        }
        Err(Failure::Gateway(
            ErrorCode::RESOURCE_NOT_FOUND,
            format!("resource `{uri}` is not offered by any server behind this gateway"),
        ))
    }

    /// Refuses a call of a withheld tool or prompt with the reason, when the caller may see
    /// it; `Ok` when `exposed` is not withheld (or not the caller's to know about).
    fn refuse_withheld(
        &self,
        identity: &Identity,
        session: &str,
        agg: &catalog::Aggregate,
        kind: Kind,
        exposed: &str,
    ) -> Result<(), Failure> {
        let Some((route, why)) = agg.withheld(kind, exposed) else {
            return Ok(());
        };
        if !self
            .access
            .rules(&identity.client)
            .permits(&route.server, &route.name)
        {
            return Ok(());
        }
        self.audit.record_later(audit_trail::AuditTrail::denied(
            Some(identity),
            Some(session),
            Some(&route.server),
            Some(&route.name),
            crate::audit::Outcome::Error(ErrorCode::WITHHELD.0),
            why,
        ));
        crate::metrics::global().refusal("withheld");
        Err(Failure::Gateway(ErrorCode::WITHHELD, why.to_owned()))
    }

    fn completion_target(&self, params: &Map<String, Value>) -> Result<Arc<str>, Failure> {
        let r = params
            .get("ref")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Failure::Gateway(ErrorCode::INVALID_PARAMS, "`ref` must be an object".into())
            })?;
        match r.get("type").and_then(Value::as_str) {
            Some("ref/prompt") => {
                let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
                self.catalog
                    .snapshot()
                    .prompt(name)
                    .map(|route| route.server.clone())
                    .ok_or_else(|| {
                        Failure::Gateway(
                            ErrorCode::INVALID_PARAMS,
                            format!("unknown prompt `{name}`"),
                        )
                    })
            }
            Some("ref/resource") => {
                let uri = r.get("uri").and_then(Value::as_str).unwrap_or_default();
                self.resource_owner(uri)
            }
            _ => Err(Failure::Gateway(
                ErrorCode::INVALID_PARAMS,
                "`ref.type` must be `ref/prompt` or `ref/resource`".into(),
            )),
        }
    }

    async fn list(
        &self,
        kind: Kind,
        params: &Map<String, Value>,
        identity: &Identity,
    ) -> Result<Box<RawValue>, Failure> {
        self.wait_settled().await;
        let cursor = match params.get("cursor") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                return Err(Failure::Gateway(
                    ErrorCode::INVALID_PARAMS,
                    "`cursor` must be a string".into(),
                ))
            }
        };
        let rules = self.access.rules(&identity.client);
        self.catalog
            .page(kind, cursor, self.settings().page_size, &|r| {
                rules.permits(&r.server, &r.name)
            })
            .map_err(|e| Failure::Gateway(ErrorCode::INVALID_PARAMS, e.to_string()))
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
                } => {
                    let kinds = Kind::from_list_changed(&message.method);
                    if !kinds.is_empty() {
                        self.list_changed(&from, &message.method, kinds);
                    } else {
                        self.relay_notification(&from, message);
                    }
                }
                UpstreamEvent::Request {
                    from,
                    message,
                    handled: _handled,
                } => {
                    self.relay_request(&from, message).await;
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
            Failure::Raw(error) => Answer::ok(
                Message::Response(Response {
                    id: id.clone(),
                    outcome: Err(error),
                })
                .to_bytes(),
            ),
            Failure::Gateway(code, message) => {
                match code {
                    ErrorCode::FORBIDDEN => crate::metrics::global().refusal("forbidden"),
                    ErrorCode::BUSY => crate::metrics::global().refusal("busy"),
                    _ => {}
                }
                Answer {
                    bytes: error_response_bytes(Some(id), code, &message),
                    refusal: (code == ErrorCode::FORBIDDEN).then_some(Refusal::Forbidden),
                }
            }
            Failure::Limited(l) => {
                crate::metrics::global().refusal("rate_limited");
                let secs = l.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let message = format!("rate limited: {} exhausted; retry in {secs}s", l.scope);
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
        }
    }
}

/// Proof that `Router::admit` already authorized a call and took its quota.
#[derive(Debug)]
pub struct Admission(());

fn object_params(params: Option<&RawValue>) -> Result<Map<String, Value>, Failure> {
    match params {
        None => Ok(Map::new()),
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Failure::Gateway(
                ErrorCode::INVALID_PARAMS,
                "`params` must be an object".into(),
            )),
        },
    }
}

fn str_param<'a>(params: &'a Map<String, Value>, key: &str) -> Result<&'a str, Failure> {
    params.get(key).and_then(Value::as_str).ok_or_else(|| {
        Failure::Gateway(
            ErrorCode::INVALID_PARAMS,
            format!("`{key}` must be a string"),
        )
    })
}

fn notification_bytes(method: &str, params: Option<Box<RawValue>>) -> Bytes {
    Message::Notification(Notification {
        method: method.to_owned(),
        params,
    })
    .to_bytes()
}
