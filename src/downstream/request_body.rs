//! Reading a client's POST body, the same way for every transport (Streamable HTTP, legacy SSE
//! messages, fleet hops): at most `gateway.max_body_bytes`, refused from the declared
//! `Content-Length` before a byte is read when that is already over, cut off when the bytes
//! themselves go over, and within the body timeout, so that a slow or endless body holds no
//! task for long. Every refusal is a JSON-RPC error with the matching HTTP status.

use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt;

use super::reply::{self, Reply};
use super::{RequestBody, Shared};
use crate::mcp::ErrorCode;

fn bad(status: StatusCode, message: &str) -> Reply {
    reply::rpc_error(status, None, ErrorCode::INVALID_REQUEST, message)
}

/// The whole body, or the reply that refuses it.
pub(super) async fn read<B: RequestBody>(
    shared: &Shared,
    headers: &HeaderMap,
    body: B,
) -> Result<Bytes, Box<Reply>> {
    let limit = shared.max_body_bytes;
    let too_big = || {
        reply::rpc_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
            ErrorCode::INVALID_REQUEST,
            &format!(
                "request body over {limit} bytes (gateway.max_body_bytes, at most gateway.max_message_bytes)"
            ),
        )
    };
    if headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > limit)
    {
        return Err(Box::new(too_big()));
    }
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(shared.body_timeout, limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(Box::new(too_big()))
        }
        Ok(Err(e)) => Err(Box::new(bad(
            StatusCode::BAD_REQUEST,
            &format!("could not read the request body: {e}"),
        ))),
        Err(_) => Err(Box::new(bad(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        ))),
    }
}
