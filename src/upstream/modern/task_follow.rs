//! A modern server's task (the tasks extension's `resultType: "task"`) for a caller of the 2025
//! era, which cannot follow one: the gateway follows it on the caller's behalf and answers the
//! original `tools/call` with the task's outcome, as a 2025-era server would have answered it.
//!
//! The gateway declares the extension for such callers, so that a server whose tool runs only
//! as a task serves them too. It polls `tasks/get` at the server's `pollIntervalMs` (kept
//! between [`MIN_POLL`] and [`MAX_POLL`]) until the task is terminal or the call's deadline
//! passes. A task that needs input (`input_required` with `inputRequests`) has its requests
//! relayed to the caller's session exactly as an `InputRequiredResult`'s are, and the answers
//! go back with `tasks/update`. `completed` answers with the task's `result`, `failed` with its
//! `error`, `cancelled` with an error saying so. A call that ends any other way (deadline, the
//! caller cancelled, the connection lost) sends `tasks/cancel`, so no task outlives its call
//! unseen.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::super::connection::Connection;
use super::super::{Outcome, Upstream, UpstreamError};
use super::{envelope, input, Call, MAX_ROUNDS};
use crate::mcp::error::error_object;
use crate::mcp::result::{self, Members};
use crate::mcp::{methods, ErrorCode};

/// Fastest polling, whatever the server suggests.
const MIN_POLL: Duration = Duration::from_millis(100);
/// Slowest polling, whatever the server suggests.
const MAX_POLL: Duration = Duration::from_secs(5);
/// Polling when the server suggests nothing.
const DEFAULT_POLL: Duration = Duration::from_millis(500);

/// A task a server created for a call.
pub(super) struct Created {
    pub id: String,
    pub poll: Duration,
}

/// Reads `result` as a `CreateTaskResult`; `None` for any other result.
pub(super) fn created(result: &RawValue) -> Option<Created> {
    if result::result_type(result.get()).as_deref() != Some("task") {
        return None;
    }
    let members = Members::of(result.get())?;
    let id = members.str("taskId")?;
    Some(Created {
        id,
        poll: poll_interval(&members),
    })
}

fn poll_interval(members: &Members) -> Duration {
    members
        .get("pollIntervalMs")
        .and_then(|v| v.get().parse::<u64>().ok())
        .map_or(DEFAULT_POLL, Duration::from_millis)
        .clamp(MIN_POLL, MAX_POLL)
}

/// Sends `tasks/cancel` for a task unless [`CancelOnDrop::done`] was called: the call that
/// followed it ended early.
struct CancelOnDrop {
    conn: Arc<Connection>,
    id: u64,
    params: Option<Box<RawValue>>,
}

impl CancelOnDrop {
    fn done(mut self) {
        self.params = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        let Some(params) = self.params.take() else {
            return;
        };
        let (conn, id) = (self.conn.clone(), self.id);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // The answer does not matter: the call is over either way.
                if let Ok(rx) = conn.request(id, methods::TASKS_CANCEL, Some(params)).await {
                    let _ = tokio::time::timeout(MAX_POLL, rx).await;
                }
            });
        }
    }
}

impl Upstream {
    /// Follows `task` to its end for `call` (whose caller is of the 2025 era).
    pub(super) async fn follow_task(
        &self,
        conn: &Arc<Connection>,
        call: &Call<'_>,
        task: Created,
    ) -> Result<Outcome, UpstreamError> {
        let request = |extra: Option<(&str, Value)>| {
            let mut p = Map::new();
            p.insert("taskId".into(), Value::String(task.id.clone()));
            if let Some((k, v)) = extra {
                p.insert(k.into(), v);
            }
            envelope::encode(&p, call.caller, self.client_capabilities)
        };
        let guard = CancelOnDrop {
            conn: conn.clone(),
            id: self.next_request_id(),
            params: Some(request(None)),
        };
        let mut poll = task.poll;
        let mut rounds = 0;
        loop {
            let outcome = self
                .exchange(
                    conn,
                    self.next_request_id(),
                    methods::TASKS_GET,
                    Some(request(None)),
                    call.deadline,
                    call.timeout,
                )
                .await?;
            let state = match outcome {
                Ok(state) => state,
                // The server no longer knows its task: nothing left to cancel.
                Err(error) => {
                    guard.done();
                    return Ok(Err(error));
                }
            };
            let Some(members) = Members::of(state.get()) else {
                return Ok(Err(self.malformed("its tasks/get answer is not an object")));
            };
            match members.str("status").as_deref() {
                Some("working") => {}
                Some("completed") => {
                    guard.done();
                    return Ok(match members.get("result") {
                        Some(r) => Ok(r.to_owned()),
                        None => Err(self.malformed("its completed task has no `result`")),
                    });
                }
                Some("failed") => {
                    guard.done();
                    return Ok(Err(match members.get("error") {
                        Some(e) => e.to_owned(),
                        None => self.malformed("its failed task has no `error`"),
                    }));
                }
                Some("cancelled") => {
                    guard.done();
                    return Ok(Err(error_object(
                        ErrorCode::INTERNAL_ERROR,
                        &format!(
                            "server `{}` cancelled the task that ran this `{}`",
                            self.name, call.method
                        ),
                        None,
                    )));
                }
                Some("input_required") => {
                    rounds += 1;
                    if rounds > MAX_ROUNDS {
                        return Ok(Err(error_object(
                            ErrorCode::INTERNAL_ERROR,
                            &format!(
                                "server `{}` asked for the client's input more than {MAX_ROUNDS} times in one task; the gateway cancelled it",
                                self.name
                            ),
                            None,
                        )));
                    }
                    let requests = input::requests_of(&members);
                    let answers = match self.ask_caller(call.id, requests, call.deadline).await {
                        Ok(Ok(a)) => a,
                        Ok(Err(error)) => return Ok(Err(error)),
                        Err(()) => return Err(self.timed_out(call)),
                    };
                    let update = Some(request(Some(("inputResponses", Value::Object(answers)))));
                    let outcome = self
                        .exchange(
                            conn,
                            self.next_request_id(),
                            methods::TASKS_UPDATE,
                            update,
                            call.deadline,
                            call.timeout,
                        )
                        .await?;
                    if let Err(error) = outcome {
                        return Ok(Err(error));
                    }
                    continue;
                }
                other => {
                    return Ok(Err(self.malformed(&format!(
                        "its task has status {}",
                        other.map_or_else(|| "(none)".to_owned(), |s| format!("`{s}`"))
                    ))))
                }
            }
            // The server may change its suggestion as the task goes on.
            if members.get("pollIntervalMs").is_some() {
                poll = poll_interval(&members);
            }
            if tokio::time::Instant::now() + poll >= call.deadline {
                return Err(self.timed_out(call));
            }
            tokio::time::sleep(poll).await;
        }
    }

    fn malformed(&self, what: &str) -> Box<RawValue> {
        error_object(
            ErrorCode::INTERNAL_ERROR,
            &format!("server `{}` broke the tasks extension: {what}", self.name),
            Some(&json!({ "server": &*self.name })),
        )
    }

    fn timed_out(&self, call: &Call<'_>) -> UpstreamError {
        UpstreamError::Timeout {
            server: self.name.to_string(),
            method: call.method.to_owned(),
            timeout: call.timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(v: Value) -> Box<RawValue> {
        crate::mcp::to_raw(&v)
    }

    #[test]
    fn task_results_are_read_with_a_bounded_poll_interval() {
        assert!(created(&raw(json!({"content": []}))).is_none());
        assert!(created(&raw(json!({"resultType": "task"}))).is_none());
        let t = created(&raw(
            json!({"resultType": "task", "taskId": "j1", "pollIntervalMs": 1}),
        ))
        .unwrap();
        assert_eq!((t.id.as_str(), t.poll), ("j1", MIN_POLL));
        let t = created(&raw(
            json!({"resultType": "task", "taskId": "j2", "pollIntervalMs": 3_600_000}),
        ))
        .unwrap();
        assert_eq!(t.poll, MAX_POLL);
        let t = created(&raw(json!({"resultType": "task", "taskId": "j3"}))).unwrap();
        assert_eq!(t.poll, DEFAULT_POLL);
    }
}
