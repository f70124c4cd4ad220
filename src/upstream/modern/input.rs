//! A modern server's `InputRequiredResult` for a caller of the 2025 era, which cannot take one:
//! each input request (`sampling/createMessage`, `elicitation/create`, `roots/list`) is handed to
//! the router as a request from the server, exactly as a 2025-era server's own would be, tagged
//! with the call it belongs to so that it reaches that call's session. The router relays it (or
//! refuses it, or answers roots from the policy); the answer comes back through
//! [`Upstream::respond`] and lands here instead of going to the server. When every request is
//! answered, the call is retried with the answers as `inputResponses` and the server's
//! `requestState`. An answer that is an error ends the call with that error: never a hang.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::super::{Handled, Outcome, Upstream, UpstreamEvent};
use crate::mcp::error::error_object;
use crate::mcp::result::{self, Members};
use crate::mcp::{methods, ErrorCode, Id, Request};

/// Input requests one round may carry.
const MAX_REQUESTS: usize = 16;

/// What an `InputRequiredResult` asks for.
pub(super) struct Asked {
    /// (key, method, params) of each input request.
    pub requests: Vec<(String, String, Option<Box<RawValue>>)>,
    pub state: Option<String>,
}

/// Reads `result` as an `InputRequiredResult`; `None` for any other result.
pub(super) fn asked(result: &RawValue) -> Option<Asked> {
    if result::result_type(result.get()).as_deref() != Some("input_required") {
        return None;
    }
    let members = Members::of(result.get())?;
    let state = members.str("requestState");
    let requests = members
        .get("inputRequests")
        .and_then(|r| serde_json::from_str::<Map<String, Value>>(r.get()).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(key, req)| {
            let method = req
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let params = req.get("params").map(crate::mcp::to_raw);
            (key, method, params)
        })
        .collect();
    Some(Asked { requests, state })
}

/// Requests made on a modern server's behalf that wait for the client's answer.
#[derive(Default)]
pub(in crate::upstream) struct Asks {
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    next: AtomicU64,
}

impl Asks {
    /// Takes the answer to one of ours; gives `outcome` back when `id` is not one of ours.
    pub(in crate::upstream) fn answer(&self, id: &Id, outcome: Outcome) -> Option<Outcome> {
        let Id::Str(key) = id else {
            return Some(outcome);
        };
        let waiter = self.waiting.lock().ok().and_then(|mut w| w.remove(key));
        match waiter {
            Some(tx) => {
                let _ = tx.send(outcome);
                None
            }
            None => Some(outcome),
        }
    }

    fn register(&self) -> (String, oneshot::Receiver<Outcome>) {
        let key = format!("pc-input-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(key.clone(), tx);
        }
        (key, rx)
    }

    fn forget(&self, keys: &[String]) {
        if let Ok(mut w) = self.waiting.lock() {
            for k in keys {
                w.remove(k);
            }
        }
    }
}

/// Forgets a round's requests however waiting for them ends (answered, timed out, abandoned).
struct Round<'a> {
    asks: &'a Asks,
    keys: Vec<String>,
}

impl Drop for Round<'_> {
    fn drop(&mut self) {
        self.asks.forget(&self.keys);
    }
}

fn refused(message: String) -> Box<RawValue> {
    error_object(ErrorCode::INVALID_REQUEST, &message, None)
}

impl Upstream {
    /// Has the router relay `requests` to the session of call `flight`, and collects the
    /// answers by key. `Ok(Err(error))`: the call ends with that error; `Err(())`: `deadline`
    /// passed.
    pub(super) async fn ask_caller(
        &self,
        flight: u64,
        requests: Vec<(String, String, Option<Box<RawValue>>)>,
        deadline: tokio::time::Instant,
    ) -> Result<Result<Map<String, Value>, Box<RawValue>>, ()> {
        if requests.is_empty() {
            return Ok(Ok(Map::new()));
        }
        if requests.len() > MAX_REQUESTS {
            return Ok(Err(refused(format!(
                "server `{}` asked for {} inputs at once; the gateway relays at most {MAX_REQUESTS}",
                self.name,
                requests.len()
            ))));
        }
        let mut round = Round {
            asks: &self.asks,
            keys: Vec::new(),
        };
        let mut waits = Vec::new();
        for (key, method, params) in requests {
            if !matches!(
                method.as_str(),
                methods::SAMPLING_CREATE_MESSAGE
                    | methods::ELICITATION_CREATE
                    | methods::ROOTS_LIST
            ) {
                return Ok(Err(refused(format!(
                    "server `{}` asked for input with `{method}`, which is not an input request (sampling/createMessage, elicitation/create or roots/list)",
                    self.name
                ))));
            }
            let (id, rx) = self.asks.register();
            round.keys.push(id.clone());
            let (handled, _done) = Handled::new();
            let ev = UpstreamEvent::Request {
                from: self.source.clone(),
                message: Request {
                    id: Id::Str(id),
                    method: method.clone(),
                    params,
                },
                handled,
                related: Some(flight),
            };
            if self.events.send(ev).await.is_err() {
                return Ok(Err(refused("the gateway is stopping".into())));
            }
            waits.push((key, method, rx));
        }
        let mut answers = Map::new();
        for (key, method, rx) in waits {
            match tokio::time::timeout_at(deadline, rx).await {
                Err(_) => return Err(()),
                Ok(Err(_)) => {
                    return Ok(Err(refused(format!(
                        "the request for `{method}` was dropped before the client answered"
                    ))))
                }
                Ok(Ok(Ok(result))) => {
                    let value = serde_json::from_str(result.get()).unwrap_or(Value::Null);
                    answers.insert(key, value);
                }
                Ok(Ok(Err(error))) => return Ok(Err(explained(&self.name, &method, &error))),
            }
        }
        Ok(Ok(answers))
    }
}

/// The client's (or the gateway's) refusal of an input request, as the call's error: the same
/// code, with a message that says which server needed what.
fn explained(server: &str, method: &str, error: &RawValue) -> Box<RawValue> {
    let v: Value = serde_json::from_str(error.get()).unwrap_or(Value::Null);
    let code = v
        .get("code")
        .and_then(Value::as_i64)
        .unwrap_or(ErrorCode::INTERNAL_ERROR.0);
    let message = v.get("message").and_then(Value::as_str).unwrap_or("");
    error_object(
        ErrorCode(code),
        &format!(
            "server `{server}` needs the client's answer to `{method}`, which failed: {message}"
        ),
        v.get("data"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_required_results_are_read_and_others_are_not() {
        let r = crate::mcp::to_raw(&json!({
            "resultType": "input_required",
            "inputRequests": {"who": {"method": "elicitation/create", "params": {"message": "?"}}},
            "requestState": "s1"
        }));
        let a = asked(&r).unwrap();
        assert_eq!(a.state.as_deref(), Some("s1"));
        assert_eq!(a.requests.len(), 1);
        assert_eq!(a.requests[0].0, "who");
        assert_eq!(a.requests[0].1, "elicitation/create");
        let plain = crate::mcp::to_raw(&json!({"resultType": "complete", "content": []}));
        assert!(asked(&plain).is_none());
        assert!(asked(&crate::mcp::to_raw(&json!({"content": []}))).is_none());
    }

    #[test]
    fn only_our_ids_are_taken() {
        let asks = Asks::default();
        let (id, mut rx) = asks.register();
        let ok = crate::mcp::to_raw(&json!({}));
        assert!(asks.answer(&Id::Str(id.clone()), Ok(ok.clone())).is_none());
        assert!(rx.try_recv().is_ok());
        // Answered once: a second answer with the same id is not ours any more.
        assert!(asks.answer(&Id::Str(id), Ok(ok.clone())).is_some());
        assert!(asks.answer(&Id::Num(3), Ok(ok)).is_some());
    }
}
