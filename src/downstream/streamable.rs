//! The Streamable HTTP transport on `/mcp`: POST carries client messages, GET opens the
//! standalone stream (or resumes one), DELETE ends the session.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::Value;

use super::event_stream::{self, parse_event_id};
use super::reply::{self, Reply, PROTOCOL_HEADER, SESSION_HEADER};
use super::request_body;
use super::session::{InUse, Session};
use super::{RequestBody, Shared};
use crate::access::Identity;
use crate::mcp::{methods, protocol, Body, ErrorCode, Message, Request};
use crate::router::{Admission, Answer, ClientCaps, MessageSink, Refusal, SessionInfo};

/// Longest wait for a streamed request's first event before its response starts (see
/// `stream_request`).
const FIRST_EVENT_WAIT: std::time::Duration = std::time::Duration::from_millis(5);

/// Methods whose answers may be preceded by related messages (progress, logging, relayed
/// requests) and therefore stream when the client accepts SSE.
fn streams(method: &str) -> bool {
    matches!(
        method,
        methods::TOOLS_CALL
            | methods::PROMPTS_GET
            | methods::RESOURCES_READ
            | methods::COMPLETION_COMPLETE
    )
}

struct Accept {
    json: bool,
    sse: bool,
}

/// Requests a health check or a catalog browse makes; a session that only sends these is not
/// yet in use (see `unused_session_timeout`).
fn preliminary(method: &str) -> bool {
    matches!(
        method,
        methods::PING
            | methods::TOOLS_LIST
            | methods::PROMPTS_LIST
            | methods::RESOURCES_LIST
            | methods::RESOURCE_TEMPLATES_LIST
            | methods::LOGGING_SET_LEVEL
    )
}

fn accept(headers: &HeaderMap) -> Accept {
    let mut a = Accept {
        json: false,
        sse: false,
    };
    let mut any = false;
    for v in headers.get_all(header::ACCEPT) {
        for part in v.to_str().unwrap_or("").split(',') {
            let media = part
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match media.as_str() {
                "application/json" => a.json = true,
                "text/event-stream" => a.sse = true,
                "*/*" | "application/*" | "text/*" => any = true,
                _ => {}
            }
        }
    }
    if headers.get(header::ACCEPT).is_none() || any {
        a.json = true;
        a.sse = true;
    }
    a
}

pub async fn handle<B: RequestBody>(
    shared: &Arc<Shared>,
    method: &Method,
    headers: &HeaderMap,
    body: B,
    identity: Identity,
) -> Reply {
    match *method {
        Method::POST => post(shared, headers, body, identity).await,
        Method::GET | Method::DELETE if super::modern::claims_other(headers) => {
            super::modern::method_not_allowed()
        }
        Method::GET => get(shared, headers, &identity),
        Method::DELETE => delete(shared, headers, &identity).await,
        _ => {
            let mut r = reply::rpc_error(
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                ErrorCode::INVALID_REQUEST,
                "use POST to send messages, GET to open a stream, DELETE to end a session",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, POST, DELETE"));
            r
        }
    }
}

fn bad(status: StatusCode, message: &str) -> Reply {
    reply::rpc_error(status, None, ErrorCode::INVALID_REQUEST, message)
}

/// Finds the session a request names, with the statuses the spec asks for. A session used by
/// another identity than the one that created it is reported as unknown (404), so a stolen
/// session id is worth nothing and its existence is not confirmed.
/// The session comes marked busy (see [`InUse`]) for as long as the request is handled.
fn session_of(
    shared: &Shared,
    headers: &HeaderMap,
    identity: &Identity,
) -> Result<InUse, Box<Reply>> {
    let Some(id) = headers.get(SESSION_HEADER) else {
        return Err(Box::new(bad(
            StatusCode::BAD_REQUEST,
            "missing Mcp-Session-Id header: send initialize first and echo the session id it returns",
        )));
    };
    let id = id.to_str().unwrap_or("");
    match shared.sessions.enter(id) {
        Some(s) if s.identity == *identity => {
            s.touch();
            Ok(s)
        }
        Some(_) => {
            tracing::warn!(session = %short(id), client = %identity.client, "session id presented by another identity; refused as unknown");
            Err(Box::new(reply::rpc_error(
                StatusCode::NOT_FOUND,
                None,
                ErrorCode::INVALID_REQUEST,
                "unknown or expired session: initialize a new session",
            )))
        }
        None => Err(Box::new(reply::rpc_error(
            StatusCode::NOT_FOUND,
            None,
            ErrorCode::INVALID_REQUEST,
            "unknown or expired session: initialize a new session",
        ))),
    }
}

/// `MCP-Protocol-Version` must be a revision we speak. It is not required to equal the
/// session's negotiated one: clients in the wild (the conformance suite among them) send a
/// fixed older revision on every request, and the spec only asks servers to reject invalid
/// or unsupported values.
fn check_protocol_header(headers: &HeaderMap) -> Result<(), Box<Reply>> {
    let Some(v) = headers.get(PROTOCOL_HEADER) else {
        return Ok(());
    };
    let v = v.to_str().unwrap_or("<non-ASCII>");
    if !protocol::is_supported(v) {
        return Err(Box::new(bad(
            StatusCode::BAD_REQUEST,
            &format!(
                "unsupported MCP-Protocol-Version `{v}`; this gateway supports {}",
                protocol::SUPPORTED.join(", ")
            ),
        )));
    }
    Ok(())
}

async fn post<B: RequestBody>(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: B,
    identity: Identity,
) -> Reply {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    {
        return bad(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Content-Type must be application/json, got `{ct}`"),
        );
    }
    let acc = accept(headers);
    if !acc.json && !acc.sse {
        return bad(
            StatusCode::NOT_ACCEPTABLE,
            "Accept must include application/json and text/event-stream",
        );
    }
    let bytes = match request_body::read(shared, headers, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let parsed = match Body::parse(&bytes) {
        Ok(b) => b,
        Err(e) => return reply::json(StatusCode::BAD_REQUEST, e.to_response_bytes()),
    };

    // State held in another replica's process goes to that replica, whichever era asked.
    if let Some(r) =
        super::fleet_hop::forward_if_elsewhere(shared, headers, &bytes, &parsed, &identity).await
    {
        return r;
    }
    if super::modern::claims(headers, &parsed) {
        return super::modern::post(shared, headers, parsed, acc.sse, identity).await;
    }
    // Messages that may come without a session.
    if let Body::Single(Message::Request(req)) = &parsed {
        if req.method == methods::INITIALIZE {
            if headers.contains_key(SESSION_HEADER) {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "initialize must not carry Mcp-Session-Id: it creates a new session",
                );
            }
            return initialize(shared, req, &acc, identity);
        }
    }

    let session = match session_of(shared, headers, &identity) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if let Err(r) = check_protocol_header(headers) {
        return *r;
    }
    match parsed {
        Body::Single(Message::Request(req)) => {
            if req.method == methods::INITIALIZE {
                return bad(
                    StatusCode::BAD_REQUEST,
                    "this session is already initialized",
                );
            }
            if !preliminary(&req.method) {
                session.engage();
            }
            let admission = match shared
                .router
                .admit(&session.id, &session.identity, &req)
                .await
            {
                Ok(a) => a,
                Err(refused) => return answer_reply(refused),
            };
            if acc.sse && streams(&req.method) {
                stream_request(shared, &session, req, admission, headers).await
            } else {
                let out = shared
                    .router
                    .handle_request(inbound_of(&session, req, Some(headers)), None, admission)
                    .await;
                answer_reply(out)
            }
        }
        Body::Single(other) => {
            if matches!(other, Message::Response(_)) {
                session.engage();
            }
            deliver(shared, &session, other).await;
            reply::status(StatusCode::ACCEPTED)
        }
        Body::Batch(items) => batch(shared, &session, items).await,
    }
}

fn initialize(shared: &Arc<Shared>, req: &Request, acc: &Accept, identity: Identity) -> Reply {
    if let Some(r) = super::ready::refuse_new_session(shared, Some(&req.id)) {
        return r;
    }
    let params: Value = req
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .unwrap_or(Value::Null);
    let Some(requested) = params.get("protocolVersion").and_then(Value::as_str) else {
        return reply::rpc_error(
            StatusCode::BAD_REQUEST,
            Some(&req.id),
            ErrorCode::INVALID_PARAMS,
            "initialize needs params.protocolVersion",
        );
    };
    let negotiated = protocol::negotiate(requested);
    let session = match super::session_open::open(shared, negotiated, identity) {
        Ok(s) => s,
        Err(refused) => return super::session_open::refusal_reply(&refused, Some(&req.id)),
    };
    let caps = ClientCaps::from_initialize(&params);
    session.set_caps(caps);
    shared.router.open_session(SessionInfo {
        key: session.id.clone(),
        client: session.identity.client.clone(),
        caps,
        log: crate::mcp::LogLevel::Unset,
        sink: session.standalone.clone() as Arc<dyn MessageSink>,
    });
    let client = params
        .get("clientInfo")
        .and_then(|c| c.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or("?");
    tracing::info!(session = %short(&session.id), protocol = negotiated, client, "session opened");
    let result = shared.router.initialize_result(negotiated);
    let out = Message::Response(crate::mcp::Response {
        id: req.id.clone(),
        outcome: Ok(result),
    })
    .to_bytes();
    let mut r = if acc.json {
        reply::json(StatusCode::OK, out)
    } else {
        // A client that accepts only SSE gets the answer as a one-event stream.
        let stream = session.open_stream();
        stream.push(out);
        stream.close();
        match stream.attach(None) {
            Some(reader) => reply::sse(event_stream::body(reader, false, shared.keepalive, None)),
            None => reply::status(StatusCode::INTERNAL_SERVER_ERROR),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&session.id) {
        r.headers_mut().insert(SESSION_HEADER, v);
    }
    r
}

/// Answers one request as an SSE stream: related messages first, then the response. The call
/// runs in its own task so that a dropped connection does not abandon it; the client can
/// resume the stream with Last-Event-ID.
///
/// The response starts when the stream has its first event, or after [`FIRST_EVENT_WAIT`]: a
/// call answered by then goes out in one write (headers, priming event, answer, end of
/// stream) rather than two, with the same bytes; a slower one starts streaming at the bound.
async fn stream_request(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    req: Request,
    admission: Option<Admission>,
    headers: &HeaderMap,
) -> Reply {
    let stream = session.open_stream();
    let Some(reader) = stream.attach(None) else {
        return reply::status(StatusCode::INTERNAL_SERVER_ERROR);
    };
    answer_on(
        shared,
        session,
        req,
        admission,
        stream.clone(),
        true,
        Some(headers),
    );
    stream.first_event(FIRST_EVENT_WAIT).await;
    reply::sse(event_stream::body(
        reader,
        protocol::wants_priming_event(session.protocol),
        shared.keepalive,
        shared.sse_poll,
    ))
}

async fn deliver(shared: &Shared, session: &Session, message: Message) {
    match message {
        Message::Notification(n) => shared.router.handle_notification(&session.id, n).await,
        Message::Response(r) => shared.router.handle_response(&session.id, r).await,
        Message::Request(_) => {}
    }
}

async fn batch(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    items: Vec<Result<Message, crate::mcp::ParseError>>,
) -> Reply {
    if !protocol::allows_batches(session.protocol) {
        return bad(
            StatusCode::BAD_REQUEST,
            &format!(
                "JSON-RPC batches are not part of protocol version {}; send one message per request",
                session.protocol
            ),
        );
    }
    let mut answers = Vec::new();
    let mut calls = Vec::new();
    for item in items {
        match item {
            Ok(Message::Request(req)) if req.method == methods::INITIALIZE => {
                answers.push(crate::mcp::error_response_bytes(
                    Some(&req.id),
                    ErrorCode::INVALID_REQUEST,
                    "initialize cannot be part of a batch",
                ));
            }
            Ok(Message::Request(req)) => calls.push({
                if !preliminary(&req.method) {
                    session.engage();
                }
                shared
                    .router
                    .handle_request(inbound_of(session, req, None), None, None)
            }),
            Ok(other) => deliver(shared, session, other).await,
            Err(e) => answers.push(e.to_response_bytes()),
        }
    }
    answers.extend(
        futures_util::future::join_all(calls)
            .await
            .into_iter()
            .map(|a| a.bytes),
    );
    if answers.is_empty() {
        return reply::status(StatusCode::ACCEPTED);
    }
    let mut out = Vec::with_capacity(answers.iter().map(|a| a.len() + 1).sum::<usize>() + 2);
    out.push(b'[');
    for (i, a) in answers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(a);
    }
    out.push(b']');
    reply::json(StatusCode::OK, Bytes::from(out))
}

fn get(shared: &Arc<Shared>, headers: &HeaderMap, identity: &Identity) -> Reply {
    if !accept(headers).sse {
        return bad(
            StatusCode::NOT_ACCEPTABLE,
            "GET opens an SSE stream: Accept must include text/event-stream",
        );
    }
    let session = match session_of(shared, headers, identity) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    if let Err(r) = check_protocol_header(headers) {
        return *r;
    }
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_owned());
    let (stream, after, priming) = match last {
        Some(id) => {
            let Some((number, seq)) = parse_event_id(&id) else {
                return bad(
                    StatusCode::BAD_REQUEST,
                    &format!("Last-Event-ID `{id}` was not issued by this gateway"),
                );
            };
            let Some(stream) = session.stream(number) else {
                return reply::rpc_error(
                    StatusCode::NOT_FOUND,
                    None,
                    ErrorCode::INVALID_REQUEST,
                    &format!("stream of event `{id}` is no longer resumable"),
                );
            };
            (stream, Some(seq), false)
        }
        None => (
            session.standalone.clone(),
            None,
            protocol::wants_priming_event(session.protocol),
        ),
    };
    // A client that listens for the server's messages is using the session.
    session.engage();
    match stream.attach(after) {
        Some(reader) => reply::sse(event_stream::body(reader, priming, shared.keepalive, None)),
        None => bad(
            StatusCode::CONFLICT,
            "this stream is already open on another connection; close it first",
        ),
    }
}

async fn delete(shared: &Arc<Shared>, headers: &HeaderMap, identity: &Identity) -> Reply {
    let session = match session_of(shared, headers, identity) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    shared.sessions.remove(&session.id);
    shared.router.close_session(&session.id).await;
    tracing::info!(session = %short(&session.id), "session closed by the client");
    reply::status(StatusCode::OK)
}

/// A session id prefix for logs: enough to correlate, not enough to hijack.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(8)]
}

/// A JSON answer, with the status and `Retry-After` a refusal calls for.
pub(super) fn answer_reply(a: Answer) -> Reply {
    match a.refusal {
        None => reply::json(StatusCode::OK, a.bytes),
        Some(Refusal::Forbidden) => reply::json(StatusCode::FORBIDDEN, a.bytes),
        Some(Refusal::RateLimited { retry_after_secs }) => {
            let mut r = reply::json(StatusCode::TOO_MANY_REQUESTS, a.bytes);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            r
        }
    }
}

/// Runs one request in its own task and appends its related messages and its answer to
/// `stream` (closing it after when `close`): a slow tool holds neither the POST nor the
/// connection, and a dropped connection does not abandon the call.
pub(super) fn answer_on(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    req: Request,
    admission: Option<Admission>,
    stream: Arc<super::event_stream::EventStream>,
    close: bool,
    headers: Option<&HeaderMap>,
) {
    let router = shared.router.clone();
    let inbound = inbound_of(session, req, headers);
    tokio::spawn(async move {
        let out = router
            .handle_request(
                inbound,
                Some(stream.clone() as Arc<dyn MessageSink>),
                admission,
            )
            .await;
        stream.push(out.bytes);
        if close {
            stream.close();
        }
    });
}

/// The router's request model of `req` on `session`; a W3C `traceparent` in the POST's headers
/// counts when the request's `_meta` names none.
fn inbound_of(
    session: &Session,
    req: Request,
    headers: Option<&HeaderMap>,
) -> crate::router::Inbound {
    let mut inbound = session.inbound(req);
    if let Some(h) = headers {
        inbound.context.trace.or_headers(h);
    }
    inbound
}
