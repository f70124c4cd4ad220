//! What clients talk to: the Streamable HTTP endpoint `/mcp`, the legacy HTTP+SSE endpoints
//! `/sse` and `/messages`, plus `/health`, `/ready` and `/metrics`.
//!
//! Every request passes the Host/Origin guard first. Session state lives here; everything MCP
//! is the router's business.
//!
//! `/ready` and `/metrics` name every server, tool and client: on a loopback listener they are
//! open, on any other they need a valid client token, and with `gateway.admin_listen` they move
//! to that (loopback) listener, which serves nothing else but `/health`.

mod event_stream;
mod eviction;
mod fleet_hop;
mod guard;
mod legacy_sse;
pub(crate) mod modern;
mod ready;
mod refusal_bursts;
mod reply;
mod session;
mod session_open;
mod streamable;
mod tls;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::access::Access;
use crate::mcp::ErrorCode;
use crate::policy::Gateway;
use crate::router::audit_trail::AuditTrail;
use crate::router::Router;
pub use reply::Reply;

/// Open connections before new ones wait to be accepted.
const MAX_CONNECTIONS: usize = 4096;
/// Time for a client to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time for a client to send its request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may read `/ready` and `/metrics` on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admin {
    /// A loopback listener: only this host reaches it.
    Open,
    /// Off loopback: a valid client token, as for `/mcp`.
    Token,
    /// Moved to `gateway.admin_listen`.
    Elsewhere(SocketAddr),
}

/// What a listener serves: everything, or (the admin listener) only health, readiness and
/// metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Main,
    Admin,
}

pub(crate) struct Shared {
    role: Role,
    admin: Admin,
    router: Arc<Router>,
    /// What stateless (2026-07-28) clients carry between requests: held calls, task handles.
    bridge: Arc<crate::bridge::ClientSide>,
    tasks: crate::bridge::Tasks,
    /// The seal of held state, read to find a request's owning replica.
    seal: Arc<crate::bridge::Seal>,
    /// Signs and checks hops to and from the other replicas (a named replica with a fleet key).
    hop: Option<Arc<crate::fleet::hop::Hop>>,
    hop_client: fleet_hop::HopClient,
    /// Open `subscriptions/listen` streams.
    listens: modern::Streams,
    access: Arc<Access>,
    audit: AuditTrail,
    tls: bool,
    sessions: session::Sessions,
    /// Session refusals being counted, audited once per burst.
    session_refusals: refusal_bursts::Bursts,
    guard: guard::Guard,
    max_body_bytes: usize,
    body_timeout: Duration,
    keepalive: Duration,
    sse_poll: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS: {0}")]
    Tls(String),
    /// The CA of the hop between replicas cannot be used.
    #[error("{0}")]
    FleetCa(String),
    #[error("cannot listen on {addr}: {source}{hint}")]
    Bind {
        addr: SocketAddr,
        hint: &'static str,
        source: std::io::Error,
    },
}

/// What a request body must be: hyper's `Incoming` on served connections, any body of the same
/// shape for requests handled in process ([`InProcess`]).
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
{
}

impl Shared {
    fn new(
        gateway: &Gateway,
        router: Arc<Router>,
        access: Arc<Access>,
        audit: AuditTrail,
        tls: bool,
        advertised: Option<String>,
        hop_client: fleet_hop::HopClient,
    ) -> Shared {
        let admin = match gateway.admin_listen {
            Some(addr) => Admin::Elsewhere(addr),
            None if gateway.listen.ip().is_loopback() => Admin::Open,
            None => Admin::Token,
        };
        let seal = Arc::new(crate::bridge::Seal::for_gateway(gateway).with_url(advertised));
        Shared {
            role: Role::Main,
            admin,
            bridge: crate::bridge::ClientSide::new(router.clone(), seal.clone()),
            tasks: crate::bridge::Tasks::new(router.clone(), seal.clone()),
            hop: fleet_hop::hop_of(&seal),
            hop_client,
            seal,
            listens: modern::Streams::default(),
            router,
            access,
            audit,
            tls,
            sessions: session::Sessions::new(gateway.max_sessions),
            session_refusals: refusal_bursts::Bursts::default(),
            guard: guard::Guard::new(&gateway.allowed_hosts, &gateway.allowed_origins),
            // No message in either direction is larger than max_message_bytes.
            max_body_bytes: gateway.max_body_bytes.min(gateway.max_message_bytes),
            body_timeout: BODY_TIMEOUT,
            keepalive: gateway.sse_keepalive,
            sse_poll: gateway.sse_poll_interval,
        }
    }

    /// Ends every session, as at shutdown, and audits the bursts of refusals still counting.
    async fn close_all_sessions(&self) {
        self.listens.close_all();
        for id in self.sessions.drain() {
            self.router.close_session(&id).await;
        }
        self.audit_ended_bursts(true).await;
    }

    /// Writes the summary of each burst of session refusals that ended (every one when `all`).
    async fn audit_ended_bursts(&self, all: bool) {
        for ended in self.session_refusals.ended(all) {
            if let Some(event) = session_open::burst_summary(&ended) {
                let _ = self.audit.record(event).await;
            }
        }
    }
}

/// The request handler without a socket: requests go in as values and replies come out,
/// through the same Host/Origin guard, authentication, sessions and router as on a served
/// connection. The HTTP fuzz target drives the gateway through it (src/fuzzing/http.rs).
#[doc(hidden)]
pub struct InProcess {
    shared: Arc<Shared>,
}

impl InProcess {
    pub fn new(
        gateway: &Gateway,
        router: Arc<Router>,
        access: Arc<Access>,
        audit: AuditTrail,
    ) -> InProcess {
        InProcess {
            shared: Arc::new(Shared::new(
                gateway,
                router,
                access,
                audit,
                false,
                None,
                fleet_hop::plain_client(),
            )),
        }
    }

    /// Handles one request exactly as a served connection would.
    pub async fn handle<B: RequestBody>(&self, req: Request<B>) -> Reply {
        route(&self.shared, req).await
    }

    /// Ends every session, as the listener does at shutdown.
    pub async fn close_all_sessions(&self) {
        self.shared.close_all_sessions().await;
    }
}

/// A bound listener, ready to serve.
pub struct Listener {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    idle_timeout: Duration,
    unused_timeout: Duration,
    /// When set, only loopback and these peers may connect (see [`Listener::only_from`]).
    peers: Option<Vec<IpAddr>>,
}

impl Listener {
    pub async fn bind(
        gateway: &Gateway,
        router: Arc<Router>,
        access: Arc<Access>,
        audit: AuditTrail,
    ) -> Result<Listener, ServeError> {
        let tls = gateway.tls.as_ref().map(tls::acceptor).transpose()?;
        let listener = TcpListener::bind(gateway.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: gateway.listen,
                hint: if source.kind() == std::io::ErrorKind::AddrInUse {
                    " (is another Portcullis already running? change gateway.listen or pass --listen)"
                } else {
                    ""
                },
                source,
            })?;
        let hop_client =
            fleet_hop::client(gateway).map_err(|e| ServeError::FleetCa(e.to_string()))?;
        let advertised = advertised_url(&listener, tls.is_some());
        Ok(Listener {
            listener,
            shared: Arc::new(Shared::new(
                gateway,
                router,
                access,
                audit,
                tls.is_some(),
                advertised,
                hop_client,
            )),
            idle_timeout: gateway.session_idle_timeout,
            unused_timeout: gateway.unused_session_timeout,
            tls,
            peers: None,
        })
    }

    /// Binds `gateway.admin_listen` (validated to be loopback), which serves `/health`,
    /// `/ready` and `/metrics` without a token and nothing else.
    pub async fn bind_admin(
        gateway: &Gateway,
        addr: SocketAddr,
        router: Arc<Router>,
        access: Arc<Access>,
        audit: AuditTrail,
    ) -> Result<Listener, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr,
                hint: if source.kind() == std::io::ErrorKind::AddrInUse {
                    " (change gateway.admin_listen)"
                } else {
                    ""
                },
                source,
            })?;
        let mut shared = Shared::new(
            gateway,
            router,
            access,
            audit,
            false,
            None,
            fleet_hop::plain_client(),
        );
        shared.role = Role::Admin;
        shared.admin = Admin::Open;
        Ok(Listener {
            listener,
            shared: Arc::new(shared),
            idle_timeout: gateway.session_idle_timeout,
            unused_timeout: gateway.unused_session_timeout,
            tls: None,
            peers: None,
        })
    }

    /// Accepts connections only from loopback and `peers`; any other peer is disconnected before
    /// a byte is read. For a listener whose only legitimate way in is a port the engine publishes
    /// on the host's loopback (`serve --published-on-host-loopback`).
    pub fn only_from(mut self, peers: Vec<IpAddr>) -> Listener {
        self.peers = Some(peers);
        self
    }

    fn admits(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        match &self.peers {
            None => true,
            Some(list) => peer.is_loopback() || list.contains(&peer),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that ends sessions from outside the listener, for as long as it serves.
    pub fn sessions(&self) -> SessionControl {
        SessionControl(self.shared.clone())
    }

    /// Serves until `shutdown` resolves, then closes every session.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()>) {
        let shared = self.shared.clone();
        let sweeper = tokio::spawn(sweep_idle(
            shared.clone(),
            self.idle_timeout,
            self.unused_timeout,
        ));
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            if !self.admits(peer.ip()) {
                tracing::warn!(%peer, "connection refused: only the host's loopback may reach this listener (it is published on the host's loopback only)");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => serve_connection(shared, stream, peer).await,
                    Some(acceptor) => {
                        // A client that never finishes the handshake must not hold a slot.
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => serve_connection(shared, s, peer).await,
                            Ok(Err(e)) => {
                                tracing::info!(%peer, error = %e, "TLS handshake refused")
                            }
                            Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
                drop(permit);
            });
        }
        sweeper.abort();
        // Drain: no new connections (the socket closes), calls in flight get their answers.
        drop(self.listener);
        shared.router.drain();
        shared
            .bridge
            .end_all("the gateway is shutting down; the call was waiting for the client's input")
            .await;
        ready::drain(&shared.router).await;
        shared.close_all_sessions().await;
    }
}

/// Where the other replicas reach this one with forwarded requests: `--replica-url`, or this
/// listener when its address is definite (a wildcard bind says nothing the others can dial).
fn advertised_url(listener: &TcpListener, tls: bool) -> Option<String> {
    if let Some(u) = crate::fleet::replica::url() {
        return Some(u.to_owned());
    }
    let addr = listener.local_addr().ok()?;
    if addr.ip().is_unspecified() {
        return None;
    }
    let scheme = if tls { "https" } else { "http" };
    Some(format!("{scheme}://{addr}"))
}

/// Ends client sessions on behalf of a policy reload that revoked their clients.
#[derive(Clone)]
pub struct SessionControl(Arc<Shared>);

impl SessionControl {
    /// Closes every open session of the named clients (their streams end; a request on one is
    /// answered 404, as for any unknown session); returns how many were closed.
    pub async fn close_clients(&self, clients: &[String]) -> usize {
        if clients.is_empty() {
            return 0;
        }
        let ids = self
            .0
            .sessions
            .remove_where(|s| clients.iter().any(|c| **c == *s.identity.client));
        for id in &ids {
            self.0.router.close_session(id).await;
        }
        ids.len()
    }
}

async fn serve_connection<I>(shared: Arc<Shared>, io: I, peer: SocketAddr)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(route(&shared, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

async fn sweep_idle(shared: Arc<Shared>, limit: Duration, unused: Duration) {
    let period = (limit.min(unused) / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(period).await;
        shared.access.limits.sweep();
        shared.audit_ended_bursts(false).await;
        for (id, why) in shared.sessions.expire(limit, unused) {
            let why = match why {
                session::Expiry::Idle => "session expired after being idle",
                session::Expiry::Unused => {
                    "session expired after being used only for initialize and lists"
                }
            };
            tracing::info!(session = %streamable::short(&id), "{why}");
            shared.router.close_session(&id).await;
        }
    }
}

async fn route<B: RequestBody>(shared: &Arc<Shared>, req: Request<B>) -> Reply {
    let (parts, body) = req.into_parts();
    let guarded = if parts.uri.path() == crate::fleet::hop::PATH {
        // Served only with a valid fleet signature (fleet_hop::receive; without one, refused
        // before the body is read), so the name the owner was reached by does not matter.
        shared.guard.check_origin(&parts.headers)
    } else {
        shared
            .guard
            .check(&parts.headers, parts.uri.authority().map(|a| a.as_str()))
    };
    if let Err(rejection) = guarded {
        tracing::warn!(%rejection, path = parts.uri.path(), "request refused by the Host/Origin guard");
        let status = StatusCode::FORBIDDEN;
        return reply::rpc_error(
            status,
            None,
            ErrorCode::INVALID_REQUEST,
            &rejection.to_string(),
        );
    }
    let path = parts.uri.path();
    let base = base_url(shared, &parts);
    if shared.role == Role::Admin && !matches!(path, "/health" | "/ready" | "/metrics") {
        return reply::plain_json(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "error_description": format!("no such endpoint `{path}` on the admin listener: it serves /health, /ready and /metrics; MCP is served on gateway.listen")}),
        );
    }
    match (path, &parts.method) {
        (crate::fleet::hop::PATH, _) => fleet_hop::receive(shared, &parts, body).await,
        ("/mcp" | "/mcp/" | "/sse" | "/messages" | "/messages/", m) => match shared
            .access
            .authenticate(&parts.headers)
        {
            Ok(identity) => match (path, m) {
                ("/sse", &Method::GET) => legacy_sse::open(shared, identity),
                ("/messages" | "/messages/", &Method::POST) => {
                    legacy_sse::message(shared, parts.uri.query(), &parts.headers, body, identity)
                        .await
                }
                ("/sse" | "/messages" | "/messages/", _) => reply::plain_json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({"error": "method_not_allowed", "error_description": "legacy transport: GET /sse opens the stream, POST /messages?session_id=ID sends a message"}),
                ),
                _ => streamable::handle(shared, m, &parts.headers, body, identity).await,
            },
            Err(e) => unauthenticated(shared, &e, &base),
        },
        (p, &Method::GET) if p.starts_with("/.well-known/oauth-protected-resource") => {
            match shared.access.resource_metadata(&base) {
                Some(meta) => reply::plain_json(StatusCode::OK, &meta),
                None => reply::plain_json(
                    StatusCode::NOT_FOUND,
                    &json!({"error": "not_found", "error_description": "this gateway does not use OAuth: no protected-resource metadata"}),
                ),
            }
        }
        ("/health", &Method::GET) => reply::plain_json(
            StatusCode::OK,
            &json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "sessions": shared.sessions.len()}),
        ),
        ("/ready" | "/metrics", &Method::GET) => match shared.admin {
            Admin::Open => admin_endpoint(shared, path).await,
            Admin::Token => match shared.access.authenticate(&parts.headers) {
                Ok(_) => admin_endpoint(shared, path).await,
                Err(e) => unauthenticated(shared, &e, &base),
            },
            Admin::Elsewhere(addr) => reply::plain_json(
                StatusCode::NOT_FOUND,
                &json!({"error": "not_found", "error_description": format!("{path} is served on the admin listener http://{addr}{path} (gateway.admin_listen)")}),
            ),
        },
        // OAuth-capable clients (mcp-remote, SDK auth helpers) that get a 401 look for an
        // authorization server at the gateway's origin and try to register: say plainly that
        // there is none, so that what they print explains the real problem (the token).
        (p, _) if is_oauth_endpoint(p) => reply::plain_json(
            StatusCode::NOT_FOUND,
            &json!({"error": "invalid_request", "error_description": NO_AUTHORIZATION_SERVER}),
        ),
        (p, _) => reply::plain_json(
            StatusCode::NOT_FOUND,
            &json!({"error": "not_found", "error_description": format!("no such endpoint `{p}`; MCP is served at /mcp")}),
        ),
    }
}

/// What OAuth discovery and registration requests are told (see `route`).
const NO_AUTHORIZATION_SERVER: &str = "Portcullis has no OAuth authorization server: clients authenticate with a bearer token that the gateway's operator issues (`portcullis token new`), sent as `Authorization: Bearer <token>`. The request to /mcp was refused because its token was missing or not accepted; configure the client with the right token instead of signing in";

fn is_oauth_endpoint(path: &str) -> bool {
    path.starts_with("/.well-known/oauth-")
        || path.starts_with("/.well-known/openid-configuration")
        || matches!(
            path,
            "/register"
                | "/authorize"
                | "/token"
                | "/oauth/register"
                | "/oauth/authorize"
                | "/oauth/token"
        )
}

/// This gateway's origin as the client addressed it, for metadata URLs.
fn base_url(shared: &Shared, parts: &http::request::Parts) -> String {
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let scheme = if shared.tls { "https" } else { "http" };
    format!("{scheme}://{host}")
}

/// A 401 for a request without valid credentials, audited and counted.
fn unauthenticated(shared: &Shared, e: &crate::access::Unauthorized, base: &str) -> Reply {
    tracing::info!(reason = %e, "request refused: not authenticated");
    crate::metrics::global().refusal("unauthenticated");
    shared
        .audit
        .record_later(AuditTrail::unauthenticated(&e.reason));
    let mut r = reply::rpc_error(
        StatusCode::UNAUTHORIZED,
        None,
        ErrorCode::INVALID_REQUEST,
        &e.reason,
    );
    if let Ok(v) = http::HeaderValue::from_str(&shared.access.challenge(e, base)) {
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
    }
    r
}

/// `/ready` or `/metrics`, once the caller may see them.
async fn admin_endpoint(shared: &Shared, path: &str) -> Reply {
    if path == "/ready" {
        return ready::ready(shared).await;
    }
    let mut r = reply::json(
        StatusCode::OK,
        bytes::Bytes::from(crate::metrics::global().render()),
    );
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}
