//! Both ends of the hop between replicas (see `crate::fleet::hop`): forwarding a request whose
//! `requestState` or task handle names another replica's state to that replica, and taking such
//! a request on [`hop::PATH`].
//!
//! The forwarding replica decides nothing about the request: it checks only that the token is
//! genuine, unexpired and the client's own (so it never relays a forgery or someone else's
//! handle), and audits nothing, because the owner handles the request as if the client had sent
//! it there (authentication, the access decision, quotas, audit): one decision, one record.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

use super::reply::{self, Reply};
use super::{RequestBody, Shared};
use crate::access::Identity;
use crate::fleet::connector::HopConnector;
use crate::fleet::hop::{self, Hop, Signed};
use crate::mcp::{ErrorCode, Message};

/// Time to connect to the owner: it is on the fleet's own network, or gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a forwarded request may take, its answer relayed to the end: a held call's retry or
/// a task poll.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(300);

/// The client of hops, one per listener.
pub(super) type HopClient = Client<HopConnector, Full<Bytes>>;

/// The hop client of a listener: TLS to `https://` replicas trusting `[gateway] fleet_ca`. A
/// CA file that cannot be used is an error, so the listener does not start half able to reach
/// its fleet.
pub(super) fn client(
    gateway: &crate::policy::Gateway,
) -> Result<HopClient, crate::fleet::connector::HopConnectError> {
    let c = HopConnector::new(gateway.fleet_ca.as_deref(), CONNECT_TIMEOUT)?;
    Ok(Client::builder(TokioExecutor::new()).build(c))
}

/// A hop client for what never forwards (the admin listener, in-process handling): https hops
/// fail there rather than go in clear.
pub(super) fn plain_client() -> HopClient {
    Client::builder(TokioExecutor::new()).build(HopConnector::plain_only(CONNECT_TIMEOUT))
}

/// An error with its causes: hyper's client reports only "client error (Connect)" at the top,
/// and the cause (an untrusted certificate, a refused connection) is what the operator needs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The hop signer when this gateway is a named replica with a fleet key.
pub(super) fn hop_of(seal: &crate::bridge::Seal) -> Option<Arc<Hop>> {
    Some(Arc::new(Hop::new(seal.hop_key()?, seal.replica()?)))
}

/// The token a request carries that may name held state: a retry's `requestState` or a task
/// handle.
fn token_of(parsed: &crate::mcp::Body) -> Option<&str> {
    let crate::mcp::Body::Single(Message::Request(req)) = parsed else {
        return None;
    };
    let params: &serde_json::value::RawValue = req.params.as_deref()?;
    // Only the two members are read; the request itself is forwarded byte for byte.
    #[derive(serde::Deserialize)]
    struct Carried<'a> {
        #[serde(borrow, rename = "requestState")]
        request_state: Option<&'a str>,
        #[serde(borrow, rename = "taskId")]
        task_id: Option<&'a str>,
    }
    let c: Carried<'_> = serde_json::from_str(params.get()).ok()?;
    c.request_state.or(c.task_id)
}

/// The owner's answer when `parsed` carries a token naming state held by another replica and
/// this replica can forward it there; `None` to handle the request here.
pub(super) async fn forward_if_elsewhere(
    shared: &Shared,
    headers: &HeaderMap,
    bytes: &Bytes,
    parsed: &crate::mcp::Body,
    identity: &Identity,
) -> Option<Reply> {
    let hop = shared.hop.as_ref()?;
    // A request that already came over a hop is handled where it landed: never a second hop
    // (a loop between replicas that disagree about names).
    if headers.contains_key(hop::HEADER) {
        return None;
    }
    let token = token_of(parsed)?;
    let claims = shared.seal.owner_elsewhere(token, &identity.client)?;
    let (owner, url) = (claims.r?, claims.u?);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let signature = hop.sign(&Signed {
        to: &owner,
        path: hop::PATH,
        body: bytes,
        authorization,
    });
    Some(match send(shared, headers, bytes, &url, &signature).await {
        Ok(r) => {
            tracing::info!(client = %identity.client, %owner, status = r.status().as_u16(), "request forwarded to the replica that holds its state");
            r
        }
        Err(why) => {
            tracing::warn!(client = %identity.client, %owner, %url, %why, "forwarding to the owning replica failed");
            crate::metrics::global().refusal("fleet_hop_failed");
            reply::rpc_error(
                StatusCode::BAD_GATEWAY,
                None,
                ErrorCode::INTERNAL_ERROR,
                &format!("the state this request carries is held by replica `{owner}`, which could not be reached ({why}); send the request again without requestState and inputResponses, or start the task again"),
            )
        }
    })
}

/// Headers the owner needs to handle the request as the client sent it.
fn forwarded_header(name: &header::HeaderName) -> bool {
    let n = name.as_str();
    matches!(
        n,
        "authorization" | "content-type" | "accept" | "origin" | "traceparent" | "tracestate"
    ) || n.starts_with("mcp-")
}

async fn send(
    shared: &Shared,
    headers: &HeaderMap,
    bytes: &Bytes,
    url: &str,
    signature: &str,
) -> Result<Reply, String> {
    let uri: http::Uri = format!("{url}{}", hop::PATH)
        .parse()
        .map_err(|e| format!("bad replica URL: {e}"))?;
    let host = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let mut req = Request::builder().method(Method::POST).uri(uri);
    for (name, value) in headers.iter().filter(|(n, _)| forwarded_header(n)) {
        req = req.header(name, value);
    }
    let req = req
        .header(header::HOST, host)
        .header(hop::HEADER, signature)
        .body(Full::new(bytes.clone()))
        .map_err(|e| e.to_string())?;
    let limit = shared.max_body_bytes.max(1 << 20);
    let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
    let resp = tokio::time::timeout_at(deadline, shared.hop_client.request(req))
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| chain(&e))?;
    let (parts, body) = resp.into_parts();
    // Relayed as it comes, not buffered: the owner's progress notifications reach the client
    // while the call runs, and the forwarding replica holds no whole answer in memory. A cap
    // keeps a broken owner from streaming without end; the deadline bounds the whole hop.
    let relayed = Relayed {
        inner: http_body_util::Limited::new(body, limit.saturating_mul(4)),
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        done: false,
    };
    let mut r = http::Response::new(relayed.boxed());
    *r.status_mut() = parts.status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for (name, value) in parts.headers.iter() {
        // Hop-by-hop and length headers describe the hop's own message, not the answer.
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::CONTENT_LENGTH
        {
            continue;
        }
        r.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(r)
}

/// The owner's answer on its way to the client: frames pass through as they arrive. It ends
/// with the owner's body, or early (logged) when the owner's stream breaks, exceeds its cap or
/// outlives the hop's deadline; the client then sees the answer cut, never a wait without end.
struct Relayed {
    inner: http_body_util::Limited<hyper::body::Incoming>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl hyper::body::Body for Relayed {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                tracing::warn!(limit = ?FORWARD_TIMEOUT, "the owning replica's answer was cut: it outlived the hop's deadline");
                this.done = true;
                continue;
            }
            return match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::warn!(error = %e, "the owning replica's answer was cut");
                    this.done = true;
                    Poll::Ready(None)
                }
                // Trailers describe the hop's message, not the answer: dropped.
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(hyper::body::Frame::data(data)))),
                    Err(_) => continue,
                },
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// A request on [`hop::PATH`]: served as `/mcp` when another replica of the fleet signed it,
/// refused (403, never forwarded again) otherwise.
pub(super) async fn receive<B: RequestBody>(
    shared: &Arc<Shared>,
    parts: &http::request::Parts,
    body: B,
) -> Reply {
    let refuse = |why: String| {
        crate::metrics::global().refusal("fleet_hop_refused");
        reply::plain_json(
            StatusCode::FORBIDDEN,
            &json!({"error": "forbidden", "error_description": why}),
        )
    };
    let Some(hop) = shared.hop.as_ref() else {
        return refuse("this gateway is not a replica of a fleet (no [gateway] fleet_key and --replica): it takes no forwarded requests".into());
    };
    if parts.method != Method::POST {
        return refuse("forwarded requests are POSTs".into());
    }
    let signature = parts.headers.get(hop::HEADER).and_then(|v| v.to_str().ok());
    if signature.is_none() {
        // Nothing is read from a caller that is not a replica.
        tracing::warn!("request to the fleet hop endpoint without a hop signature refused");
        return refuse(hop::HopRefused::Missing.to_string());
    }
    let bytes = match super::request_body::read(shared, &parts.headers, body).await {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    let me = hop_me(shared);
    let checked = hop.verify(
        signature,
        &Signed {
            to: &me,
            path: hop::PATH,
            body: &bytes,
            authorization,
        },
    );
    let from = match checked {
        Ok(from) => from,
        Err(why) => {
            tracing::warn!(%why, "forwarded request refused");
            return refuse(why.to_string());
        }
    };
    // The owner's own decision about the original client, from its own credentials.
    let identity = match shared.access.authenticate(&parts.headers) {
        Ok(i) => i,
        Err(e) => {
            let base = super::base_url(shared, parts);
            return super::unauthenticated(shared, &e, &base);
        }
    };
    tracing::debug!(%from, client = %identity.client, "forwarded request taken");
    super::streamable::handle(
        shared,
        &Method::POST,
        &parts.headers,
        Full::new(bytes),
        identity,
    )
    .await
}

fn hop_me(shared: &Shared) -> String {
    shared.seal.replica().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_carried_token_is_found_without_parsing_the_rest() {
        let b = crate::mcp::Body::parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","requestState":"v1.a.b","arguments":{"k":[1,2]}}}"#,
        )
        .unwrap();
        assert_eq!(token_of(&b), Some("v1.a.b"));
        let b = crate::mcp::Body::parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tasks/get","params":{"taskId":"v1.t.m"}}"#,
        )
        .unwrap();
        assert_eq!(token_of(&b), Some("v1.t.m"));
        let b = crate::mcp::Body::parse(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}"#,
        )
        .unwrap();
        assert_eq!(token_of(&b), None);
    }
}
