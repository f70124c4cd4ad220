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
mod listener;
pub(crate) mod modern;
mod ready;
mod refusal_bursts;
mod reply;
mod request_body;
mod session;
mod session_open;
mod streamable;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use serde_json::json;

use crate::access::Access;
use crate::mcp::ErrorCode;
use crate::policy::Gateway;
use crate::router::audit_trail::AuditTrail;
use crate::router::Router;
pub use listener::{Listener, SessionControl};
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
    /// For a handler that forwards nothing and speaks no TLS itself: the admin listener and
    /// in-process handling (plain hop client, no advertised address).
    fn local(
        gateway: &Gateway,
        router: Arc<Router>,
        access: Arc<Access>,
        audit: AuditTrail,
    ) -> Shared {
        Shared::new(
            gateway,
            router,
            access,
            audit,
            false,
            None,
            fleet_hop::plain_client(),
        )
    }

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
            shared: Arc::new(Shared::local(gateway, router, access, audit)),
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
