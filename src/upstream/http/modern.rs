//! The 2026-07-28 side of the HTTP transport.
//!
//! - The probe: `server/discover` POSTed at 2026-07-28 before anything else (unless the policy
//!   pins `protocol = "legacy"`). A `DiscoverResult` naming the revision, or a recognized
//!   2026-07-28 error, settles a modern server; any other answer (a 4xx without a JSON-RPC
//!   body, a method-not-found) a 2025-era one, which then gets the initialize handshake as
//!   before. A connection failure is not a verdict: the start fails and is retried.
//! - Every POST carries the request metadata headers, written from the body it carries after
//!   routing renamed the tool (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`, and the
//!   `Mcp-Param-*` of arguments the server's tool definitions mark with `x-mcp-header`, learned
//!   from its `tools/list` results). No session header: there are no sessions.
//! - The `subscriptions/listen` stream replaces the GET stream: it asks for the list changes the
//!   server's capabilities offer and for updates of the resources some client subscribed to,
//!   and is reopened when that set changes or the stream ends. What arrives on it is dispatched
//!   like any server notification, without the stream's `subscriptionId`. A server that cannot
//!   be reached to reopen it is gone: the supervisor reconnects (and probes again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use super::{dispatch_message, is_sse, Remote, SendError, SseReader};
use crate::mcp::headers::{self, ParamHeader};
use crate::mcp::{methods, Id, Message, Request as RpcRequest};
use crate::policy::ProtocolChoice;
use crate::upstream::modern::listen;
use crate::upstream::modern::probe::{self, Verdict, VERSION};
use crate::upstream::InitInfo;

/// Waits before reopening a listen stream that failed, doubling up to the maximum.
const LISTEN_RETRY_START: Duration = Duration::from_secs(1);
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(30);
/// Largest error body read for the probe's verdict.
const PROBE_BODY_BYTES: usize = 64 * 1024;

/// The arguments each of a server's tools mirrors into headers.
#[derive(Default)]
pub(super) struct Mirrors(Mutex<HashMap<String, Vec<ParamHeader>>>);

impl Mirrors {
    /// Learns the annotations of the tools in a `tools/list` result. A tool whose annotations
    /// are invalid mirrors nothing (the server will refuse its calls, and says why).
    pub(super) fn note(&self, server: &str, result: &RawValue) {
        // Most results are not tool lists with annotations: skip them without parsing.
        if !result.get().contains(headers::ANNOTATION) {
            return;
        }
        #[derive(Deserialize)]
        struct Tools {
            tools: Vec<Value>,
        }
        let Ok(list) = serde_json::from_str::<Tools>(result.get()) else {
            return;
        };
        let Ok(mut m) = self.0.lock() else { return };
        for tool in list.tools {
            let Some(name) = tool.get("name").and_then(Value::as_str) else {
                continue;
            };
            let schema = tool.get("inputSchema").cloned().unwrap_or(Value::Null);
            match headers::annotations(&schema) {
                Ok(a) if !a.is_empty() => {
                    m.insert(name.to_owned(), a);
                }
                Ok(_) => {
                    m.remove(name);
                }
                Err(e) => {
                    tracing::warn!(server, tool = name, error = %e, "tool mirrors no argument into headers");
                    m.remove(name);
                }
            }
        }
    }

    fn of(&self, tool: &str) -> Vec<ParamHeader> {
        self.0
            .lock()
            .ok()
            .and_then(|m| m.get(tool).cloned())
            .unwrap_or_default()
    }
}

/// What a listen stream's end means for the next one.
enum Ended {
    /// The server closed it (gracefully or not): open a new one.
    Closed,
    /// It failed: open a new one after a while.
    Failed(String),
    /// The server does not offer `subscriptions/listen`: stop asking.
    Unsupported(String),
    /// The server cannot be reached: it is gone (the supervisor reconnects, and probes again).
    Lost(String),
}

/// An error response's body, bounded in size and time (empty when it cannot be read).
async fn read_probe_body(resp: http::Response<hyper::body::Incoming>) -> Bytes {
    tokio::time::timeout(
        Duration::from_secs(5),
        http_body_util::Limited::new(resp.into_body(), PROBE_BODY_BYTES).collect(),
    )
    .await
    .ok()
    .and_then(Result::ok)
    .map(|c| c.to_bytes())
    .unwrap_or_default()
}

impl Remote {
    /// Settles the server's era for `choice`: its `InitInfo` when it speaks 2026-07-28, `None`
    /// when the initialize handshake is for it.
    pub(super) async fn probe(&self, choice: ProtocolChoice) -> Result<Option<InitInfo>, String> {
        if choice == ProtocolChoice::Legacy {
            return Ok(None);
        }
        match self.discover().await? {
            Verdict::Modern(info) => {
                tracing::info!(server = %self.server, "the server speaks {VERSION}");
                Ok(Some(*info))
            }
            Verdict::Refused(why) => Err(why),
            Verdict::Legacy(why) if choice == ProtocolChoice::Modern => Err(format!(
                "the server does not speak {VERSION}, which the policy requires (protocol = \"{VERSION}\"): {why}"
            )),
            Verdict::Legacy(why) => {
                tracing::info!(server = %self.server, reason = %why, "the server speaks the 2025 era; using the initialize handshake");
                Ok(None)
            }
        }
    }

    /// Reads a refused `initialize`: the reason, when the server's error says it speaks only
    /// 2026-07-28 (an UnsupportedProtocolVersionError naming no handshake revision).
    pub(super) async fn modern_only(
        &self,
        resp: http::Response<hyper::body::Incoming>,
    ) -> Option<String> {
        let body = read_probe_body(resp).await;
        let error = probe::error_in_body(&body)?;
        match probe::verdict(Err(&error)) {
            Verdict::Refused(why) => Some(format!(
                "initialize refused: {why}; this server needs protocol = \"auto\" or \"{VERSION}\" in the policy"
            )),
            _ => None,
        }
    }

    async fn discover(&self) -> Result<Verdict, String> {
        let msg = Message::Request(RpcRequest {
            id: Id::Num(0),
            method: methods::SERVER_DISCOVER.to_owned(),
            params: Some(crate::mcp::to_raw(&probe::discover_params())),
        })
        .to_bytes();
        let req = self.build_modern(&self.url, msg).await?;
        let resp = self.send(req, self.startup_timeout).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = read_probe_body(resp).await;
            return Ok(match probe::error_in_body(&body) {
                Some(error) => probe::verdict(Err(&error)),
                None => Verdict::Legacy(format!(
                    "server/discover answered HTTP {status} without a JSON-RPC error"
                )),
            });
        }
        let mut answer = None;
        let read = self
            .read_messages(resp, self.startup_timeout, None, |m| {
                if let Message::Response(r) = m {
                    if r.id == Id::Num(0) {
                        answer = Some(r.outcome.clone());
                    }
                }
            })
            .await;
        Ok(match (answer, read) {
            (Some(Ok(r)), _) => probe::verdict(Ok(r.get())),
            (Some(Err(e)), _) => probe::verdict(Err(e.get())),
            (None, Err(e)) => {
                Verdict::Legacy(format!("its answer to server/discover broke off: {e}"))
            }
            (None, Ok(())) => Verdict::Legacy("it sent no answer to server/discover".into()),
        })
    }

    /// A POST of `msg` to `to` with the request metadata headers mirrored from `msg`.
    pub(super) async fn build_modern(
        &self,
        to: &Uri,
        msg: Bytes,
    ) -> Result<Request<Full<Bytes>>, String> {
        let metadata = self.metadata_headers(&msg);
        let mut req = self.build_post(to, msg, false).await?;
        for (name, value) in metadata {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) else {
                // Every value is encoded to visible ASCII and every name is a token.
                return Err(format!("cannot write header `{name}`"));
            };
            req.headers_mut().append(name, value);
        }
        Ok(req)
    }

    fn metadata_headers(&self, msg: &[u8]) -> Vec<(String, String)> {
        let req = match Message::parse(msg) {
            Ok(Message::Request(r)) => r,
            Ok(Message::Notification(n)) => {
                return vec![
                    (headers::PROTOCOL_VERSION.into(), VERSION.into()),
                    (headers::METHOD.into(), n.method),
                ]
            }
            _ => return vec![(headers::PROTOCOL_VERSION.into(), VERSION.into())],
        };
        #[derive(Deserialize, Default)]
        struct Named {
            name: Option<String>,
            uri: Option<String>,
            arguments: Option<Value>,
        }
        let named: Named = req
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or_default();
        let name = match headers::name_param(&req.method) {
            Some("uri") => named.uri,
            Some(_) => named.name,
            None => None,
        };
        let mirrored = match (&*req.method, &name) {
            (methods::TOOLS_CALL, Some(tool)) => self.mirrors.of(tool),
            _ => Vec::new(),
        };
        headers::for_request(
            VERSION,
            &req.method,
            name.as_deref(),
            &mirrored,
            named.arguments.as_ref(),
        )
    }

    /// Keeps a `subscriptions/listen` stream open while the server lives (see the module
    /// documentation); `caps` are the server's capabilities from its discover result.
    pub(super) async fn listen_loop(self: std::sync::Arc<Self>, caps: Value) {
        let mut uris = self.conn.listening().watch();
        let mut wait = LISTEN_RETRY_START;
        let mut n = 0u64;
        let listening = self.conn.listening();
        while !self.is_dead() {
            let (filter, generation) = {
                let set = uris.borrow_and_update();
                (listen::filter(&caps, &set.uris), set.generation)
            };
            let Some(filter) = filter else {
                listening.settled(generation);
                if uris.changed().await.is_err() {
                    return;
                }
                continue;
            };
            n += 1;
            let id = Id::Str(format!("pc-listen-{n}"));
            listening.opened(id.clone(), generation);
            let msg = Message::Request(RpcRequest {
                id,
                method: methods::SUBSCRIPTIONS_LISTEN.to_owned(),
                params: Some(listen::params(filter, self.client_capabilities)),
            })
            .to_bytes();
            let ended = tokio::select! {
                e = self.listen_once(msg) => e,
                // A new set of URIs: dropping the stream ends the old subscription.
                r = uris.changed() => match r {
                    Ok(()) => continue,
                    Err(_) => return,
                },
            };
            let failed = match ended {
                Ended::Unsupported(why) => {
                    tracing::info!(server = %self.server, reason = %why, "the server offers no subscriptions/listen; list changes are not followed");
                    listening.settled(u64::MAX);
                    return;
                }
                Ended::Lost(why) => {
                    self.die(format!("lost the connection to the server: {why}"));
                    return;
                }
                Ended::Closed => {
                    wait = LISTEN_RETRY_START;
                    false
                }
                Ended::Failed(why) => {
                    tracing::warn!(server = %self.server, reason = %why, retry_in_ms = wait.as_millis() as u64, "subscriptions/listen stream failed");
                    true
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = uris.changed() => if r.is_err() { return },
            }
            if failed {
                wait = (wait * 2).min(LISTEN_RETRY_MAX);
            }
        }
    }

    async fn listen_once(&self, msg: Bytes) -> Ended {
        let req = match self.build_modern(&self.url, msg).await {
            Ok(r) => r,
            Err(e) => return Ended::Failed(e),
        };
        // The stream is long-lived: only its headers are bounded here, its events by the
        // reader's idle timeout.
        let resp = match self.send(req, self.startup_timeout).await {
            Ok(r) => r,
            Err(SendError::Token(e)) => return Ended::Failed(e),
            Err(SendError::Connection(e)) => return Ended::Lost(e),
        };
        let status = resp.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
            return Ended::Unsupported(format!("subscriptions/listen answered HTTP {status}"));
        }
        if !status.is_success() {
            return Ended::Failed(self.status_error(resp, "subscriptions/listen").await);
        }
        if !is_sse(resp.headers()) {
            // An immediate JSON answer: an error (or a closure) instead of a stream.
            let body = super::body::json(
                resp.into_body(),
                None,
                PROBE_BODY_BYTES,
                Duration::from_secs(5),
            )
            .await
            .unwrap_or_default();
            return match probe::error_in_body(&body) {
                Some(e) if e.contains("-32601") => Ended::Unsupported(e),
                Some(e) => Ended::Failed(e),
                None => Ended::Closed,
            };
        }
        let mut reader = SseReader::new(resp.into_body(), self.source.max_message_bytes);
        loop {
            let ev = match reader.next().await {
                Ok(Some(ev)) => ev,
                Ok(None) => return Ended::Closed,
                Err(e) => return Ended::Failed(e.to_string()),
            };
            if ev.event != "message" || ev.data.trim().is_empty() {
                continue;
            }
            match Message::parse(ev.data.as_bytes()) {
                // The acknowledgement and the subscription id are the connection's business.
                Ok(m @ Message::Notification(_)) => {
                    if let Err(reason) =
                        dispatch_message(&self.source, &self.conn, &self.events, m, None).await
                    {
                        self.die(reason);
                        return Ended::Closed;
                    }
                }
                // The server ended the subscription (its answer to the listen request).
                Ok(Message::Response(_)) => return Ended::Closed,
                Ok(Message::Request(_)) => {
                    tracing::warn!(server = %self.server, "ignoring a request on the subscriptions/listen stream (2026-07-28 servers send none)");
                }
                Err(e) => {
                    tracing::warn!(server = %self.server, error = %e, "ignoring a listen event that is not JSON-RPC");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn mirrors_are_learned_from_tool_lists() {
        let m = Mirrors::default();
        let list = crate::mcp::to_raw(&json!({"tools": [
            {"name": "q", "inputSchema": {"properties": {"region": {"type": "string", "x-mcp-header": "Region"}}}},
            {"name": "bad", "inputSchema": {"properties": {"n": {"type": "number", "x-mcp-header": "N"}}}}
        ]}));
        m.note("s", &list);
        assert_eq!(m.of("q")[0].header_name(), "mcp-param-region");
        assert!(m.of("bad").is_empty());
        assert!(m.of("other").is_empty());
    }
}
