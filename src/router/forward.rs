//! Forwarding one client request to its server: id and progress-token remapping, timeouts,
//! and cancellation in both directions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::audit_trail::{self, AuditTrail};
use super::{Failure, MessageSink, Router};
use crate::access::{Identity, Permit};
use crate::audit::Outcome;
use crate::mcp::{methods, ErrorCode, Id, RequestContext};
use crate::upstream::{Upstream, UpstreamError};

/// A request in flight at a server, seen from the server's side.
struct Flight {
    up: Arc<Upstream>,
    session: Arc<str>,
    client_id: Id,
    related: Option<Arc<dyn MessageSink>>,
    /// Order of arrival, so that server-initiated messages go to the newest caller.
    seq: u64,
    cancel: Option<oneshot::Sender<()>>,
    progress_token: Option<String>,
}

/// A session waiting on a server, and the stream of its request if it has one.
pub(super) type Caller = (Arc<str>, Option<Arc<dyn MessageSink>>);

/// Where a progress notification carrying a gateway token goes.
#[derive(Clone)]
pub(super) struct ProgressRoute {
    pub session: Arc<str>,
    pub original: Value,
    pub related: Option<Arc<dyn MessageSink>>,
}

/// Upstream request ids are unique across the process, so they key flights alone.
#[derive(Default)]
struct Table {
    by_upstream: HashMap<u64, Flight>,
    by_client: HashMap<(Arc<str>, Id), u64>,
    progress: HashMap<String, ProgressRoute>,
    seq: u64,
}

#[derive(Default)]
pub(super) struct Flights {
    table: Mutex<Table>,
}

impl Flights {
    fn begin(&self, upstream_id: u64, mut flight: Flight, progress: Option<ProgressRoute>) {
        let Ok(mut t) = self.table.lock() else { return };
        t.seq += 1;
        flight.seq = t.seq;
        t.by_client.insert(
            (flight.session.clone(), flight.client_id.clone()),
            upstream_id,
        );
        if let (Some(token), Some(route)) = (&flight.progress_token, progress) {
            t.progress.insert(token.clone(), route);
        }
        t.by_upstream.insert(upstream_id, flight);
    }

    fn end(&self, upstream_id: u64) {
        let Ok(mut t) = self.table.lock() else { return };
        if let Some(f) = t.by_upstream.remove(&upstream_id) {
            t.by_client.remove(&(f.session, f.client_id));
            if let Some(tok) = f.progress_token {
                t.progress.remove(&tok);
            }
        }
    }

    /// Fires the local cancellation of a client's request; returns where it was sent.
    fn cancel(&self, session: &str, client_id: &Id) -> Option<(Arc<Upstream>, u64)> {
        let Ok(mut t) = self.table.lock() else {
            return None;
        };
        let key = (Arc::<str>::from(session), client_id.clone());
        let upstream_id = *t.by_client.get(&key)?;
        let f = t.by_upstream.get_mut(&upstream_id)?;
        if let Some(c) = f.cancel.take() {
            let _ = c.send(());
        }
        Some((f.up.clone(), upstream_id))
    }

    pub fn progress_route(&self, token: &str) -> Option<ProgressRoute> {
        self.table.lock().ok()?.progress.get(token).cloned()
    }

    /// The caller of request `upstream_id`, while it is in flight.
    pub fn caller_of(&self, upstream_id: u64) -> Option<Caller> {
        let t = self.table.lock().ok()?;
        t.by_upstream
            .get(&upstream_id)
            .map(|f| (f.session.clone(), f.related.clone()))
    }

    /// The newest request in flight at `instance` (of `session`, when given): whose session a
    /// server-initiated message is for, and the stream it belongs on.
    pub fn newest_at(&self, instance: u64, session: Option<&str>) -> Option<Caller> {
        let t = self.table.lock().ok()?;
        t.by_upstream
            .values()
            .filter(|f| f.up.instance() == instance)
            .filter(|f| session.is_none_or(|s| &*f.session == s))
            .max_by_key(|f| f.seq)
            .map(|f| (f.session.clone(), f.related.clone()))
    }
}

/// Ends a flight however the forwarding future finishes; when it is abandoned before the server
/// answered (client gone, timeout), tells the server to stop working on it.
struct FlightGuard<'a> {
    flights: &'a Flights,
    up: &'a Arc<Upstream>,
    upstream_id: u64,
    notify_server: bool,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.flights.end(self.upstream_id);
        if self.notify_server {
            let up = self.up.clone();
            let id = self.upstream_id;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let params = crate::mcp::to_raw(&json!({
                        "requestId": id,
                        "reason": "the client abandoned the request or it timed out at the gateway"
                    }));
                    up.notify(methods::CANCELLED, Some(params)).await;
                });
            }
        }
    }
}

impl Router {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn forward(
        &self,
        key: &str,
        identity: &Identity,
        client_id: &Id,
        permit: Permit,
        method: &str,
        mut params: Map<String, Value>,
        // What an upstream encoder needs to write the request for the server's era; servers of
        // the 2025 era get `params` as they are (trace keys included).
        context: &RequestContext,
        related: Option<Arc<dyn MessageSink>>,
    ) -> Result<Box<RawValue>, Failure> {
        let server = permit.server();
        let session: Arc<str> = self
            .sessions
            .get(key)
            .map(|e| e.info.key.clone())
            .unwrap_or_else(|| Arc::from(key));
        let lease = self.servers.acquire(server, &session).ok_or_else(|| {
            Failure::Gateway(
                ErrorCode::UPSTREAM_UNAVAILABLE,
                format!("server `{server}` is not configured"),
            )
        })?;
        let up = &lease.up;
        let _slot = self
            .access
            .limits
            .slot(server, &identity.client)
            .await
            .map_err(|b| Failure::Gateway(ErrorCode::BUSY, b.to_string()))?;
        let upstream_id = up.next_request_id();

        let mut progress = None;
        let mut progress_token = None;
        if let Some(Value::Object(meta)) = params.get_mut("_meta") {
            if let Some(original) = meta.get("progressToken").cloned() {
                let token = format!("pc-{}", self.next_token());
                meta.insert("progressToken".into(), Value::String(token.clone()));
                progress = Some(ProgressRoute {
                    session: session.clone(),
                    original,
                    related: related.clone(),
                });
                progress_token = Some(token);
            }
        }
        let (cancel_tx, cancel_rx) = oneshot::channel();
        self.flights.begin(
            upstream_id,
            Flight {
                up: up.clone(),
                session,
                client_id: client_id.clone(),
                related,
                seq: 0,
                cancel: Some(cancel_tx),
                progress_token,
            },
            progress,
        );
        let mut guard = FlightGuard {
            flights: &self.flights,
            up,
            upstream_id,
            notify_server: true,
        };
        let caller = self.with_session_level(key, context);
        let call = up.call(
            upstream_id,
            method,
            Some(crate::mcp::to_raw(&params)),
            Some(&caller),
            self.timeout_for(server),
        );
        let tool_name = permit.tool();
        let args = match (method, params.get("arguments")) {
            (methods::TOOLS_CALL, Some(a)) => a.to_string(),
            (methods::TOOLS_CALL, None) => "{}".to_owned(),
            _ => Value::Object(params.clone()).to_string(),
        };
        let mut call_record = AuditTrail::call(identity, key, &permit, method, &args);
        if let Some(info) = up.init_info() {
            call_record.container = Some(info.instance.id.clone());
            call_record.image_digest = info.instance.image_digest.clone();
        }
        // Durable before the request leaves: a call that cannot be recorded does not run.
        self.audit
            .record(call_record.clone())
            .await
            .map_err(|e| Failure::Gateway(ErrorCode::AUDIT_UNAVAILABLE, e.to_string()))?;
        let started = std::time::Instant::now();
        let limit = up.max_message_bytes();
        let mut too_large = None;
        let (result, outcome_label) = tokio::select! {
            outcome = call => {
                guard.notify_server = matches!(outcome, Err(UpstreamError::Timeout { .. }));
                // The answer goes out with the client's id around it: checked as it will leave.
                let outcome = match outcome {
                    Ok(Ok(r)) if r.get().len() + client_id_len(client_id) + ENVELOPE > limit => {
                        Err(UpstreamError::TooLarge {
                            server: server.to_string(),
                            method: method.to_owned(),
                            size: Some((r.get().len() + client_id_len(client_id) + ENVELOPE) as u64),
                            limit,
                        })
                    }
                    other => other,
                };
                match outcome {
                    Ok(Ok(result)) => (Ok(result), "ok"),
                    Ok(Err(error)) => (Err(Failure::Raw(error)), "error"),
                    Err(UpstreamError::TooLarge { server, method, size, limit }) => {
                        let (failure, seen) = too_large_failure(server, method, size, limit);
                        too_large = Some(seen);
                        (Err(failure), "too_large")
                    }
                    Err(e @ UpstreamError::Timeout { .. }) => {
                        (Err(Failure::Gateway(ErrorCode::UPSTREAM_TIMEOUT, e.to_string())), "timeout")
                    }
                    Err(e) => (Err(Failure::Gateway(ErrorCode::UPSTREAM_UNAVAILABLE, e.to_string())), "unavailable"),
                }
            }
            _ = cancel_rx => {
                // The client's own notifications/cancelled was already passed on to the server.
                guard.notify_server = false;
                (Err(Failure::Gateway(ErrorCode::REQUEST_CANCELLED, "request cancelled by the client".into())), "cancelled")
            }
        };
        let (result, report) = match result {
            Ok(r) => self.check_answer(server, r),
            Err(e) => (Err(e), Default::default()),
        };
        let latency = started.elapsed();
        crate::metrics::global().call(server, tool_name.unwrap_or(method), outcome_label, latency);
        let (outcome, bytes_out) = match (&result, too_large) {
            (_, Some(size)) => (Outcome::TooLarge, size),
            (Ok(r), None) => (Outcome::Ok, r.get().len()),
            (Err(Failure::Raw(e)), None) => (
                Outcome::Error(
                    serde_json::from_str::<Value>(e.get())
                        .ok()
                        .and_then(|v| v.get("code").and_then(Value::as_i64))
                        .unwrap_or(0),
                ),
                e.get().len(),
            ),
            (Err(Failure::Gateway(code, m)), None) => (audit_trail::outcome_of(*code), m.len()),
            (Err(Failure::Limited(_)), None) => (Outcome::RateLimited, 0),
        };
        // Durable before the response is released.
        let mut result_record = AuditTrail::result(&call_record, outcome, latency, bytes_out);
        if !report.is_empty() {
            result_record = result_record.detail(report.to_json().to_string());
        }
        if too_large.is_some() {
            result_record = result_record.detail(format!(
                "answer of {bytes_out} bytes over max_message_bytes ({limit} bytes); the caller got error {}",
                ErrorCode::MESSAGE_TOO_LARGE.0
            ));
        }
        self.audit
            .record(result_record)
            .await
            .map_err(|e| Failure::Gateway(ErrorCode::AUDIT_UNAVAILABLE, e.to_string()))?;
        result
    }

    /// `context` with the log level its session set, when the request itself says none: a
    /// 2025-era client sets it once with `logging/setLevel`, a 2026-07-28 server needs it on
    /// each request.
    fn with_session_level(&self, key: &str, context: &RequestContext) -> RequestContext {
        let mut c = context.clone();
        if c.log == crate::mcp::LogLevel::Unset {
            if let Some(e) = self.sessions.get(key) {
                c.log = e.log_level();
            }
        }
        c
    }

    pub(super) async fn cancel_from_client(&self, key: &str, params: Option<&RawValue>) {
        let Some(params) = params.and_then(|p| serde_json::from_str::<Value>(p.get()).ok()) else {
            return;
        };
        let Some(request_id) = params
            .get("requestId")
            .and_then(|v| serde_json::from_value::<Id>(v.clone()).ok())
        else {
            return;
        };
        if let Some((up, upstream_id)) = self.flights.cancel(key, &request_id) {
            let mut out = json!({ "requestId": upstream_id });
            if let Some(reason) = params.get("reason") {
                out["reason"] = reason.clone();
            }
            up.notify(methods::CANCELLED, Some(crate::mcp::to_raw(&out)))
                .await;
        }
    }
}

/// Bytes of a response around its result and id: `{"jsonrpc":"2.0","id":,"result":}`.
const ENVELOPE: usize = 32;

fn client_id_len(id: &Id) -> usize {
    match id {
        Id::Num(n) => n.to_string().len(),
        // Escaping can at most sextuple a string (`\u00XX`), plus its quotes.
        Id::Str(s) => s.len() * 6 + 2,
    }
}

/// The error a caller gets for an answer over the limit, and the size the audit records (the
/// limit itself when the transport stopped reading there).
fn too_large_failure(
    server: String,
    method: String,
    size: Option<u64>,
    limit: usize,
) -> (Failure, usize) {
    let e = UpstreamError::TooLarge {
        server: server.clone(),
        method: method.clone(),
        size,
        limit,
    };
    let data = json!({ "server": server, "method": method, "size": size, "limit": limit });
    let seen = size.map_or(limit, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let error =
        crate::mcp::error::error_object(ErrorCode::MESSAGE_TOO_LARGE, &e.to_string(), Some(&data));
    (Failure::Raw(error), seen)
}
