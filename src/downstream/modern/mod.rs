//! The 2026-07-28 (stateless) era on `/mcp`, beside the 2025 era's sessions.
//!
//! A POST is served here when it names a 2026-07-28 revision in `MCP-Protocol-Version`, or
//! carries no session and no handshake revision but a `_meta` envelope (or is
//! `server/discover`); everything else keeps the 2025 era's path unchanged. Each request
//! stands alone: [`envelope`] decodes its `_meta` into the request context and checks its
//! request metadata headers against the body (the body decides; a header that disagrees, is
//! missing or appears twice is `HeaderMismatch`, audited as a refused call), [`mirror`] does the
//! same for `Mcp-Param-*` headers of tools that declare `x-mcp-header`. Then:
//!
//! - `server/discover` is the gateway's own answer (the aggregate's capabilities, every revision
//!   served);
//! - `*/list` come from the router's per-client page cache with `ttlMs` and `cacheScope`
//!   (`public` only when every caller sees the same lists);
//! - calls, prompts, resource reads and completions go through the bridge (multi round-trip
//!   requests), which drives the router;
//! - `subscriptions/listen` opens a change stream ([`listen`]);
//! - task requests go through the bridge's task handles;
//! - methods the revision removed (`initialize`, `ping`, `logging/setLevel`,
//!   `resources/subscribe`, `resources/unsubscribe`) are not found (404).
//!
//! Every result gets `resultType` and `io.modelcontextprotocol/serverInfo` ([`encode`]).
//! Closing a response before its answer cancels the request at the server ([`outbox`]).

pub(crate) mod encode;
pub(crate) mod envelope;
mod listen;
pub(crate) mod mirror;
mod outbox;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

use super::reply::{self, Reply, PROTOCOL_HEADER, SESSION_HEADER};
use super::Shared;
use crate::access::Identity;
use crate::audit::{AuditEvent, Kind as AuditKind};
use crate::bridge::Call;
use crate::mcp::{meta, methods, protocol, Body, ErrorCode, Id, Message, Request};
use crate::router::catalog::Kind;
use crate::router::Answer;
use envelope::{Decoded, Rejection};
use outbox::{Final, Outbox};

pub use listen::Streams;

/// Methods of the 2025 era that 2026-07-28 removed, and what replaced them.
const REMOVED: [(&str, &str); 6] = [
    (methods::INITIALIZE, "requests carry their revision and capabilities in `_meta`; call server/discover to learn the gateway's"),
    (methods::PING, "ping is gone in 2026-07-28"),
    (methods::LOGGING_SET_LEVEL, "set `io.modelcontextprotocol/logLevel` in each request's `_meta`"),
    (methods::RESOURCES_SUBSCRIBE, "use subscriptions/listen with `resourceSubscriptions`"),
    (methods::RESOURCES_UNSUBSCRIBE, "close the subscriptions/listen stream"),
    (methods::TASKS_RESULT, "poll tasks/get: a finished task carries its result"),
];

/// Whether a POST belongs to the stateless era (see the module documentation).
pub(super) fn claims(headers: &HeaderMap, body: &Body) -> bool {
    if let Body::Single(Message::Request(r)) = body {
        if r.method == methods::INITIALIZE {
            // A handshake is the 2025 era's, unless the client says it speaks 2026-07-28 (it is
            // then told that the revision has no initialize).
            return claims_other(headers);
        }
    }
    if let Some(v) = headers.get(PROTOCOL_HEADER) {
        let v = v.to_str().unwrap_or("");
        if protocol::is_supported(v) {
            return false;
        }
        // A 2026 revision, or one the gateway does not know: without a session, the client
        // learns the served revisions from an UnsupportedProtocolVersionError.
        return protocol::is_modern(v) || !headers.contains_key(SESSION_HEADER);
    }
    if headers.contains_key(SESSION_HEADER) {
        return false;
    }
    match body {
        Body::Single(Message::Request(r)) => {
            r.method == methods::SERVER_DISCOVER
                || r.params
                    .as_deref()
                    .is_some_and(|p| p.get().contains(meta::PROTOCOL_VERSION))
        }
        _ => false,
    }
}

/// Whether a GET or DELETE on `/mcp` comes from a stateless client (which has neither).
pub(super) fn claims_other(headers: &HeaderMap) -> bool {
    !headers.contains_key(SESSION_HEADER)
        && headers
            .get(PROTOCOL_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(protocol::is_modern)
}

/// The answer to a GET or DELETE from a stateless client.
pub(super) fn method_not_allowed() -> Reply {
    let mut r = reply::rpc_error(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        ErrorCode::INVALID_REQUEST,
        "2026-07-28 has no GET stream and no sessions to DELETE: POST requests, and use subscriptions/listen for change notifications",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

/// A router session key for one request (never sent to anyone).
fn session_key(kind: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{kind}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

fn rejection(rej: &Rejection, id: Option<&Id>) -> Reply {
    reply::json(rej.status(), rej.bytes(id))
}

fn answer_reply(answer: &Answer) -> Reply {
    outbox::json(final_error(answer))
}

fn final_error(answer: &Answer) -> Final {
    let (status, bytes) = encode::error(answer);
    Final {
        status,
        bytes,
        retry_after: match answer.refusal {
            Some(crate::router::Refusal::RateLimited { retry_after_secs }) => {
                Some(retry_after_secs)
            }
            _ => None,
        },
    }
}

fn ok(id: &Id, result: &str) -> Reply {
    reply::json(StatusCode::OK, encode::response(id, result))
}

/// Serves a stateless POST whose body is `body`.
pub(super) async fn post(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: Body,
    sse: bool,
    identity: Identity,
) -> Reply {
    let message = match body {
        Body::Single(m) => m,
        Body::Batch(_) => {
            let rej = Rejection::new(
                ErrorCode::INVALID_REQUEST,
                "2026-07-28 has no JSON-RPC batches: send one request per POST",
            );
            return rejection(&rej, None);
        }
    };
    match message {
        Message::Request(req) => request(shared, headers, req, sse, identity).await,
        // The revision defines no client notifications over HTTP (closing a response is the
        // cancellation); one is acknowledged and dropped, at a revision the gateway serves.
        Message::Notification(_) => match headers.get(PROTOCOL_HEADER).map(|v| v.to_str()) {
            Some(Ok(v)) if !protocol::is_modern(v) => rejection(&envelope::unsupported(v), None),
            _ => reply::status(StatusCode::ACCEPTED),
        },
        Message::Response(_) => rejection(
            &Rejection::new(
                ErrorCode::INVALID_REQUEST,
                "2026-07-28 clients send no responses: answers to a server's requests go in the retried request's inputResponses",
            ),
            None,
        ),
    }
}

async fn request(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    req: Request,
    sse: bool,
    identity: Identity,
) -> Reply {
    let d = match envelope::decode(headers, &req) {
        Ok(d) => d,
        Err(rej) => {
            refused(shared, &identity, &req, &rej);
            return rejection(&rej, Some(&req.id));
        }
    };
    if d.method == methods::TOOLS_CALL {
        let mirrored = d
            .params
            .get("name")
            .and_then(Value::as_str)
            .and_then(|name| shared.router.mirrored_arguments(name));
        if let Some(m) = mirrored {
            if let Err(rej) = mirror::check(&m, d.params.get("arguments"), headers) {
                refused(shared, &identity, &req, &rej);
                return rejection(&rej, Some(&d.id));
            }
        }
    }
    drop(req);
    let method = d.method.as_str();
    if let Some((_, hint)) = REMOVED.iter().find(|(m, _)| *m == method) {
        let rej = Rejection::new(
            ErrorCode::METHOD_NOT_FOUND,
            format!("`{method}` is not part of protocol revision 2026-07-28: {hint}"),
        );
        return rejection(&rej, Some(&d.id));
    }
    match method {
        methods::SERVER_DISCOVER => discover(shared, &d),
        methods::SUBSCRIPTIONS_LISTEN if !sse => reply::rpc_error(
            StatusCode::NOT_ACCEPTABLE,
            Some(&d.id),
            ErrorCode::INVALID_REQUEST,
            "subscriptions/listen answers with an event stream: Accept must include text/event-stream",
        ),
        methods::SUBSCRIPTIONS_LISTEN => listen::open(shared, identity, d).await,
        methods::TASKS_GET | methods::TASKS_UPDATE | methods::TASKS_CANCEL if !d.context.caps.tasks => {
            let mut rej = Rejection::new(
                ErrorCode::MISSING_CLIENT_CAPABILITY,
                format!("`{method}` belongs to the tasks extension: declare `{}` in clientCapabilities.extensions", meta::TASKS_EXTENSION),
            );
            rej.data = Some(json!({ "requiredCapabilities": { "extensions": { meta::TASKS_EXTENSION: {} } } }));
            rejection(&rej, Some(&d.id))
        }
        methods::TASKS_GET | methods::TASKS_UPDATE | methods::TASKS_CANCEL => {
            let id = d.id.clone();
            match shared.tasks.serve(call(identity, d)).await {
                Ok(r) => ok(&id, &encode::result(r.get(), None)),
                Err(a) => answer_reply(&a),
            }
        }
        m => match Kind::of_list_method(m) {
            Some(kind) => list(shared, &identity, kind, &d).await,
            None => forwarded(shared, identity, d, sse).await,
        },
    }
}

/// Audits a request refused for its headers as a refused call, naming what its body asked for.
fn refused(shared: &Shared, identity: &Identity, req: &Request, rej: &Rejection) {
    if !rej.is_header_mismatch() {
        return;
    }
    crate::metrics::global().refusal("header_mismatch");
    let params: Map<String, Value> = req
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .unwrap_or_default();
    let owner = shared.router.owner_of(&req.method, &params);
    tracing::warn!(client = %identity.client, method = %req.method, reason = %rej.message, "request refused: its headers disagree with its body");
    // No session to name: a stateless request has none.
    let mut event = AuditEvent::new(AuditKind::Denied)
        .outcome(crate::audit::Outcome::Error(rej.code.0))
        .detail(&rej.message)
        .client(identity.client.to_string())
        .method(req.method.clone());
    if let Some((server, item)) = &owner {
        event = event.server(&**server);
        event = match req.method.as_str() {
            methods::TOOLS_CALL => event.tool(item),
            _ => event.item(item),
        };
    }
    shared.audit.record_later(event);
}

fn call(identity: Identity, d: Decoded) -> Call {
    Call {
        identity,
        session: Arc::from(session_key("stateless").as_str()),
        id: d.id,
        method: d.method,
        params: d.params,
        context: d.context,
    }
}

fn discover(shared: &Shared, d: &Decoded) -> Reply {
    let router = &shared.router;
    let mut caps = router.capabilities();
    caps["extensions"] = json!({ meta::TASKS_EXTENSION: {} });
    let mut result = json!({
        "supportedVersions": protocol::SERVED,
        "capabilities": caps,
    });
    if let Some(text) = router.instructions_text() {
        result["instructions"] = Value::String(text);
    }
    let cache = encode::Cache {
        ttl_ms: u64::try_from(router.list_ttl().as_millis()).unwrap_or(u64::MAX),
        public: router.lists_are_shared(),
    };
    ok(&d.id, &encode::result(&result.to_string(), Some(cache)))
}

async fn list(shared: &Shared, identity: &Identity, kind: Kind, d: &Decoded) -> Reply {
    let router = &shared.router;
    match router.list_page(kind, &d.params, identity, &d.id).await {
        Ok(page) => {
            let cache = encode::Cache {
                ttl_ms: u64::try_from(router.list_ttl().as_millis()).unwrap_or(u64::MAX),
                public: router.lists_are_shared(),
            };
            reply::json_parts(StatusCode::OK, encode::list_response(&d.id, page, cache))
        }
        Err(a) => answer_reply(&a),
    }
}

/// Answers its `Final` into the outbox even when the task running the call ends some other
/// way, so that a response never waits for an answer that cannot come.
struct Answering(Arc<Outbox>, Id, bool);

impl Answering {
    fn finish(mut self, answer: Final) {
        self.0.finish(answer);
        self.2 = true;
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        if !self.2 {
            self.0.finish(final_error(&Answer::error(
                Some(&self.1),
                ErrorCode::INTERNAL_ERROR,
                "the request ended without an answer",
            )));
        }
    }
}

/// A request that reaches a server: run by the bridge in a task of its own, answered as JSON
/// or as an event stream, cancelled when the client goes away.
async fn forwarded(shared: &Arc<Shared>, identity: Identity, d: Decoded, sse: bool) -> Reply {
    let reads = d.method == methods::RESOURCES_READ;
    let id = d.id.clone();
    let outbox = Outbox::new();
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let bridge = shared.bridge.clone();
    let shared_lists = shared.router.lists_are_shared();
    let answering = Answering(outbox.clone(), id.clone(), false);
    tokio::spawn(async move {
        let sink = answering.0.clone() as Arc<dyn crate::router::MessageSink>;
        let answer = bridge.serve(call(identity, d), sink, gone_rx).await;
        let done = match answer {
            Ok(result) => {
                let cache = reads.then(|| encode::Cache::of_upstream(result.get(), shared_lists));
                Final {
                    status: StatusCode::OK,
                    bytes: encode::response(&answering.1, &encode::result(result.get(), cache)),
                    retry_after: None,
                }
            }
            Err(a) => final_error(&a),
        };
        answering.finish(done);
    });
    outbox::respond(outbox, sse, shared.keepalive, gone_tx).await
}
