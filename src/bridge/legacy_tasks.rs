//! The tasks extension for a 2026-07-28 client on a 2025-11-25 server that runs tools as its
//! revision's experimental tasks (`execution.taskSupport`, `capabilities.tasks`).
//!
//! A call of such a tool from a client that declared the extension is sent task-augmented
//! (`task: {}`), and the server's `CreateTaskResult` (`{ task: {...} }`) becomes the extension's
//! (`resultType: "task"` with the task's fields), its id sealed into a handle. The handle's
//! `tasks/get` asks the server's `tasks/get`, and for a finished task its `tasks/result`, whose
//! answer becomes the task's `result` (or `error`); `tasks/cancel` is the server's. A client
//! that did not declare the extension cannot call a tool whose task support is `required`
//! (-32021). What the 2025 revision does not have is refused clearly: `tasks/update` (its
//! tasks take input on the `tasks/result` stream, which the gateway does not bridge), and a task
//! that comes to need input is cancelled and reported failed.

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::client_side::Call;
use super::tasks::Origin;
use crate::mcp::{meta, methods, ErrorCode, Request};
use crate::router::{Answer, Inbound, Router};

/// Marks a call's params as task-augmented (2025-11-25).
pub fn augment(params: &mut Map<String, Value>) {
    params.insert("task".into(), json!({}));
}

/// The error for a call that must run as a task, from a client without the extension.
pub fn needs_extension(id: &crate::mcp::Id, tool: &str) -> Answer {
    let data = json!({ "requiredCapabilities": { "extensions": { meta::TASKS_EXTENSION: {} } } });
    let message = format!(
        "tool `{tool}` runs only as a task: declare `{}` in clientCapabilities.extensions",
        meta::TASKS_EXTENSION
    );
    Answer {
        bytes: crate::mcp::error_response_with_data(
            Some(id),
            ErrorCode::MISSING_CLIENT_CAPABILITY,
            &message,
            Some(&data),
        ),
        refusal: None,
        code: Some(ErrorCode::MISSING_CLIENT_CAPABILITY.0),
    }
}

/// The server's task of a `CreateTaskResult`: its id and fields.
pub fn created(result: &RawValue) -> Option<(String, Map<String, Value>)> {
    let v: Value = serde_json::from_str(result.get()).ok()?;
    let task = v.get("task")?.as_object()?.clone();
    let id = task.get("taskId")?.as_str()?.to_owned();
    Some((id, task))
}

/// A 2025-11-25 `Task` as the extension's task object, named by `handle`.
pub fn modern_task(task: &Map<String, Value>, handle: &str) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("taskId".into(), Value::String(handle.to_owned()));
    for (from, to) in [
        ("status", "status"),
        ("statusMessage", "statusMessage"),
        ("createdAt", "createdAt"),
        ("lastUpdatedAt", "lastUpdatedAt"),
        ("ttl", "ttlMs"),
        ("pollInterval", "pollIntervalMs"),
    ] {
        if let Some(v) = task.get(from) {
            out.insert(to.into(), v.clone());
        }
    }
    if !out.contains_key("lastUpdatedAt") {
        if let Some(c) = task.get("createdAt") {
            out.insert("lastUpdatedAt".into(), c.clone());
        }
    }
    out.entry("ttlMs").or_insert(Value::Null);
    out
}

/// The extension's `CreateTaskResult` for a server's `CreateTaskResult`.
pub fn created_result(task: &Map<String, Value>, handle: &str) -> Box<RawValue> {
    let mut out = modern_task(task, handle);
    out.insert("resultType".into(), Value::String("task".into()));
    crate::mcp::to_raw(&out)
}

/// One request to the task's server.
async fn ask(
    router: &Router,
    call: &Call,
    origin: &Origin,
    method: &str,
    task: &str,
) -> Result<Box<RawValue>, Answer> {
    let inbound = Inbound {
        identity: call.identity.clone(),
        session: call.session.clone(),
        request: Request {
            id: call.id.clone(),
            method: method.to_owned(),
            params: Some(crate::mcp::to_raw(&json!({ "taskId": task }))),
        },
        context: call.context.clone(),
    };
    router
        .forward_task(inbound, &origin.decided_on(), None)
        .await
}

/// The error object of an error response.
fn error_of(answer: &Answer) -> Value {
    serde_json::from_slice::<Value>(&answer.bytes)
        .ok()
        .and_then(|v| v.get("error").cloned())
        .unwrap_or_else(|| json!({"code": ErrorCode::INTERNAL_ERROR.0, "message": "the server's answer was unreadable"}))
}

/// Serves `tasks/get`, `tasks/update` or `tasks/cancel` for a 2025-11-25 task.
pub async fn serve(
    router: &Router,
    call: &Call,
    origin: &Origin,
    task: &str,
    handle: &str,
) -> Result<Box<RawValue>, Answer> {
    match call.method.as_str() {
        methods::TASKS_CANCEL => {
            ask(router, call, origin, methods::TASKS_CANCEL, task).await?;
            Ok(crate::mcp::to_raw(&json!({})))
        }
        methods::TASKS_GET => {
            let state = ask(router, call, origin, methods::TASKS_GET, task).await?;
            let state: Map<String, Value> = serde_json::from_str(state.get()).unwrap_or_default();
            let mut out = modern_task(&state, handle);
            match state.get("status").and_then(Value::as_str) {
                Some("completed") => {
                    match ask(router, call, origin, methods::TASKS_RESULT, task).await {
                        Ok(r) => {
                            let r: Value = serde_json::from_str(r.get()).unwrap_or(Value::Null);
                            out.insert("result".into(), r);
                        }
                        Err(a) => {
                            out.insert("status".into(), json!("failed"));
                            out.insert("error".into(), error_of(&a));
                        }
                    }
                }
                Some("failed") => {
                    let error = match ask(router, call, origin, methods::TASKS_RESULT, task).await {
                        Err(a) => error_of(&a),
                        Ok(_) => {
                            json!({"code": ErrorCode::INTERNAL_ERROR.0, "message": "the task failed"})
                        }
                    };
                    out.insert("error".into(), error);
                }
                Some("input_required") => {
                    let _ = ask(router, call, origin, methods::TASKS_CANCEL, task).await;
                    out.insert("status".into(), json!("failed"));
                    out.insert(
                        "error".into(),
                        json!({
                            "code": ErrorCode::INTERNAL_ERROR.0,
                            "message": "the task's server (2025-11-25) asked for input on its tasks/result stream, which the gateway does not bridge; the task was cancelled"
                        }),
                    );
                }
                _ => {}
            }
            Ok(crate::mcp::to_raw(&out))
        }
        _ => Err(Answer::error(
            Some(&call.id),
            ErrorCode::INVALID_PARAMS,
            "this task runs on a 2025-era server, which takes no input through tasks/update",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_2025_task_becomes_the_extensions() {
        let raw = crate::mcp::to_raw(&json!({"task": {
            "taskId": "t-1", "status": "working", "createdAt": "2026-01-01T00:00:00Z",
            "ttl": 60000, "pollInterval": 500
        }}));
        let (id, task) = created(&raw).unwrap();
        assert_eq!(id, "t-1");
        let out: Value = serde_json::from_str(created_result(&task, "H").get()).unwrap();
        assert_eq!(
            out,
            json!({"taskId": "H", "status": "working", "createdAt": "2026-01-01T00:00:00Z",
                   "lastUpdatedAt": "2026-01-01T00:00:00Z", "ttlMs": 60000, "pollIntervalMs": 500,
                   "resultType": "task"})
        );
        assert!(created(&crate::mcp::to_raw(&json!({"content": []}))).is_none());
    }
}
