//! Requests about a task (the tasks extension's `tasks/get`, `tasks/update`, `tasks/cancel`):
//! forwarded to the server that made the task, after the access decision a call of the tool
//! that made it would get now, so that revoking a tool also ends access to its tasks.

use std::sync::Arc;

use super::audit_trail::AuditTrail;
use super::dispatch::object_params;
use super::{Answer, Failure, MessageSink, Router};
use crate::access::{Decision, Target};
use crate::audit::Outcome;
use crate::mcp::ErrorCode;
use crate::router::Inbound;

impl Router {
    /// Audits a request whose task handle or `requestState` was refused before any access
    /// decision (see [`AuditTrail::token_refused`]).
    pub fn audit_token_refused(
        &self,
        identity: &crate::access::Identity,
        session: &str,
        method: &str,
        reason: &str,
    ) {
        self.audit
            .record_later(AuditTrail::token_refused(identity, session, method, reason));
    }

    /// Forwards `inbound` (a task request whose task id is already the server's own) to
    /// `server`, if the caller may still call `tool` there; quotas count it as a request to
    /// `server` (not to `tool`: polling a task is not calling the tool again).
    pub async fn forward_task(
        &self,
        inbound: Inbound,
        server: Arc<str>,
        tool: &str,
        related: Option<Arc<dyn MessageSink>>,
    ) -> Result<Box<serde_json::value::RawValue>, Answer> {
        let Inbound {
            identity,
            session,
            request,
            context,
        } = inbound;
        let id = request.id.clone();
        let fail = |f: Failure| f.answer(&id);
        let target = Target::Tool {
            server: &server,
            name: tool,
        };
        let refused = |outcome, reason: &str| {
            self.audit.record_later(AuditTrail::refused(
                &identity,
                &session,
                &request.method,
                &target,
                outcome,
                reason,
            ));
        };
        let permit = match self.access.decide(&identity, &target) {
            Decision::Allow(p) => p,
            Decision::Deny(d) => {
                let reason = format!("{}; the task was made by that tool", d.reason);
                refused(Outcome::Error(ErrorCode::FORBIDDEN.0), &reason);
                return Err(fail(Failure::Gateway(ErrorCode::FORBIDDEN, reason)));
            }
        };
        if let Err(l) = self.access.limits.check(&identity.client, &server, None) {
            refused(Outcome::RateLimited, &l.scope);
            return Err(fail(Failure::Limited(l)));
        }
        let params = object_params(request.params.as_deref()).map_err(fail)?;
        self.forward(
            &session,
            &identity,
            &id,
            permit,
            &request.method,
            params,
            &context,
            related,
        )
        .await
        .map_err(fail)
    }
}
