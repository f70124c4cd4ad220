//! `/ready` for a load balancer, and the drain at shutdown.

use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use super::{reply, Reply, Shared};
use crate::router::Router;

/// Longest wait at shutdown for calls in flight to be answered.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Waits (bounded) until no call is in flight, so a replica stopped by SIGTERM answers what it
/// accepted before it stops its servers.
pub(super) async fn drain(router: &Router) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let started = router.calls_in_flight();
    if started > 0 {
        tracing::info!(calls = started, "draining: waiting for calls in flight");
    }
    while router.calls_in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = router.calls_in_flight();
    if left > 0 {
        tracing::warn!(
            calls = left,
            "drain limit reached: calls still in flight are cut off"
        );
    }
}

/// Whether this replica can serve: every server up, the audit log writable, and, when quotas
/// are shared with `on_store_error = "deny"`, the quota store answering (a load balancer then
/// sends calls elsewhere rather than to a replica that would refuse them all).
pub(super) async fn ready(shared: &Shared) -> Reply {
    let servers = shared.router.readiness();
    let audit = shared.audit.failure();
    let store = match shared.access.limits.store() {
        Some(s) => {
            let up = s.reachable().await;
            let required = s.config.on_error == crate::policy::OnStoreError::Deny;
            Some((s.config.display(), up, required))
        }
        None => None,
    };
    let draining = shared.router.is_draining();
    let all_ready = !draining
        && shared.router.is_settled()
        && servers.iter().all(|(_, s)| s.is_ok())
        && audit.is_none()
        && store
            .as_ref()
            .is_none_or(|(_, up, required)| *up || !required);
    let detail: serde_json::Map<String, serde_json::Value> = servers
        .into_iter()
        .map(|(name, s)| {
            let v = match s {
                Ok(()) => json!({"ready": true}),
                Err(reason) => json!({"ready": false, "reason": reason}),
            };
            (name, v)
        })
        .collect();
    let status = if all_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"ready": all_ready, "servers": detail});
    if draining {
        body["draining"] = json!(true);
    }
    if let Some(reason) = audit {
        body["audit"] = json!({"ready": false, "reason": reason});
    }
    if let Some((addr, up, required)) = store {
        body["quota_store"] = json!({"store": addr, "reachable": up, "required": required});
    }
    if let Some(r) = crate::fleet::replica::name() {
        body["replica"] = json!(r);
    }
    reply::plain_json(status, &body)
}

/// The answer to a request that would open a session on a draining replica (SIGTERM): the
/// listening socket is closed, but a connection opened before (a load balancer's kept-alive
/// one) could still ask. 503 with `Retry-After` and `Connection: close`, like `/ready`, so the
/// load balancer or the client opens the session on another replica.
pub(super) fn refuse_new_session(shared: &Shared, id: Option<&crate::mcp::Id>) -> Option<Reply> {
    if !shared.router.is_draining() {
        return None;
    }
    crate::metrics::global().refusal("draining");
    tracing::info!("new session refused: this replica is draining");
    let mut r = reply::rpc_error(
        StatusCode::SERVICE_UNAVAILABLE,
        id,
        crate::mcp::ErrorCode::OVER_CAPACITY,
        "this gateway replica is shutting down and opens no new sessions: connect again (a load balancer sends the new connection to another replica)",
    );
    let h = r.headers_mut();
    h.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    Some(r)
}
