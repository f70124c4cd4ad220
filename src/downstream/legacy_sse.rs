//! The legacy HTTP+SSE transport (protocol 2024-11-05) for clients that predate Streamable
//! HTTP: `GET /sse` opens a session and streams `event: endpoint` (where to POST) followed by
//! every message for the client; `POST /messages?session_id=ID` carries one client message and
//! is answered `202 Accepted`, its JSON-RPC answer going out on the SSE stream.
//!
//! The session lives as long as the GET connection: the transport has no resumption, so when
//! the stream drops the session is closed. Guard, authentication (the session is bound to the
//! identity that opened it), admission (rate limits, tool rules) and the router calls are the
//! same as on `/mcp`.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::body::{Frame, SizeHint};
use serde_json::Value;

use super::event_stream::{self, SseBody};
use super::reply::{self, Reply};
use super::request_body;
use super::session::Session;
use super::streamable::short;
use super::{RequestBody, Shared};
use crate::access::Identity;
use crate::mcp::{methods, protocol, Body, ErrorCode, Message, Request};
use crate::router::{ClientCaps, MessageSink, SessionInfo};

/// The revision this transport belongs to; sessions opened here never batch or prime.
const LEGACY_PROTOCOL: &str = "2024-11-05";

fn bad(status: StatusCode, message: &str) -> Reply {
    reply::rpc_error(status, None, ErrorCode::INVALID_REQUEST, message)
}

/// `GET /sse`.
pub fn open(shared: &Arc<Shared>, identity: Identity) -> Reply {
    if let Some(r) = super::ready::refuse_new_session(shared, None) {
        return r;
    }
    let session = match super::session_open::open(shared, LEGACY_PROTOCOL, identity) {
        Ok(s) => s,
        Err(refused) => return super::session_open::refusal_reply(&refused, None),
    };
    session.initialized.store(false, Ordering::Release);
    // The transport's stream is open for the session's whole life: it is in use.
    session.engage();
    let Some(reader) = session.standalone.attach(None) else {
        return reply::status(StatusCode::INTERNAL_SERVER_ERROR);
    };
    tracing::info!(session = %short(&session.id), "legacy SSE session opened");
    let endpoint = format!(
        "event: endpoint\ndata: /messages?session_id={}\n\n",
        session.id
    );
    let body = LegacyBody {
        prefix: Some(Bytes::from(endpoint)),
        inner: event_stream::body(reader, false, shared.keepalive, None),
        _close: CloseOnDrop {
            shared: shared.clone(),
            id: session.id.clone(),
        },
    };
    reply::sse(http_body_util::BodyExt::boxed(body))
}

/// Ends the session when the client's GET goes away.
struct CloseOnDrop {
    shared: Arc<Shared>,
    id: Arc<str>,
}

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let shared = self.shared.clone();
        let id = self.id.clone();
        if shared.sessions.remove(&id).is_some() {
            tracing::info!(session = %short(&id), "legacy SSE stream closed; session ended");
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { shared.router.close_session(&id).await });
        }
    }
}

struct LegacyBody {
    prefix: Option<Bytes>,
    inner: SseBody,
    _close: CloseOnDrop,
}

impl hyper::body::Body for LegacyBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

fn session_id(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("session_id="))
}

/// `POST /messages?session_id=ID`.
pub async fn message<B: RequestBody>(
    shared: &Arc<Shared>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: B,
    identity: Identity,
) -> Reply {
    let Some(id) = session_id(query) else {
        return bad(
            StatusCode::BAD_REQUEST,
            "missing session_id: use the endpoint the `endpoint` event of GET /sse named",
        );
    };
    // Another identity's session is reported as unknown, exactly like on /mcp.
    let session = match shared.sessions.get(id) {
        Some(s) if s.identity == identity && s.protocol == LEGACY_PROTOCOL => s,
        _ => {
            return bad(
                StatusCode::NOT_FOUND,
                "unknown or expired session: open a new one with GET /sse",
            )
        }
    };
    session.touch();
    let bytes = match request_body::read(shared, headers, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let parsed = match Body::parse(&bytes) {
        Ok(b) => b,
        Err(e) => return reply::json(StatusCode::BAD_REQUEST, e.to_response_bytes()),
    };
    let messages: Vec<Message> = match parsed {
        Body::Single(m) => vec![m],
        Body::Batch(items) => {
            let mut out = Vec::new();
            for item in items {
                match item {
                    Ok(m) => out.push(m),
                    Err(e) => session.standalone.push(e.to_response_bytes()),
                }
            }
            out
        }
    };
    for m in messages {
        handle(shared, &session, m).await;
    }
    reply::status(StatusCode::ACCEPTED)
}

async fn handle(shared: &Arc<Shared>, session: &Arc<Session>, message: Message) {
    let out = &session.standalone;
    match message {
        Message::Request(req) if req.method == methods::INITIALIZE => {
            initialize(shared, session, &req);
        }
        Message::Request(req) => {
            if !session.initialized.load(Ordering::Acquire) {
                out.push(crate::mcp::error_response_bytes(
                    Some(&req.id),
                    ErrorCode::INVALID_REQUEST,
                    "send initialize first",
                ));
                return;
            }
            let admission = match shared
                .router
                .admit(&session.id, &session.identity, &req)
                .await
            {
                Ok(a) => a,
                Err(refused) => {
                    out.push(refused.bytes);
                    return;
                }
            };
            // Answered on the stream, so the call runs on its own: a slow tool must not hold
            // the POST (or the next message) up.
            super::streamable::answer_on(shared, session, req, admission, out.clone(), false, None);
        }
        Message::Notification(n) => {
            if session.initialized.load(Ordering::Acquire) {
                shared.router.handle_notification(&session.id, n).await;
            }
        }
        Message::Response(r) => {
            if session.initialized.load(Ordering::Acquire) {
                shared.router.handle_response(&session.id, r).await;
            }
        }
    }
}

fn initialize(shared: &Arc<Shared>, session: &Arc<Session>, req: &Request) {
    let params: Value = req
        .params
        .as_deref()
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .unwrap_or(Value::Null);
    let Some(requested) = params.get("protocolVersion").and_then(Value::as_str) else {
        session.standalone.push(crate::mcp::error_response_bytes(
            Some(&req.id),
            ErrorCode::INVALID_PARAMS,
            "initialize needs params.protocolVersion",
        ));
        return;
    };
    if session.initialized.swap(true, Ordering::AcqRel) {
        session.standalone.push(crate::mcp::error_response_bytes(
            Some(&req.id),
            ErrorCode::INVALID_REQUEST,
            "this session is already initialized",
        ));
        return;
    }
    let negotiated = protocol::negotiate(requested);
    let caps = ClientCaps::from_initialize(&params);
    session.set_caps(caps);
    shared.router.open_session(SessionInfo {
        key: session.id.clone(),
        client: session.identity.client.clone(),
        caps,
        log: crate::mcp::LogLevel::Unset,
        sink: session.standalone.clone() as Arc<dyn MessageSink>,
    });
    tracing::info!(session = %short(&session.id), protocol = negotiated, "legacy SSE session initialized");
    let result = shared.router.initialize_result(negotiated);
    session.standalone.push(
        Message::Response(crate::mcp::Response {
            id: req.id.clone(),
            outcome: Ok(result),
        })
        .to_bytes(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_session_id() {
        assert_eq!(session_id(Some("session_id=abc")), Some("abc"));
        assert_eq!(session_id(Some("x=1&session_id=abc")), Some("abc"));
        assert_eq!(session_id(Some("x=1")), None);
        assert_eq!(session_id(None), None);
    }
}
