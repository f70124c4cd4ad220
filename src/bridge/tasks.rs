//! Task handles of the tasks extension (`io.modelcontextprotocol/tasks`). A server's task id
//! reaches the client only wrapped in a token of ours (signed, bound to the client, naming the
//! server and the tool whose call made the task); `tasks/get`, `tasks/update` and
//! `tasks/cancel` give the handle back, and go to that server alone, after the router's access
//! decision for that client and tool. A handle is good for [`HANDLE_FOR`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;

use super::client_side::Call;
use super::results;
use super::seal::{Held, Seal};
use crate::mcp::{ErrorCode, Request};
use crate::router::{Answer, Inbound, Router};

/// How long a task handle stays usable.
pub const HANDLE_FOR: Duration = Duration::from_secs(24 * 3600);

pub struct Tasks {
    router: Arc<Router>,
    seal: Arc<Seal>,
}

impl Tasks {
    pub fn new(router: Arc<Router>, seal: Arc<Seal>) -> Tasks {
        Tasks { router, seal }
    }

    /// Serves `tasks/get`, `tasks/update` or `tasks/cancel`.
    pub async fn serve(&self, call: Call) -> Result<Box<RawValue>, Answer> {
        let invalid = |m: String| Answer::error(Some(&call.id), ErrorCode::INVALID_PARAMS, &m);
        let Some(handle) = call.params.get("taskId").and_then(Value::as_str) else {
            return Err(invalid("`taskId` must be a string".into()));
        };
        let handle = handle.to_owned();
        let claims = match self.seal.open(&handle, &call.identity.client, None) {
            Ok(c) => c,
            Err(why) => {
                let why = format!("taskId refused: {why}");
                self.router
                    .audit_token_refused(&call.identity, &call.session, &call.method, &why);
                return Err(invalid(why));
            }
        };
        let Held::Task {
            server,
            tool,
            task,
            legacy,
        } = claims.held
        else {
            return Err(invalid(
                "taskId is not a task handle of this gateway".into(),
            ));
        };
        if legacy {
            let server = Arc::from(server.as_str());
            return super::legacy_tasks::serve(&self.router, &call, server, &tool, &task, &handle)
                .await;
        }
        let mut params = call.params;
        params.insert("taskId".into(), Value::String(task));
        let inbound = Inbound {
            identity: call.identity,
            session: call.session,
            request: Request {
                id: call.id,
                method: call.method,
                params: Some(crate::mcp::to_raw(&params)),
            },
            context: call.context,
        };
        let result = self
            .router
            .forward_task(inbound, Arc::from(server.as_str()), &tool, None)
            .await?;
        // A task object names its task: the client must see its handle there, not the id.
        let names_task = crate::mcp::result::Members::of(result.get())
            .is_some_and(|m| m.get("taskId").is_some());
        Ok(if names_task {
            results::with_field(&result, "taskId", &handle).unwrap_or(result)
        } else {
            result
        })
    }
}
