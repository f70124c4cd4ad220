//! Building HTTP responses: JSON bodies, JSON-RPC errors with the right status, SSE.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::event_stream::SseBody;
use crate::mcp::{error_response_bytes, ErrorCode, Id};

pub type Body = SseBody;
pub type Reply = Response<Body>;

pub const SESSION_HEADER: &str = "mcp-session-id";
pub const PROTOCOL_HEADER: &str = "mcp-protocol-version";

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|e: Infallible| match e {}).boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

fn with_status(status: StatusCode, body: Body) -> Reply {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r
}

pub fn json(status: StatusCode, bytes: Bytes) -> Reply {
    let mut r = with_status(status, full(bytes));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON body sent as consecutive buffers, none of them copied (hyper writes them with one
/// vectored write); its length is known, so the answer carries `Content-Length`.
pub fn json_parts<const N: usize>(status: StatusCode, parts: [Bytes; N]) -> Reply {
    let mut r = with_status(status, Parts::new(parts).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The body of [`json_parts`].
struct Parts {
    parts: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl Parts {
    fn new<const N: usize>(parts: [Bytes; N]) -> Parts {
        let remaining = parts.iter().map(|b| b.len() as u64).sum();
        Parts {
            parts: parts.into_iter().filter(|b| !b.is_empty()).collect(),
            remaining,
        }
    }
}

impl hyper::body::Body for Parts {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        let next = self.parts.pop_front();
        if let Some(b) = &next {
            self.remaining -= b.len() as u64;
        }
        std::task::Poll::Ready(next.map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.parts.is_empty()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}

/// A JSON-RPC error as the body of an HTTP error status.
pub fn rpc_error(status: StatusCode, id: Option<&Id>, code: ErrorCode, message: &str) -> Reply {
    json(status, error_response_bytes(id, code, message))
}

pub fn status(status: StatusCode) -> Reply {
    with_status(status, empty())
}

pub fn sse(body: Body) -> Reply {
    let mut r = with_status(StatusCode::OK, body);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    // Tell buffering reverse proxies (nginx) to pass events through at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

pub fn plain_json(status: StatusCode, value: &serde_json::Value) -> Reply {
    json(
        status,
        Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
    )
}
