//! `runtime = "openapi"`: a REST API served as an MCP server made inside the gateway.
//!
//! It plugs into the same [`Connection`] as the other transports: the connection's outbox is
//! drained here and answers go through the same `dispatch`, so the router cannot tell this
//! server from any other. `tools/list` answers from the tools the policy's document made
//! (`crate::openapi`); each `tools/call` becomes one HTTP request ([`call`]) made with the
//! guarantees of a remote server: the server's egress rules checked on every connection,
//! configured headers and OAuth tokens that never reach a log, a size cap and a time limit on
//! every answer, and redirects followed only within `base_url`'s origin.
//!
//! An HTTP error, a refused connection or an oversized answer is a tool error for that call
//! (`isError`, with the status and the start of the body); the server itself never goes down,
//! so the supervisor sees an instance that runs until it is stopped.

mod call;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};

use super::connection::{dispatch_message, Connection};
use super::{InitInfo, Source, UpstreamEvent};
use crate::mcp::{methods, protocol, to_raw, ErrorCode, Id, Message, Response};
use crate::policy::{OpenApiSpec, Server};
use crate::secrets::Redactor;

/// Calls in flight at once; more wait in the connection's bounded outbox.
const MAX_IN_FLIGHT: usize = 256;
/// Upper bound of one call when the server sets no `request_timeout`: the router's own timeout
/// usually answers the client first and cancels the call; this only frees the task.
const LONG_EXCHANGE: Duration = Duration::from_secs(15 * 60);

/// One running openapi server.
pub(super) struct OpenApi {
    source: Arc<Source>,
    events: mpsc::Sender<UpstreamEvent>,
    conn: Arc<Connection>,
    calls: call::Caller,
    /// Calls in flight by request id, so that `notifications/cancelled` can stop them.
    in_flight: Mutex<HashMap<i64, tokio::task::AbortHandle>>,
    permits: Arc<Semaphore>,
    dead: watch::Sender<Option<String>>,
    drain: Mutex<Option<tokio::task::AbortHandle>>,
}

fn spec(server: &Server) -> Result<&OpenApiSpec, String> {
    match &server.runtime {
        crate::policy::Runtime::OpenApi(o) => Ok(o),
        _ => Err("not an openapi server".to_owned()),
    }
}

/// Builds the server's HTTP client and starts answering on a new connection.
pub(super) fn start(
    server: &Server,
    source: Arc<Source>,
    events: mpsc::Sender<UpstreamEvent>,
    secrets: &[(String, String)],
    redactor: Arc<Redactor>,
) -> Result<(Arc<OpenApi>, Arc<Connection>, InitInfo), String> {
    let spec = spec(server)?;
    let base: Uri = spec
        .base_url
        .parse()
        .map_err(|e| format!("invalid base_url `{}`: {e}", spec.base_url))?;
    let reach = super::http::reach(
        server,
        &spec.headers,
        spec.ca_file.as_deref(),
        spec.oauth.as_ref(),
        secrets,
        &redactor,
    )?;
    let calls = call::Caller {
        api: spec.api.clone(),
        base,
        headers: reach.headers,
        client: reach.client,
        oauth: reach.oauth,
        redactor,
        max_response: usize::try_from(spec.max_response_bytes).unwrap_or(usize::MAX),
        limit: server.request_timeout.unwrap_or(LONG_EXCHANGE),
        server: Arc::from(server.name.as_str()),
    };
    let (conn, outbox) = Connection::detached();
    let (dead, _) = watch::channel(None);
    let this = Arc::new(OpenApi {
        source,
        events,
        conn: conn.clone(),
        calls,
        in_flight: Mutex::new(HashMap::new()),
        permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        dead,
        drain: Mutex::new(None),
    });
    let task = tokio::spawn(this.clone().drain(outbox));
    if let Ok(mut d) = this.drain.lock() {
        *d = Some(task.abort_handle());
    }
    let info = InitInfo {
        instance: crate::sandbox::InstanceInfo::default(),
        protocol_version: protocol::LATEST.to_owned(),
        // Answered in-process like a 2025-era server (the gateway never probes it); the
        // router bridges 2026-07-28 clients to it as to any 2025-era server.
        era: super::Era::Legacy,
        capabilities: json!({ "tools": {} }),
        server_info: json!({ "name": spec.api.title, "version": spec.api.version }),
        instructions: None,
    };
    Ok((this, conn, info))
}

impl OpenApi {
    pub(super) fn describe(&self) -> String {
        format!("openapi {}", self.calls.origin())
    }

    pub(super) fn dead(&self) -> watch::Receiver<Option<String>> {
        self.dead.subscribe()
    }

    /// Stops answering: calls in flight end, and so does the connection.
    pub(super) fn close(&self) {
        self.dead.send_if_modified(|d| {
            if d.is_none() {
                *d = Some("stopped by the gateway".to_owned());
                true
            } else {
                false
            }
        });
        if let Some(h) = self.drain.lock().ok().and_then(|mut d| d.take()) {
            h.abort();
        }
        if let Ok(mut f) = self.in_flight.lock() {
            for (_, h) in f.drain() {
                h.abort();
            }
        }
    }

    async fn drain(self: Arc<Self>, mut outbox: mpsc::Receiver<Bytes>) {
        while let Some(bytes) = outbox.recv().await {
            match Message::parse(&bytes) {
                Ok(Message::Request(req)) => self.request(req).await,
                Ok(Message::Notification(n)) if n.method == methods::CANCELLED => {
                    self.cancel(n.params.as_deref());
                }
                // Our answers to nothing, and notifications with nothing to act on.
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "openapi server: unreadable message"),
            }
        }
    }

    async fn request(self: &Arc<Self>, req: crate::mcp::Request) {
        let outcome = match req.method.as_str() {
            methods::TOOLS_CALL => {
                // Waiting for a permit here holds the outbox: callers wait in its bounded queue.
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return;
                };
                let this = self.clone();
                let id = req.id.clone();
                // Held while the task is spawned and registered: the task unregisters itself
                // under the same lock, so it cannot do so before it is registered.
                let Ok(mut in_flight) = self.in_flight.lock() else {
                    return;
                };
                let task = tokio::spawn(async move {
                    let result = this.calls.tools_call(req.params.as_deref()).await;
                    drop(permit);
                    if let Id::Num(n) = &id {
                        if let Ok(mut f) = this.in_flight.lock() {
                            f.remove(n);
                        }
                    }
                    this.answer(id, result.map(|r| to_raw(&r))).await;
                });
                if let Id::Num(n) = &req.id {
                    in_flight.insert(*n, task.abort_handle());
                }
                return;
            }
            methods::TOOLS_LIST => {
                let tools: Vec<&Value> =
                    self.calls.api.tools.iter().map(|t| &t.definition).collect();
                Ok(to_raw(&json!({ "tools": tools })))
            }
            methods::PING => Ok(to_raw(&json!({}))),
            other => Err(crate::mcp::error::error_object(
                ErrorCode::METHOD_NOT_FOUND,
                &format!("an openapi server answers tools/list and tools/call, not `{other}`"),
                None,
            )),
        };
        self.answer(req.id, outcome).await;
    }

    async fn answer(&self, id: Id, outcome: super::Outcome) {
        let msg = Message::Response(Response { id, outcome });
        let _ = dispatch_message(&self.source, &self.conn, &self.events, msg, None).await;
    }

    fn cancel(&self, params: Option<&serde_json::value::RawValue>) {
        let id = params
            .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
            .and_then(|v| v.get("requestId").and_then(Value::as_i64));
        if let Some(id) = id {
            if let Some(h) = self.in_flight.lock().ok().and_then(|mut f| f.remove(&id)) {
                h.abort();
                // The caller has gone; its pending entry is dropped by its own guard.
                if let Ok(id) = u64::try_from(id) {
                    self.conn.fail(id, "cancelled");
                }
            }
        }
    }
}
