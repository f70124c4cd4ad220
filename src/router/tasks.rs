//! Requests about a task (the tasks extension's `tasks/get`, `tasks/update`, `tasks/cancel`):
//! forwarded to the server that made the task, after the access decision the call that made it
//! (its tool and arguments, carried in the task's handle) would get now. Revoking a tool, or
//! changing a `when` condition so that the call would be refused, ends access to its tasks;
//! a tool allowed under a condition on its arguments keeps its tasks reachable, where deciding
//! without the arguments would refuse them (a condition never grants by failing).

use std::sync::Arc;

use serde_json::Value;

use super::audit_trail::AuditTrail;
use super::dispatch::object_params;
use super::{Answer, Failure, MessageSink, Router};
use crate::access::{Decision, Target};
use crate::audit::Outcome;
use crate::mcp::{methods, ErrorCode};
use crate::router::Inbound;

/// The call that made a task, as a request about the task is decided on.
pub struct TaskCall<'a> {
    pub server: Arc<str>,
    /// The tool (the server's own name for it).
    pub tool: &'a str,
    /// The call's arguments, when it had some and the handle carries them.
    pub args: Option<&'a Value>,
    /// The call had arguments too large for its handle: conditions on them cannot be judged.
    pub args_dropped: bool,
}

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

    /// Forwards `inbound` (a task request whose task id is already the server's own) to the
    /// server of `call`, if the caller may still make `call`; quotas count it as a request to
    /// that server (not to the tool: polling a task is not calling the tool again).
    pub async fn forward_task(
        &self,
        inbound: Inbound,
        call: &TaskCall<'_>,
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
        let server = call.server.clone();
        let target = Target::Tool {
            server: &server,
            name: call.tool,
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
        // Decided as the call itself: its method and arguments, so that conditions on them
        // judge the task as they judged the call.
        let question = crate::access::Question::new(target, methods::TOOLS_CALL, call.args);
        let permit = match self.access.decide(&identity, &question) {
            Decision::Allow(p) => p,
            Decision::Deny(d) => {
                let dropped = call.args_dropped && d.rule.as_ref().is_some_and(|r| r.by_condition);
                let reason = format!(
                    "{}; the task was made by that tool{}",
                    d.reason,
                    if dropped {
                        ", with arguments too large to keep in its handle, so a condition on them cannot be judged"
                    } else {
                        ""
                    }
                );
                self.audit.record_later(
                    AuditTrail::refused(
                        &identity,
                        &session,
                        &request.method,
                        &target,
                        Outcome::Error(ErrorCode::FORBIDDEN.0),
                        &reason,
                    )
                    .rule_of(d.rule.as_ref()),
                );
                return Err(fail(Failure::Gateway(ErrorCode::FORBIDDEN, reason)));
            }
        };
        if let Err(l) = self
            .access
            .limits
            .check(&identity.client, &server, None)
            .await
        {
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
