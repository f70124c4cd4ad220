//! What the router writes into the audit log: a `call` record before a request leaves for its
//! server and a `result` record before its response is released, both durable; `denied` records
//! for refusals; container start and stop.
//!
//! With `fail_closed` (the default) a call whose record cannot be written is refused, and a
//! response whose result record cannot be written is withheld: nothing runs unaudited.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::access::{Identity, Permit, Target};
use crate::audit::{AuditEvent, AuditLog, Kind, Outcome};
use crate::mcp::ErrorCode;

/// Session ids are credentials for their session; the log keeps a correlating digest instead.
pub fn session_tag(session: &str) -> String {
    hex::encode(&Sha256::digest(session.as_bytes())[..8])
}

#[derive(Clone, Default)]
pub struct AuditTrail {
    log: Option<Arc<AuditLog>>,
    /// The serial of the signed policy in force (0: not in signed mode); shared by every clone,
    /// so that a reload changes it for every record written after it.
    policy_serial: Arc<AtomicU64>,
}

/// The audit log refused a record that the gateway must not go without.
#[derive(Debug, thiserror::Error)]
#[error("the audit log cannot be written ({0}); calls are refused rather than run unaudited")]
pub struct Unaudited(pub String);

impl AuditTrail {
    pub fn new(log: Option<Arc<AuditLog>>) -> AuditTrail {
        AuditTrail {
            log,
            policy_serial: Arc::default(),
        }
    }

    /// Every record written from now on names this signed policy serial (`None`: unsigned).
    pub fn set_policy_serial(&self, serial: Option<u64>) {
        self.policy_serial
            .store(serial.unwrap_or(0), Ordering::Relaxed);
    }

    fn stamped(&self, mut event: AuditEvent) -> AuditEvent {
        let serial = self.policy_serial.load(Ordering::Relaxed);
        if serial != 0 && event.policy_serial.is_none() {
            event.policy_serial = Some(serial);
        }
        event
    }

    /// Writes `event` and waits until it is durable. An error is returned only when the log is
    /// fail-closed; otherwise the loss is logged and the caller goes on.
    pub async fn record(&self, event: AuditEvent) -> Result<(), Unaudited> {
        let Some(log) = &self.log else { return Ok(()) };
        match log.append(self.stamped(event)).await {
            Ok(_) => Ok(()),
            Err(e) if log.fail_closed() => Err(Unaudited(e.to_string())),
            Err(e) => {
                tracing::error!(error = %e, "audit record lost (fail_closed = false)");
                Ok(())
            }
        }
    }

    /// Writes `event` without waiting (refusals, lifecycle events).
    pub fn record_later(&self, event: AuditEvent) {
        if let Some(log) = &self.log {
            let write = log.append(self.stamped(event));
            tokio::spawn(async move {
                if let Err(e) = write.await {
                    tracing::error!(error = %e, "audit record lost");
                }
            });
        }
    }

    /// The `call` record of a permitted request: the tool (for a tool call) or the item it
    /// reaches (a prompt, URI or template), and the hash of its arguments.
    pub fn call(
        identity: &Identity,
        session: &str,
        permit: &Permit,
        method: &str,
        args: &str,
    ) -> AuditEvent {
        let ev = AuditEvent::new(Kind::Call)
            .client(identity.client.to_string())
            .session(session_tag(session))
            .server(&**permit.server())
            .method(method)
            .arguments(args)
            .bytes_in(args.len() as u64);
        match permit.tool() {
            Some(t) => ev.tool(t),
            None => ev.item(permit.item()),
        }
    }

    /// The `denied` record of a request the access decision or a quota refused: the method and
    /// the item, never the arguments.
    pub fn refused(
        identity: &Identity,
        session: &str,
        method: &str,
        target: &Target,
        outcome: Outcome,
        reason: &str,
    ) -> AuditEvent {
        let ev = AuditEvent::new(Kind::Denied)
            .outcome(outcome)
            .detail(reason)
            .client(identity.client.to_string())
            .session(session_tag(session))
            .server(target.server())
            .method(method);
        match target.tool() {
            Some(t) => ev.tool(t),
            None => ev.item(target.item()),
        }
    }

    pub fn result(
        call: &AuditEvent,
        outcome: Outcome,
        latency: Duration,
        bytes_out: usize,
    ) -> AuditEvent {
        let mut ev = AuditEvent::new(Kind::Result)
            .outcome(outcome)
            .latency_us(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX))
            .bytes_out(bytes_out as u64);
        ev.client = call.client.clone();
        ev.session = call.session.clone();
        ev.server = call.server.clone();
        ev.method = call.method.clone();
        ev.tool = call.tool.clone();
        ev.item = call.item.clone();
        ev.container = call.container.clone();
        ev.image_digest = call.image_digest.clone();
        ev.args_sha256 = call.args_sha256.clone();
        ev
    }

    /// The `denied` record of a session that `client` was not allowed to open (its quota, its
    /// creation rate, or a full gateway); `detail` says which, and how many in the burst.
    pub fn session_refused(client: &str, outcome: Outcome, detail: &str) -> AuditEvent {
        AuditEvent::new(Kind::Denied)
            .outcome(outcome)
            .detail(detail)
            .client(client)
            .method(crate::mcp::methods::INITIALIZE)
    }

    /// The `denied` record of a request that carried a token of this gateway (a task handle or a
    /// `requestState`) that was refused before any access decision: forged, altered, expired, or
    /// issued to another client. Nothing reached a server; the record shows a client probing.
    pub fn token_refused(
        identity: &Identity,
        session: &str,
        method: &str,
        reason: &str,
    ) -> AuditEvent {
        AuditEvent::new(Kind::Denied)
            .outcome(Outcome::Error(ErrorCode::INVALID_PARAMS.0))
            .detail(reason)
            .client(identity.client.to_string())
            .session(session_tag(session))
            .method(method)
    }

    /// The `denied` record of a request without valid credentials.
    pub fn unauthenticated(reason: &str) -> AuditEvent {
        AuditEvent::new(Kind::Denied)
            .outcome(Outcome::DeniedAuth)
            .detail(reason)
    }
}

/// The audit outcome of a JSON-RPC error code.
pub fn outcome_of(code: ErrorCode) -> Outcome {
    match code {
        ErrorCode::RATE_LIMITED => Outcome::RateLimited,
        _ => Outcome::Error(code.0),
    }
}
