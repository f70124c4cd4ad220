//! Opening a session for a client, on either transport: its session quota and creation rate,
//! eviction of an idle session when the gateway is full, and the refusal a client sees
//! otherwise (named client, named limit, the policy key to change), audited once per burst.

use std::sync::Arc;

use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use super::refusal_bursts::{Cause, Ended};
use super::reply::{self, Reply};
use super::session::{quota_source, Created, Refused, Session};
use super::streamable::short;
use super::Shared;
use crate::access::{Identity, SessionLimit};
use crate::audit::Outcome;
use crate::mcp::{methods, ErrorCode, Id};
use crate::router::audit_trail::AuditTrail;

/// Creates a session for `identity`, or says why not.
pub(super) fn open(
    shared: &Arc<Shared>,
    protocol: &'static str,
    identity: Identity,
) -> Result<Arc<Session>, Refused> {
    let quotas = &shared.access.limits;
    let limit = quotas.session_limit(&identity.client);
    let client = identity.client.clone();
    match shared.sessions.create(protocol, identity, limit, || {
        quotas.check_session_rate(&client)
    }) {
        Ok(Created { session, evicted }) => {
            if let Some(old) = evicted {
                tracing::info!(
                    session = %short(&old.id),
                    client = %old.identity.client,
                    for_client = %client,
                    "idle session evicted: the gateway is at max_sessions and another client opened one"
                );
                crate::metrics::global().session_expired("evicted");
                let router = shared.router.clone();
                tokio::spawn(async move { router.close_session(&old.id).await });
            }
            Ok(session)
        }
        Err(refused) => {
            note_refusal(shared, &client, &refused);
            Err(refused)
        }
    }
}

fn cause_of(r: &Refused) -> Cause {
    match r {
        Refused::GatewayFull(_) => Cause::GatewayFull,
        Refused::ClientLimit { .. } => Cause::ClientLimit,
        Refused::Rate(_) => Cause::Rate,
    }
}

fn outcome_of(cause: Cause) -> Outcome {
    match cause {
        Cause::Rate => Outcome::RateLimited,
        Cause::ClientLimit | Cause::GatewayFull | Cause::ListenLimit => {
            Outcome::Error(ErrorCode::OVER_CAPACITY.0)
        }
    }
}

/// Counts a refusal; the first of a burst is logged and audited at once.
fn note_refusal(shared: &Shared, client: &Arc<str>, refused: &Refused) {
    let cause = cause_of(refused);
    crate::metrics::global().refusal(cause.metric());
    if shared.session_refusals.note(client, cause) {
        tracing::warn!(%client, reason = %refused, "session refused (further refusals of this burst are counted, not logged)");
        shared.audit.record_later(AuditTrail::session_refused(
            client,
            outcome_of(cause),
            &format!("session refused: {refused}"),
        ));
    }
}

/// The audit record summing up a burst of refusals that ended, when it had more than one.
pub(super) fn burst_summary(e: &Ended) -> Option<crate::audit::AuditEvent> {
    (e.refused > 1).then(|| {
        let event = AuditTrail::session_refused(
            &e.client,
            outcome_of(e.cause),
            &format!(
                "{} {} of client `{}` refused over {:.1}s by {} (the first is recorded on its own)",
                e.refused,
                e.cause.what(),
                e.client,
                e.lasted.as_secs_f64(),
                e.cause.describe()
            ),
        );
        match e.cause {
            Cause::ListenLimit => event.method(methods::SUBSCRIPTIONS_LISTEN),
            _ => event,
        }
    })
}

/// Refuses a `subscriptions/listen` stream of `client`, which holds `limit.max` of them: a
/// long-lived stream is held like a session, so a 2026-07-28 client gets as many as its
/// session quota (counted apart from its sessions), and the same 429 / -32012 refusal,
/// counted and audited once per burst.
pub(super) fn listen_refused(
    shared: &Shared,
    client: &Arc<str>,
    limit: SessionLimit,
    id: &Id,
) -> Reply {
    let message = format!(
        "client `{client}` already has {} open subscriptions/listen streams, its limit ({}); close streams it no longer reads before opening more",
        limit.max,
        quota_source(client, limit)
    );
    crate::metrics::global().refusal(Cause::ListenLimit.metric());
    if shared.session_refusals.note(client, Cause::ListenLimit) {
        tracing::warn!(%client, reason = %message, "listen stream refused (further refusals of this burst are counted, not logged)");
        shared.audit.record_later(
            AuditTrail::session_refused(
                client,
                outcome_of(Cause::ListenLimit),
                &format!("listen stream refused: {message}"),
            )
            .method(methods::SUBSCRIPTIONS_LISTEN),
        );
    }
    let data = json!({ "client": &**client, "maxStreams": limit.max });
    reply::json(
        StatusCode::TOO_MANY_REQUESTS,
        crate::mcp::error_response_with_data(
            Some(id),
            ErrorCode::OVER_CAPACITY,
            &message,
            Some(&data),
        ),
    )
}

/// The HTTP answer to a refused session: 429 for the client's own quota or rate (with
/// `Retry-After` for the rate), 503 when the whole gateway is full.
pub(super) fn refusal_reply(r: &Refused, id: Option<&Id>) -> Reply {
    let message = r.to_string();
    match r {
        Refused::GatewayFull(_) => reply::rpc_error(
            StatusCode::SERVICE_UNAVAILABLE,
            id,
            ErrorCode::OVER_CAPACITY,
            &message,
        ),
        Refused::ClientLimit { client, limit } => {
            let data = json!({ "client": &**client, "maxSessions": limit.max });
            reply::json(
                StatusCode::TOO_MANY_REQUESTS,
                crate::mcp::error_response_with_data(
                    id,
                    ErrorCode::OVER_CAPACITY,
                    &message,
                    Some(&data),
                ),
            )
        }
        Refused::Rate(l) => {
            let secs = l.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let data = json!({ "retryAfterSeconds": secs, "scope": l.scope });
            let mut out = reply::json(
                StatusCode::TOO_MANY_REQUESTS,
                crate::mcp::error_response_with_data(
                    id,
                    ErrorCode::RATE_LIMITED,
                    &message,
                    Some(&data),
                ),
            );
            out.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            out
        }
    }
}
