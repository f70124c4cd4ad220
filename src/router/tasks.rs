//! Requests about a task (the tasks extension's `tasks/get`, `tasks/update`, `tasks/cancel`):
//! forwarded to the server that made the task, after the access decision a call of the tool
//! that made it would get now, so that revoking a tool also ends access to its tasks.

use std::sync::Arc;

use super::audit_trail::AuditTrail;
use super::{object_params, Answer, Failure, MessageSink, Router};
use crate::mcp::ErrorCode;
use crate::router::Inbound;

impl Router {
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
        if !self.access.rules(&identity.client).permits(&server, tool) {
            let reason = format!(
                "client `{}` may no longer call `{server}__{tool}`, whose task this is",
                identity.client
            );
            self.audit.record_later(AuditTrail::denied(
                Some(&identity),
                Some(&session),
                Some(&server),
                Some(tool),
                crate::audit::Outcome::Error(ErrorCode::FORBIDDEN.0),
                &reason,
            ));
            return Err(fail(Failure::Gateway(ErrorCode::FORBIDDEN, reason)));
        }
        if let Err(l) = self.access.limits.check(&identity.client, &server, None) {
            self.audit.record_later(AuditTrail::denied(
                Some(&identity),
                Some(&session),
                Some(&server),
                Some(tool),
                crate::audit::Outcome::RateLimited,
                &l.scope,
            ));
            return Err(fail(Failure::Limited(l)));
        }
        let params = object_params(request.params.as_deref()).map_err(fail)?;
        self.forward(
            &session,
            &identity,
            &id,
            &server,
            &request.method,
            params,
            &context,
            related,
        )
        .await
        .map_err(fail)
    }
}
