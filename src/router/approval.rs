//! Asking a person before a call that a `confirm` rule names: an `elicitation/create` request
//! from the gateway to the calling session, with a summary of the call.
//!
//! The question goes where a server's own elicitation would: on the request's stream (or the
//! session's). For a 2026-07-28 client that session is the MRTR bridge's, which turns the
//! question into an input-required result and the client's retry into the answer, so the
//! router neither knows nor asks which era the client speaks.
//!
//! Only an explicit `accept` forwards the call. A decline, a cancel, an error answer, no
//! answer within the rule's timeout, and a client that did not declare the elicitation
//! capability all refuse it with the reason. Every question is audited with its answer, who
//! was asked and how long it took (`approval` records).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::audit_trail::session_tag;
use super::{Failure, MessageSink, Router};
use crate::access::{Confirm, Identity, Permit};
use crate::audit::{AuditEvent, Kind, Outcome};
use crate::mcp::{methods, ErrorCode, Id, Message, Request, Response};

/// The id prefix of the gateway's own questions, so that answers are told from answers to
/// servers' requests (and the bridge can say who asked).
pub const ID_PREFIX: &str = "portcullis-approval-";
/// Questions waiting at once, in all; more are refused rather than queued.
const MAX_WAITING: usize = 1024;
/// Longest rendering of the arguments in a question.
const MAX_SUMMARY: usize = 2000;

type Answer = Result<Box<RawValue>, Box<RawValue>>;
/// The session asked, and where its answer goes.
type Asked = (Arc<str>, oneshot::Sender<Answer>);

/// Questions sent and not yet answered, by request id.
#[derive(Default)]
pub(super) struct Approvals {
    waiting: Mutex<HashMap<String, Asked>>,
    next: AtomicU64,
}

impl Approvals {
    fn ask(&self, session: &Arc<str>) -> Option<(String, oneshot::Receiver<Answer>)> {
        let mut w = self.waiting.lock().ok()?;
        if w.len() >= MAX_WAITING {
            return None;
        }
        let id = format!("{ID_PREFIX}{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        w.insert(id.clone(), (session.clone(), tx));
        Some((id, rx))
    }

    /// Ends the questions asked of `session` (closed): their calls are refused.
    pub fn drop_session(&self, session: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            w.retain(|_, (s, _)| &**s != session);
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(id);
        }
    }

    /// Delivers a client's answer to the question it answers; `Err` gives the response back
    /// when it answers none of ours (from this session).
    pub fn answer(&self, session: &str, resp: Response) -> Result<(), Response> {
        let Id::Str(id) = &resp.id else {
            return Err(resp);
        };
        let Ok(mut w) = self.waiting.lock() else {
            return Err(resp);
        };
        match w.get(id.as_str()) {
            Some((s, _)) if &**s == session => {
                if let Some((_, tx)) = w.remove(id.as_str()) {
                    let _ = tx.send(resp.outcome);
                }
                Ok(())
            }
            _ => Err(resp),
        }
    }
}

/// Argument names whose values a question never shows.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "authorization",
        "credential",
        "private_key",
    ]
    .iter()
    .any(|s| n.contains(s))
}

fn redact_named(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let shown = if secret_name(k) {
                        Value::String("[REDACTED]".into())
                    } else {
                        redact_named(x)
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact_named).collect()),
        other => other.clone(),
    }
}

impl Router {
    /// Asks the calling session's person to approve the call `permit` allows; `Ok` only on an
    /// explicit accept.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn approve(
        &self,
        key: &str,
        identity: &Identity,
        permit: &Permit,
        confirm: &Confirm,
        method: &str,
        params: &Map<String, Value>,
        related: Option<&Arc<dyn MessageSink>>,
    ) -> Result<(), Failure> {
        let rule = format!("clients.{}.{}", identity.client, confirm.rule.describe());
        let what = format!("`{}__{}`", permit.server(), permit.item());
        let record = |answer: &str, outcome: Outcome, took: Option<u128>| {
            let mut ev = AuditEvent::new(Kind::Approval)
                .outcome(outcome)
                .client(identity.client.to_string())
                .session(session_tag(key))
                .server(&**permit.server())
                .method(method)
                .rule_of(Some(&confirm.rule))
                .detail(match took {
                    Some(ms) => format!("asked the caller (client `{}`) through elicitation; answer: {answer} after {ms} ms", identity.client),
                    None => format!("could not ask the caller (client `{}`): {answer}", identity.client),
                });
            ev = match permit.tool() {
                Some(t) => ev.tool(t),
                None => ev.item(permit.item()),
            };
            self.audit.record_later(ev);
        };
        let refuse = |why: String| Failure::Gateway(ErrorCode::FORBIDDEN, why);
        let session = self.sessions.get(key);
        let Some(entry) = session.filter(|e| e.info.caps.elicitation) else {
            let why = format!("{what} needs a person's approval ({rule}), asked through elicitation, and this client did not declare the elicitation capability; use a client that supports elicitation, or ask the policy's owner");
            record(
                "no elicitation capability",
                Outcome::Error(ErrorCode::FORBIDDEN.0),
                None,
            );
            return Err(refuse(why));
        };
        let Some((id, answer)) = self.approvals.ask(&entry.info.key) else {
            record(
                "too many questions waiting",
                Outcome::Error(ErrorCode::OVER_CAPACITY.0),
                None,
            );
            return Err(Failure::Gateway(
                ErrorCode::OVER_CAPACITY,
                "too many approval questions are waiting; try again later".into(),
            ));
        };
        let message = self.question_text(identity, permit, method, params, &rule);
        let request = Message::Request(Request {
            id: Id::Str(id.clone()),
            method: methods::ELICITATION_CREATE.to_owned(),
            params: Some(crate::mcp::to_raw(&json!({
                "mode": "form",
                "message": message,
                "requestedSchema": {"type": "object", "properties": {}},
            }))),
        })
        .to_bytes();
        match related {
            Some(r) => r.send(request),
            None => entry.info.sink.send(request),
        }
        let started = Instant::now();
        let answered = tokio::time::timeout(confirm.timeout, answer).await;
        let took = started.elapsed().as_millis();
        self.approvals.forget(&id);
        let (verdict, why) = match answered {
            Err(_) => (
                "no answer",
                format!("no answer within {}s", confirm.timeout.as_secs()),
            ),
            Ok(Err(_)) => ("no answer", "the session ended before an answer".to_owned()),
            Ok(Ok(Err(e))) => {
                let message = serde_json::from_str::<Value>(e.get())
                    .ok()
                    .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                (
                    "error",
                    format!("the client answered with an error: {message}"),
                )
            }
            Ok(Ok(Ok(result))) => {
                let action = serde_json::from_str::<Value>(result.get())
                    .ok()
                    .and_then(|v| v.get("action").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                match action.as_str() {
                    "accept" => {
                        record("accept", Outcome::Ok, Some(took));
                        return Ok(());
                    }
                    "decline" => ("decline", "the person declined".to_owned()),
                    "cancel" => ("cancel", "the person cancelled the question".to_owned()),
                    _ => (
                        "invalid",
                        "the answer was neither accept, decline nor cancel".to_owned(),
                    ),
                }
            }
        };
        record(verdict, Outcome::Error(ErrorCode::FORBIDDEN.0), Some(took));
        Err(refuse(format!("{what} was not approved: {why} ({rule})")))
    }

    /// What the person reads: who calls what, where, with which arguments (secrets redacted).
    fn question_text(
        &self,
        identity: &Identity,
        permit: &Permit,
        method: &str,
        params: &Map<String, Value>,
        rule: &str,
    ) -> String {
        let args = params
            .get("arguments")
            .map(redact_named)
            .map(|a| serde_json::to_string_pretty(&a).unwrap_or_default())
            .unwrap_or_else(|| "(none)".into());
        let args = self.settings().injected.redact_naming(&args).0.into_owned();
        let mut args: String = args.chars().take(MAX_SUMMARY).collect();
        if args.len() >= MAX_SUMMARY {
            args.push_str("\n[...]");
        }
        format!(
            "Approve this call?\n\nclient: {}\nserver: {}\n{method}: {}\narguments:\n{args}\n\nAsked by the gateway because of {rule}. Accept to run it; decline or cancel to refuse it.",
            identity.client,
            permit.server(),
            permit.item()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_never_show_secret_looking_arguments() {
        let args = json!({"repo": "acme/site", "api_token": "t0ps3cret", "auth": {"Password": "p", "user": "ada"}, "list": [{"secret": 1}]});
        let shown = redact_named(&args).to_string();
        for secret in ["t0ps3cret", "\"p\"", ":1"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(
            shown.contains("acme/site") && shown.contains("ada"),
            "{shown}"
        );
    }

    #[test]
    fn answers_reach_only_the_question_of_their_session() {
        let a = Approvals::default();
        let s: Arc<str> = Arc::from("s1");
        let (id, mut rx) = a.ask(&s).unwrap();
        let resp = |id: &str| Response {
            id: Id::Str(id.to_owned()),
            outcome: Ok(crate::mcp::to_raw(&json!({"action": "accept"}))),
        };
        assert!(
            a.answer("s2", resp(&id)).is_err(),
            "another session's answer"
        );
        assert!(a.answer("s1", resp("portcullis-approval-999")).is_err());
        assert!(rx.try_recv().is_err());
        assert!(a.answer("s1", resp(&id)).is_ok());
        assert!(rx.try_recv().is_ok_and(|r| r.is_ok()));
        let (_, rx) = a.ask(&s).unwrap();
        a.drop_session("s1");
        assert!(
            rx.blocking_recv().is_err(),
            "a closed session's question ends"
        );
    }
}
