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
use crate::access::rules::WAITING_APPROVALS_IN_ALL;
use crate::access::{Confirm, Identity, Permit};
use crate::audit::{AuditEvent, Kind, Outcome};
use crate::mcp::{methods, ErrorCode, Id, Message, Request, Response};

/// The id prefix of the gateway's own questions, so that answers are told from answers to
/// servers' requests (and the bridge can say who asked).
pub const ID_PREFIX: &str = "portcullis-approval-";
/// Longest rendering of the arguments in a question.
const MAX_SUMMARY: usize = 2000;

type Answer = Result<Box<RawValue>, Box<RawValue>>;

/// A question sent and not yet answered: the session asked, the client it belongs to, and
/// where its answer goes.
struct Asked {
    session: Arc<str>,
    client: Arc<str>,
    tx: oneshot::Sender<Answer>,
}

/// Why a question could not be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Full {
    /// The client has as many questions waiting as its policy allows.
    Client(usize),
    /// The gateway holds [`WAITING_APPROVALS_IN_ALL`] questions.
    Gateway,
}

#[derive(Default)]
struct Waiting {
    by_id: HashMap<String, Asked>,
    /// Questions waiting per client, so that one client's flood is stopped at its own share
    /// and cannot take the slots every other client's questions need.
    per_client: HashMap<Arc<str>, usize>,
}

impl Waiting {
    fn remove(&mut self, id: &str) -> Option<Asked> {
        let asked = self.by_id.remove(id)?;
        if let Some(n) = self.per_client.get_mut(&asked.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&asked.client);
            }
        }
        Some(asked)
    }
}

/// Questions sent and not yet answered, by request id.
#[derive(Default)]
pub(super) struct Approvals {
    waiting: Mutex<Waiting>,
    next: AtomicU64,
}

impl Approvals {
    /// Registers a question of `client` to `session`, unless the client already has
    /// `per_client` waiting or the gateway is full.
    fn ask(
        &self,
        session: &Arc<str>,
        client: &Arc<str>,
        per_client: usize,
    ) -> Result<(String, oneshot::Receiver<Answer>), Full> {
        let mut w = self.waiting.lock().map_err(|_| Full::Gateway)?;
        if w.per_client.get(client).copied().unwrap_or(0) >= per_client {
            return Err(Full::Client(per_client));
        }
        if w.by_id.len() >= WAITING_APPROVALS_IN_ALL {
            return Err(Full::Gateway);
        }
        let id = format!("{ID_PREFIX}{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        w.by_id.insert(
            id.clone(),
            Asked {
                session: session.clone(),
                client: client.clone(),
                tx,
            },
        );
        *w.per_client.entry(client.clone()).or_insert(0) += 1;
        Ok((id, rx))
    }

    /// Ends the questions asked of `session` (closed): their calls are refused.
    pub fn drop_session(&self, session: &str) {
        if let Ok(mut w) = self.waiting.lock() {
            let gone: Vec<String> = w
                .by_id
                .iter()
                .filter(|(_, a)| &*a.session == session)
                .map(|(id, _)| id.clone())
                .collect();
            for id in gone {
                w.remove(&id);
            }
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
        match w.by_id.get(id.as_str()) {
            Some(a) if &*a.session == session => {
                if let Some(a) = w.remove(id.as_str()) {
                    let _ = a.tx.send(resp.outcome);
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
        let asked = self
            .approvals
            .ask(&entry.info.key, &identity.client, confirm.max_waiting);
        let (id, answer) = match asked {
            Ok(a) => a,
            Err(Full::Client(most)) => {
                record(
                    &format!("this client already has {most} questions waiting (clients.{}.max_waiting_approvals)", identity.client),
                    Outcome::Error(ErrorCode::OVER_CAPACITY.0),
                    None,
                );
                return Err(Failure::Gateway(
                    ErrorCode::OVER_CAPACITY,
                    format!("{what} needs a person's approval ({rule}), and client `{}` already has {most} approval questions waiting, as many as its policy allows (clients.{}.max_waiting_approvals); answer or abandon those first", identity.client, identity.client),
                ));
            }
            Err(Full::Gateway) => {
                record(
                    "too many questions waiting in the gateway",
                    Outcome::Error(ErrorCode::OVER_CAPACITY.0),
                    None,
                );
                return Err(Failure::Gateway(
                    ErrorCode::OVER_CAPACITY,
                    format!("{what} needs a person's approval ({rule}), and the gateway already holds {WAITING_APPROVALS_IN_ALL} approval questions; try again later"),
                ));
            }
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
        let c: Arc<str> = Arc::from("alice");
        let (id, mut rx) = a.ask(&s, &c, 4).unwrap();
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
        let (_, rx) = a.ask(&s, &c, 4).unwrap();
        a.drop_session("s1");
        assert!(
            rx.blocking_recv().is_err(),
            "a closed session's question ends"
        );
    }

    #[test]
    fn one_client_cannot_hold_every_question_slot() {
        let a = Approvals::default();
        let (s1, s2): (Arc<str>, Arc<str>) = (Arc::from("s1"), Arc::from("s2"));
        let (mallory, ada): (Arc<str>, Arc<str>) = (Arc::from("mallory"), Arc::from("ada"));
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(a.ask(&s1, &mallory, 3).unwrap());
        }
        assert_eq!(a.ask(&s1, &mallory, 3).err(), Some(Full::Client(3)));
        assert!(a.ask(&s2, &ada, 3).is_ok(), "another client still asks");
        // An answered or ended question gives its slot back to its client.
        a.forget(&held[0].0);
        assert!(a.ask(&s1, &mallory, 3).is_ok());
        a.drop_session("s1");
        for _ in 0..3 {
            assert!(a.ask(&s1, &mallory, 3).is_ok());
        }
        // The gateway-wide bound still holds across clients.
        let mut n = 4;
        while n < WAITING_APPROVALS_IN_ALL {
            let c: Arc<str> = Arc::from(format!("c{n}"));
            a.ask(&s2, &c, 1).unwrap();
            n += 1;
        }
        let late: Arc<str> = Arc::from("late");
        assert_eq!(a.ask(&s2, &late, 1).err(), Some(Full::Gateway));
    }
}
