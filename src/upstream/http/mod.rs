//! The HTTP transport to a remote MCP server: Streamable HTTP, with a fallback to the legacy
//! HTTP+SSE transport for servers that predate it.
//!
//! It plugs into the same [`Connection`] as the stdio transport: the connection's outbox is
//! drained here (one POST per message) and whatever the server sends (JSON bodies, SSE events
//! on a POST's response or on the standalone GET stream) goes through the same `dispatch`, so
//! the router cannot tell a remote server from a local one.
//!
//! Configured headers (credentials from `${secret:NAME}`) go on every request and nowhere
//! else: they are marked sensitive, never logged, and scrubbed from any error text. With
//! `oauth`, an access token the gateway obtained itself goes in `Authorization` (see [`oauth`]).

mod body;
pub(crate) mod connector;
pub mod egress;
mod handshake;
mod listening;
mod modern;
pub(super) mod oauth;
mod posting;
mod reach;
pub mod sse;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use tokio::sync::{mpsc, watch, Semaphore};

use super::connection::{dispatch_message, parse_incoming, Broken, Connection};
use super::{InitInfo, Source, UpstreamEvent};
use crate::mcp::{Body, Id, Message};
use crate::policy::{RemoteSpec, Server};
use crate::secrets::Redactor;
use body::{ReadError, SseReader};

const SESSION_HEADER: &str = "mcp-session-id";
const PROTOCOL_HEADER: &str = "mcp-protocol-version";
/// Time for a server to send response headers to a notification or response we POST.
const SHORT_EXCHANGE: Duration = Duration::from_secs(30);
/// Upper bound for one request's exchange (headers plus body). The caller's own request
/// timeout is usually shorter and answers the client first; this only frees the task.
const LONG_EXCHANGE: Duration = Duration::from_secs(15 * 60);
/// POSTs in flight at once to one server.
const MAX_IN_FLIGHT_POSTS: usize = 256;
/// Delay before reopening the standalone GET stream after it ended normally.
const GET_REOPEN: Duration = Duration::from_secs(1);
/// Longest error-body excerpt quoted in an error.
const ERROR_EXCERPT: usize = 300;

pub(super) use reach::{reach, Reach, SendError, Sender};

pub(super) type HttpClient = Client<connector::Connector, Full<Bytes>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Streamable,
    Legacy,
    /// Stateless 2026-07-28 (see [`modern`]).
    Modern,
}

/// One live connection to a remote server (one MCP session with it).
pub(super) struct Remote {
    server: Arc<str>,
    source: Arc<Source>,
    events: mpsc::Sender<UpstreamEvent>,
    conn: Arc<Connection>,
    client: HttpClient,
    url: Uri,
    headers: HeaderMap,
    redactor: Arc<Redactor>,
    /// Where the access token comes from when the policy configures `oauth`.
    oauth: Option<Arc<oauth::TokenSource>>,
    /// Streamable HTTP: the session id and protocol version the server gave us.
    session: Mutex<Option<HeaderValue>>,
    protocol: Mutex<Option<HeaderValue>>,
    /// Serializes re-initialization after the server expired our session.
    reinit: tokio::sync::Mutex<()>,
    /// Set once, with the reason, when the server is considered gone.
    dead: watch::Sender<Option<String>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    startup_timeout: Duration,
    client_capabilities: crate::policy::ClientCapabilities,
    /// 2026-07-28: the arguments each tool mirrors into `Mcp-Param-*` headers.
    mirrors: modern::Mirrors,
}

/// What [`connect`] established.
pub(super) struct Connected {
    pub remote: Arc<Remote>,
    pub conn: Arc<Connection>,
    /// The handshake result; `None` when it still has to run over `conn` (legacy transport).
    pub info: Option<InitInfo>,
}

fn spec(server: &Server) -> Result<&RemoteSpec, String> {
    match &server.runtime {
        crate::policy::Runtime::Remote(r) => Ok(r),
        _ => Err("not a remote server".to_owned()),
    }
}

/// Connects to a remote server: builds the client, tries Streamable HTTP, falls back to the
/// legacy HTTP+SSE transport, and starts the tasks that carry messages.
pub(super) async fn connect(
    server: &Server,
    source: Arc<Source>,
    events: mpsc::Sender<UpstreamEvent>,
    secrets: &[(String, String)],
    redactor: Arc<Redactor>,
) -> Result<Connected, String> {
    let spec = spec(server)?;
    let url: Uri = spec
        .url
        .parse()
        .map_err(|e| format!("invalid url `{}`: {e}", spec.url))?;
    let Reach {
        headers,
        client,
        oauth,
    } = reach(
        server,
        &spec.headers,
        spec.ca_file.as_deref(),
        spec.oauth.as_ref(),
        secrets,
        &redactor,
    )?;
    let (conn, outbox) = Connection::detached();
    let (dead, _) = watch::channel(None);
    let remote = Arc::new(Remote {
        server: Arc::from(server.name.as_str()),
        source,
        events,
        conn: conn.clone(),
        client,
        url,
        headers,
        redactor,
        oauth,
        session: Mutex::new(None),
        protocol: Mutex::new(None),
        reinit: tokio::sync::Mutex::new(()),
        dead,
        tasks: Mutex::new(Vec::new()),
        startup_timeout: server.startup_timeout,
        client_capabilities: server.client_capabilities,
        mirrors: modern::Mirrors::default(),
    });
    if let Some(info) = remote.probe(server.protocol).await? {
        conn.set_era(super::Era::Modern);
        remote.start_tasks(Mode::Modern, outbox, None);
        let caps = info.capabilities.clone();
        let me = remote.clone();
        let h = tokio::spawn(async move { me.listen_loop(caps).await });
        remote.track(h.abort_handle());
        return Ok(Connected {
            remote,
            conn,
            info: Some(info),
        });
    }
    match remote.initialize().await {
        Ok(Some(info)) => {
            remote.start_tasks(Mode::Streamable, outbox, None);
            Ok(Connected {
                remote,
                conn,
                info: Some(info),
            })
        }
        Ok(None) => {
            // Not a Streamable HTTP endpoint: try the 2024-11-05 HTTP+SSE transport.
            let legacy = remote.open_legacy().await?;
            remote.start_tasks(Mode::Legacy, outbox, Some(legacy));
            Ok(Connected {
                remote,
                conn,
                info: None,
            })
        }
        Err(e) => Err(e),
    }
}

/// How a POST went, as far as the sender cares.
enum Posted {
    /// A response whose body the caller reads.
    Response(http::Response<Incoming>),
    /// The server no longer knows our session (404 with a session id).
    SessionExpired,
}

impl Remote {
    fn die(&self, reason: String) {
        self.dead.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(reason);
                true
            } else {
                false
            }
        });
    }

    pub(super) fn dead(&self) -> watch::Receiver<Option<String>> {
        self.dead.subscribe()
    }

    fn is_dead(&self) -> bool {
        self.dead.borrow().is_some()
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "{}://{}",
            self.url.scheme_str().unwrap_or("http"),
            self.url.authority().map(|a| a.as_str()).unwrap_or("")
        )
    }

    fn redact(&self, text: &str) -> String {
        self.redactor.redact(text).into_owned()
    }

    fn track(&self, handle: tokio::task::AbortHandle) {
        if let Ok(mut t) = self.tasks.lock() {
            t.retain(|h| !h.is_finished());
            t.push(handle);
        }
    }

    /// A POST of one JSON-RPC message to `to`, which may be answered with JSON or SSE.
    async fn build_post(
        &self,
        to: &Uri,
        msg: Bytes,
        with_session: bool,
    ) -> Result<Request<Full<Bytes>>, String> {
        self.build(
            Method::POST,
            to,
            "application/json, text/event-stream",
            Some(msg),
            with_session,
        )
        .await
    }

    /// A request to `uri` with the configured headers and, in Streamable mode, the session's.
    async fn build(
        &self,
        method: Method,
        uri: &Uri,
        accept: &'static str,
        body: Option<Bytes>,
        with_session: bool,
    ) -> Result<Request<Full<Bytes>>, String> {
        let mut req = Request::builder().method(method).uri(uri.clone());
        if let Some(h) = req.headers_mut() {
            for (k, v) in &self.headers {
                h.insert(k, v.clone());
            }
            h.insert(ACCEPT, HeaderValue::from_static(accept));
            if body.is_some() {
                h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            if with_session {
                if let Some(s) = self.session.lock().ok().and_then(|s| s.clone()) {
                    h.insert(SESSION_HEADER, s);
                }
                if let Some(p) = self.protocol.lock().ok().and_then(|p| p.clone()) {
                    h.insert(PROTOCOL_HEADER, p);
                }
            }
        }
        req.body(Full::new(body.unwrap_or_default()))
            .map_err(|e| format!("cannot build the request: {e}"))
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<http::Response<Incoming>, SendError> {
        let sender = Sender {
            client: &self.client,
            oauth: self.oauth.as_deref(),
            redactor: &self.redactor,
        };
        sender.send(req, limit).await
    }

    /// Reads a JSON or SSE response body, handing each JSON-RPC message to `each`; messages
    /// the handshake does not need are dispatched like any other, as related to request
    /// `related` (the one whose response this is).
    async fn read_messages(
        &self,
        resp: http::Response<Incoming>,
        limit: Duration,
        related: Option<u64>,
        mut each: impl FnMut(&Message),
    ) -> Result<(), ReadError> {
        let sse = is_sse(resp.headers());
        let declared = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = resp.into_body();
        let max = self.source.max_message_bytes;
        if !sse {
            let bytes = body::json(body, declared, max, limit).await?;
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            let parsed = Body::parse(&bytes);
            // The parsed message holds its own copy: the body goes before it travels on.
            drop(bytes);
            return match parsed {
                Ok(Body::Single(m)) => {
                    each(&m);
                    self.deliver(m, related).await;
                    Ok(())
                }
                Ok(Body::Batch(items)) => {
                    for m in items.into_iter().flatten() {
                        each(&m);
                        self.deliver(m, related).await;
                    }
                    Ok(())
                }
                Err(e) => Err(ReadError::Failed(format!(
                    "the server sent a body that is not JSON-RPC: {e}"
                ))),
            };
        }
        let mut reader = SseReader::new(body, max);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let ev = tokio::time::timeout_at(deadline, reader.next())
                .await
                .map_err(|_| {
                    ReadError::Failed(format!("no complete answer within {}s", limit.as_secs()))
                })??;
            let Some(ev) = ev else { return Ok(()) };
            if ev.event != "message" || ev.data.trim().is_empty() {
                continue;
            }
            let parsed = Message::parse(ev.data.as_bytes());
            drop(ev);
            match parsed {
                Ok(m) => {
                    each(&m);
                    let done = matches!(m, Message::Response(_));
                    self.deliver(m, related).await;
                    // A response ends what the handshake waits for; servers may keep the
                    // stream open.
                    if done {
                        return Ok(());
                    }
                }
                Err(e) => {
                    tracing::warn!(server = %self.server, error = %e, "ignoring an SSE event that is not JSON-RPC")
                }
            }
        }
    }

    /// Dispatches a message that is not the handshake's own answer.
    async fn deliver(&self, m: Message, related: Option<u64>) {
        if matches!(&m, Message::Response(r) if r.id == Id::Num(0)) {
            return;
        }
        if let Err(reason) =
            dispatch_message(&self.source, &self.conn, &self.events, m, related).await
        {
            self.die(reason);
        }
    }

    async fn status_error(&self, resp: http::Response<Incoming>, what: &str) -> String {
        let status = resp.status();
        // Says why a credential was refused (RFC 6750 section 3); quoted, without secrets.
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(|v| self.redact(&v.chars().take(ERROR_EXCERPT).collect::<String>()));
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            http_body_util::Limited::new(resp.into_body(), 64 * 1024).collect(),
        )
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|c| c.to_bytes())
        .unwrap_or_default();
        let text = String::from_utf8_lossy(&body[..body.len().min(ERROR_EXCERPT)]).into_owned();
        let text = self.redact(text.trim());
        let mut out = if text.is_empty() {
            format!("`{what}` answered HTTP {status}")
        } else {
            format!("`{what}` answered HTTP {status}: {text}")
        };
        if let Some(challenge) = challenge {
            out.push_str(&format!(" (WWW-Authenticate: {challenge})"));
        }
        if status == StatusCode::UNAUTHORIZED && self.oauth.is_some() {
            out.push_str("; the server refused a freshly issued oauth access token: check the oauth scope, resource and audience");
        }
        out
    }

    fn start_tasks(
        self: &Arc<Self>,
        mode: Mode,
        outbox: mpsc::Receiver<Bytes>,
        legacy: Option<(Uri, SseReader)>,
    ) {
        match legacy {
            Some((endpoint, reader)) => {
                let me = self.clone();
                let h = tokio::spawn(async move { me.legacy_read_loop(reader).await });
                self.track(h.abort_handle());
                let me = self.clone();
                let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT_POSTS));
                let h =
                    tokio::spawn(
                        async move { me.write_loop(mode, outbox, endpoint, permits).await },
                    );
                self.track(h.abort_handle());
            }
            None => {
                let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT_POSTS));
                self.conn.set_direct(Box::new(DirectPost {
                    mode,
                    remote: Arc::downgrade(self),
                    to: self.url.clone(),
                    permits: permits.clone(),
                }));
                let me = self.clone();
                let url = self.url.clone();
                let h =
                    tokio::spawn(async move { me.write_loop(mode, outbox, url, permits).await });
                self.track(h.abort_handle());
                if mode == Mode::Streamable {
                    let me = self.clone();
                    let h = tokio::spawn(async move { me.get_loop().await });
                    self.track(h.abort_handle());
                }
            }
        }
    }

    /// Ends the session: stops the tasks and, for Streamable HTTP, tells the server (DELETE).
    pub(super) async fn close(&self) {
        self.die("stopped by the gateway".to_owned());
        if let Ok(mut t) = self.tasks.lock() {
            for h in t.drain(..) {
                h.abort();
            }
        }
        let has_session = self.session.lock().is_ok_and(|s| s.is_some());
        if has_session {
            if let Ok(req) = self
                .build(Method::DELETE, &self.url, "application/json", None, true)
                .await
            {
                // Bounded as a whole: with oauth it may first need a token, and shutdown
                // must not wait on an authorization server.
                let limit = Duration::from_secs(2);
                let _ = tokio::time::timeout(limit, self.send(req, limit)).await;
            }
        }
    }
}

fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The legacy `endpoint` event names a path (or URL) on the same server. A different origin is
/// refused: following it would send our credentials wherever the server points.
pub(crate) fn resolve_endpoint(base: &Uri, endpoint: &str) -> Result<Uri, String> {
    let bad = || format!("the server's `endpoint` event is not usable: `{endpoint}`");
    if endpoint.starts_with('/') && !endpoint.starts_with("//") {
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(endpoint.parse().map_err(|_| bad())?);
        return Uri::from_parts(parts).map_err(|_| bad());
    }
    let abs: Uri = endpoint.parse().map_err(|_| bad())?;
    if abs.scheme() != base.scheme() || abs.authority() != base.authority() {
        return Err(format!(
            "the server's `endpoint` event points at another origin (`{endpoint}`); refusing to send messages there"
        ));
    }
    Ok(abs)
}

/// An error with its causes (hyper's top-level messages, like "client error (Connect)", say
/// little on their own).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Streamable HTTP's direct path: each message is its own POST, sent without the outbox.
struct DirectPost {
    mode: Mode,
    // Weak: the connection (which holds this) is owned by the remote.
    remote: std::sync::Weak<Remote>,
    to: Uri,
    permits: Arc<Semaphore>,
}

impl super::connection::Direct for DirectPost {
    fn deliver(
        &self,
        msg: Bytes,
        request_id: Option<u64>,
    ) -> Result<super::connection::Delivery, Bytes> {
        let Some(remote) = self.remote.upgrade().filter(|r| !r.is_dead()) else {
            return Err(msg);
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return Err(msg);
        };
        let to = self.to.clone();
        let mode = self.mode;
        Ok(Box::pin(async move {
            remote.post(mode, &to, msg, request_id).await;
            drop(permit);
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_must_stay_on_the_same_origin() {
        let base: Uri = "http://127.0.0.1:9000/sse".parse().unwrap();
        assert_eq!(
            resolve_endpoint(&base, "/messages?session_id=1")
                .unwrap()
                .to_string(),
            "http://127.0.0.1:9000/messages?session_id=1"
        );
        assert!(resolve_endpoint(&base, "http://127.0.0.1:9000/m").is_ok());
        assert!(resolve_endpoint(&base, "http://evil.example/m").is_err());
        assert!(resolve_endpoint(&base, "//evil.example/m").is_err());
    }
}
