//! Task handles of the tasks extension (`io.modelcontextprotocol/tasks`). A server's task id
//! reaches the client only wrapped in a token of ours (signed, bound to the client, naming the
//! server, the tool whose call made the task and that call's arguments); `tasks/get`,
//! `tasks/update` and `tasks/cancel` give the handle back, and go to that server alone, after
//! the router's access decision on that call as it would be made now: a client allowed a tool
//! under a `when` condition follows its own tasks, and loses them when the policy would no
//! longer allow the call. A handle is good for [`HANDLE_FOR`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;

use super::client_side::Call;
use super::results;
use super::seal::{Held, Seal, MAX_TASK_ARGS};
use crate::mcp::{ErrorCode, Request};
use crate::router::{Answer, Inbound, Router};

/// How long a task handle stays usable.
pub const HANDLE_FOR: Duration = Duration::from_secs(24 * 3600);

/// The call that made a task: what requests about the task are decided on.
pub struct Origin {
    pub server: String,
    pub tool: String,
    /// The call's `arguments`, when it had some and they fit in a handle.
    pub args: Option<Value>,
    /// It had arguments too large to keep ([`MAX_TASK_ARGS`]).
    pub args_dropped: bool,
}

impl Origin {
    /// The origin of a `tools/call` of `tool` on `server` with `params`.
    pub fn of_call(server: &str, tool: &str, params: &serde_json::Map<String, Value>) -> Origin {
        let args = params.get("arguments");
        let fits = args.is_some_and(|a| {
            serde_json::to_string(a).is_ok_and(|text| text.len() <= MAX_TASK_ARGS)
        });
        Origin {
            server: server.to_owned(),
            tool: tool.to_owned(),
            args: args.filter(|_| fits).cloned(),
            args_dropped: args.is_some() && !fits,
        }
    }

    /// What the router decides a request about the task on.
    pub fn decided_on(&self) -> crate::router::TaskCall<'_> {
        crate::router::TaskCall {
            server: Arc::from(self.server.as_str()),
            tool: &self.tool,
            args: self.args.as_ref(),
            args_dropped: self.args_dropped,
        }
    }

    /// The handle of server task `task` made by this call, for `client`.
    pub fn handle(self, seal: &Seal, client: &str, task: String, legacy: bool) -> String {
        let held = Held::Task {
            server: self.server,
            tool: self.tool,
            task,
            legacy,
            args: self.args,
            args_dropped: self.args_dropped,
        };
        seal.make(held, client, "", "", HANDLE_FOR)
    }
}

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
            args,
            args_dropped,
        } = claims.held
        else {
            return Err(invalid(
                "taskId is not a task handle of this gateway".into(),
            ));
        };
        let origin = Origin {
            server,
            tool,
            args,
            args_dropped,
        };
        if legacy {
            return super::legacy_tasks::serve(&self.router, &call, &origin, &task, &handle).await;
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
            .forward_task(inbound, &origin.decided_on(), None)
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
