//! A 2026-07-28 client's call on a 2025-era server: multi round-trip requests (MRTR) made from
//! server-initiated requests.
//!
//! A 2025-era server that needs the client's input during a call (`sampling/createMessage`,
//! `elicitation/create`, `roots/list`) sends it a request and waits; a 2026-07-28 client cannot
//! receive requests. So the gateway holds the call open ("an exchange"), answers the client
//! with an `InputRequiredResult` carrying the server's request and a `requestState` token, and
//! when the client retries with that token and its `inputResponses`, answers the waiting server
//! request and goes on waiting for the call's result (or the server's next request).
//!
//! The token is made and checked by [`Seal`]: signed by this gateway, bound to the client, the
//! method and the tool (prompt, resource) of the call and to the round it answers, and valid
//! for [`PARK_FOR`]; an exchange nobody resumes in that time is cancelled at the server. The
//! policy is checked again on every retry (authorization and rate limits), as for any request.
//! A server request the client did not declare the capability for ends the call with
//! `MissingRequiredClientCapability` (and the server's request is refused), never a hang.
//!
//! A server of the 2026 era answers `InputRequiredResult` itself: its `requestState` is wrapped
//! in a token of ours and given back to that server, and only that server, on the retry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};

use super::exchange::{Event, Exchange, ExchangeSink, Progress, Waited, Waiting};
use super::legacy_tasks;
use super::results::{self, Shape};
use super::seal::{Held, Seal};
use crate::access::Identity;
use crate::mcp::error::error_object;
use crate::mcp::{methods, ClientCaps, ErrorCode, Id, Request, RequestContext, Response};
use crate::router::{Answer, Inbound, MessageSink, Router, SessionInfo};

/// How long a held call waits for the client's retry, and how long its token is good.
pub const PARK_FOR: Duration = Duration::from_secs(120);
/// Held calls per client, and in all, before new server requests are refused.
const MAX_PARKED_PER_CLIENT: usize = 32;
const MAX_PARKED: usize = 4096;
/// Server requests and the final answer queued for one exchange.
const EVENTS: usize = 64;

/// Requests that may answer `InputRequiredResult` (2026-07-28, multi round-trip requests).
const MRTR_METHODS: [&str; 3] = [
    methods::TOOLS_CALL,
    methods::PROMPTS_GET,
    methods::RESOURCES_READ,
];

/// One request of a 2026-07-28 client that reaches a server.
pub struct Call {
    pub identity: Identity,
    /// A router session key for this request alone.
    pub session: Arc<str>,
    pub id: Id,
    pub method: String,
    /// The request's params, the era's `_meta` keys already lifted into `context`.
    pub params: Map<String, Value>,
    pub context: RequestContext,
}

pub struct ClientSide {
    router: Arc<Router>,
    seal: Arc<Seal>,
    parked: Mutex<HashMap<u64, Arc<Exchange>>>,
    next: AtomicU64,
}

/// What the call's params name: the item a token is bound to.
pub fn item_of(method: &str, params: &Map<String, Value>) -> String {
    crate::mcp::headers::name_param(method)
        .and_then(|k| params.get(k))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// `params` without the keys a retry adds (and `_meta`, which carries per-request context).
fn call_params(params: &Map<String, Value>) -> Map<String, Value> {
    params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "requestState" | "inputResponses" | "_meta"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn invalid(id: &Id, message: String) -> Answer {
    Answer::error(Some(id), ErrorCode::INVALID_PARAMS, &message)
}

impl ClientSide {
    pub fn new(router: Arc<Router>, seal: Arc<Seal>) -> Arc<ClientSide> {
        Arc::new(ClientSide {
            router,
            seal,
            parked: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        })
    }

    /// Serves one call: its result, an `InputRequiredResult`, or an error response. `out`
    /// receives the messages related to it (progress, logs); `gone` resolves when the client
    /// stops listening, which cancels the call at the server.
    pub async fn serve(
        self: &Arc<Self>,
        call: Call,
        out: Arc<dyn MessageSink>,
        gone: oneshot::Receiver<()>,
    ) -> Result<Box<RawValue>, Answer> {
        let item = item_of(&call.method, &call.params);
        let token = match call.params.get("requestState") {
            None => return self.start(call, item, out, gone).await,
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err(invalid(&call.id, "`requestState` must be a string".into())),
        };
        let claims = match self.seal.open(
            &token,
            &call.identity.client,
            Some((&call.method, &item)),
        ) {
            Ok(c) => c,
            Err(why) => {
                tracing::warn!(client = %call.identity.client, method = %call.method, %why, "requestState refused");
                self.router.audit_token_refused(
                    &call.identity,
                    &call.session,
                    &call.method,
                    &format!("requestState refused: {why}"),
                );
                return Err(invalid(
                    &call.id,
                    format!("requestState refused: {why}; send the request again without requestState and inputResponses"),
                ));
            }
        };
        match claims.held {
            Held::Exchange { id, round } => self.resume(id, round, call, out, gone).await,
            Held::UpstreamState { server, state } => {
                let mut call = call;
                let owner = self.router.owner_of(&call.method, &call.params);
                if owner.as_ref().map(|(s, _)| &**s) != Some(server.as_str()) {
                    return Err(invalid(
                        &call.id,
                        format!("requestState belongs to server `{server}`, which no longer offers `{item}`; send the request again without it"),
                    ));
                }
                match state {
                    Some(s) => call.params.insert("requestState".into(), Value::String(s)),
                    None => call.params.remove("requestState"),
                };
                self.start(call, item, out, gone).await
            }
            Held::Task { .. } => Err(invalid(
                &call.id,
                "requestState holds a task handle; use it with tasks/get".into(),
            )),
        }
    }

    async fn start(
        self: &Arc<Self>,
        mut call: Call,
        item: String,
        out: Arc<dyn MessageSink>,
        gone: oneshot::Receiver<()>,
    ) -> Result<Box<RawValue>, Answer> {
        // A tool its 2025-11-25 server runs as a task is called as one when the client takes
        // tasks (and cannot be called by a client that does not, when it must).
        let task_support = (call.method == methods::TOOLS_CALL)
            .then(|| self.router.task_support(&item))
            .flatten();
        let legacy_task = match task_support {
            Some(true) if !call.context.caps.tasks => {
                return Err(legacy_tasks::needs_extension(&call.id, &item))
            }
            Some(_) if call.context.caps.tasks => {
                legacy_tasks::augment(&mut call.params);
                true
            }
            _ => false,
        };
        let (tx, rx) = mpsc::channel(EVENTS);
        let sink = Arc::new(ExchangeSink {
            events: tx.clone(),
            out: Mutex::new(Some(out)),
        });
        self.router.open_session(SessionInfo {
            key: call.session.clone(),
            client: call.identity.client.clone(),
            // Sampling and elicitation requests must reach this module: it alone answers the
            // client when the client cannot take them (it checks `call.context.caps`). Roots
            // of a client without them come from the policy, in the router, as for any client.
            caps: ClientCaps {
                sampling: true,
                elicitation: true,
                roots: call.context.caps.roots,
                tasks: call.context.caps.tasks,
            },
            log: call.context.log,
            sink: sink.clone(),
        });
        let owner = self.router.owner_of(&call.method, &call.params);
        let ex = Arc::new(Exchange {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            session: call.session.clone(),
            identity: call.identity.clone(),
            caps: call.context.caps,
            method: call.method.clone(),
            item,
            first_id: call.id.clone(),
            legacy_task,
            params: call_params(&call.params),
            sink: sink.clone(),
            events: tokio::sync::Mutex::new(rx),
            progress: Mutex::new(Progress::default()),
        });
        let request = Request {
            id: call.id,
            method: call.method,
            params: Some(crate::mcp::to_raw(&call.params)),
        };
        let admission = match self
            .router
            .admit(&call.session, &call.identity, &request)
            .await
        {
            Ok(a) => a,
            Err(refused) => {
                self.router.close_session(&call.session).await;
                return Err(refused);
            }
        };
        let inbound = Inbound {
            identity: call.identity,
            session: call.session,
            request,
            context: call.context,
        };
        let router = self.router.clone();
        let related = sink as Arc<dyn MessageSink>;
        tokio::spawn(async move {
            let r = router.handle(inbound, Some(related), admission).await;
            let _ = tx.send(Event::Done(r)).await;
        });
        self.wait(&ex, gone).await.into_answer(|r| match &owner {
            Some((server, tool)) => self.wrap_upstream(&ex, r, server, tool),
            None => r,
        })
    }

    async fn resume(
        self: &Arc<Self>,
        id: u64,
        round: u64,
        call: Call,
        out: Arc<dyn MessageSink>,
        gone: oneshot::Receiver<()>,
    ) -> Result<Box<RawValue>, Answer> {
        let ended = || {
            invalid(
                &call.id,
                format!("the call this requestState continues has ended (answered, cancelled, or not resumed within {}s); send the request again without requestState", PARK_FOR.as_secs()),
            )
        };
        let Some(ex) = self.parked.lock().ok().and_then(|p| p.get(&id).cloned()) else {
            return Err(ended());
        };
        if ex
            .progress
            .lock()
            .map(|p| p.round != round || !p.parked)
            .unwrap_or(true)
        {
            return Err(ended());
        }
        if call_params(&call.params) != ex.params {
            self.router.audit_token_refused(
                &call.identity,
                &call.session,
                &call.method,
                "requestState refused: the retry changed the call's arguments",
            );
            return Err(invalid(
                &call.id,
                "the retry's params differ from the call's: a retry must repeat the request as it was (only requestState and inputResponses are added); send a new request without requestState".into(),
            ));
        }
        // The retry is a request like any other: the policy in force now decides again.
        let retry = Request {
            id: call.id.clone(),
            method: call.method.clone(),
            params: Some(crate::mcp::to_raw(&call.params)),
        };
        if let Err(refused) = self.router.admit(&ex.session, &call.identity, &retry).await {
            self.end(&ex, "the policy refused the client's retry").await;
            return Err(refused);
        }
        let responses = call.params.get("inputResponses").and_then(Value::as_object);
        let mut answered = Vec::new();
        let still_waiting = {
            let Ok(mut p) = ex.progress.lock() else {
                return Err(ended());
            };
            p.waiting
                .retain(|w| match responses.and_then(|r| r.get(&w.key)) {
                    Some(v) => {
                        answered.push((w.key.clone(), v.clone()));
                        false
                    }
                    None => true,
                });
            if p.waiting.is_empty() {
                p.parked = false;
            }
            !p.waiting.is_empty()
        };
        for (key, value) in answered {
            let resp = Response {
                id: Id::Str(key),
                outcome: Ok(crate::mcp::to_raw(&value)),
            };
            self.router.handle_response(&ex.session, resp).await;
        }
        if still_waiting {
            // Not everything asked for came back: ask again for the rest.
            return Ok(self.input_required(&ex));
        }
        if let Ok(mut p) = self.parked.lock() {
            p.remove(&ex.id);
        }
        ex.sink.set_out(Some(out));
        let owner = self.router.owner_of(&call.method, &call.params);
        self.wait(&ex, gone).await.into_answer(|r| match &owner {
            Some((server, tool)) => self.wrap_upstream(&ex, r, server, tool),
            None => r,
        })
    }

    /// Waits for the call's result or the server's next request to the client.
    async fn wait(self: &Arc<Self>, ex: &Arc<Exchange>, mut gone: oneshot::Receiver<()>) -> Waited {
        let Ok(mut events) = ex.events.try_lock() else {
            return Waited::Gateway(invalid(
                &ex.first_id,
                "this call is already being continued by another request".into(),
            ));
        };
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = &mut gone => {
                    drop(events);
                    self.end(ex, "the client closed the response stream").await;
                    return Waited::Gateway(Answer::error(Some(&ex.first_id), ErrorCode::REQUEST_CANCELLED, "request cancelled by the client"));
                }
            };
            let req = match event {
                Some(Event::Request(req)) => req,
                Some(Event::Done(result)) => {
                    drop(events);
                    self.finish(ex).await;
                    return Waited::Server(result);
                }
                None => {
                    drop(events);
                    self.finish(ex).await;
                    return Waited::Gateway(Answer::error(
                        Some(&ex.first_id),
                        ErrorCode::INTERNAL_ERROR,
                        "the call ended without an answer",
                    ));
                }
            };
            let key = match &req.id {
                Id::Str(s) => s.clone(),
                Id::Num(n) => n.to_string(),
            };
            if !MRTR_METHODS.contains(&ex.method.as_str()) {
                let why = format!(
                    "`{}` cannot ask the client for input under 2026-07-28 (only tools/call, prompts/get and resources/read can)",
                    ex.method
                );
                self.refuse(ex, req.id, ErrorCode::METHOD_NOT_FOUND, &why)
                    .await;
                continue;
            }
            if !ex.caps.answers(&req.method) {
                let gateway_asks = matches!(&req.id, Id::Str(s) if s.starts_with(crate::router::APPROVAL_ID_PREFIX));
                let why = if gateway_asks {
                    "the policy requires a person's approval for this call (a `confirm` rule), asked through elicitation, which the client did not declare in its capabilities".to_owned()
                } else {
                    format!(
                        "the server asked the client for `{}`, which the client did not declare in its capabilities",
                        req.method
                    )
                };
                self.refuse(ex, req.id, ErrorCode::METHOD_NOT_FOUND, &why)
                    .await;
                drop(events);
                self.end(ex, "the client cannot answer the server's request")
                    .await;
                let data = json!({
                    "requiredCapabilities": ClientCaps::required_for(&req.method).unwrap_or_else(|| json!({}))
                });
                return Waited::Gateway(Answer {
                    bytes: crate::mcp::error_response_with_data(
                        Some(&ex.first_id),
                        ErrorCode::MISSING_CLIENT_CAPABILITY,
                        &why,
                        Some(&data),
                    ),
                    refusal: None,
                    code: Some(ErrorCode::MISSING_CLIENT_CAPABILITY.0),
                });
            }
            if !self.may_park(ex) {
                let why = "too many calls are waiting on this client's input; answer or abandon some first";
                self.refuse(ex, req.id, ErrorCode::OVER_CAPACITY, why).await;
                continue;
            }
            let round = match ex.progress.lock() {
                Ok(mut p) => {
                    p.waiting.push(Waiting {
                        key,
                        method: req.method,
                        params: req.params,
                    });
                    p.round += 1;
                    p.parked = true;
                    p.round
                }
                Err(_) => 0,
            };
            if let Ok(mut p) = self.parked.lock() {
                p.insert(ex.id, ex.clone());
            }
            ex.sink.set_out(None);
            self.expire_later(ex.clone(), round);
            return Waited::Held(self.input_required(ex));
        }
    }

    /// Ends every held call (cancelled at its server): at shutdown no retry can reach this
    /// gateway any more, so waiting for one would only hold the drain up.
    pub async fn end_all(&self, reason: &str) {
        let held: Vec<Arc<Exchange>> = match self.parked.lock() {
            Ok(p) => p.values().cloned().collect(),
            Err(_) => return,
        };
        for ex in held {
            self.end(&ex, reason).await;
        }
    }

    fn may_park(&self, ex: &Exchange) -> bool {
        let Ok(p) = self.parked.lock() else {
            return false;
        };
        if p.contains_key(&ex.id) {
            return true;
        }
        p.len() < MAX_PARKED
            && p.values()
                .filter(|e| e.identity.client == ex.identity.client)
                .count()
                < MAX_PARKED_PER_CLIENT
    }

    /// The `InputRequiredResult` for what `ex`'s server waits for.
    fn input_required(&self, ex: &Exchange) -> Box<RawValue> {
        let (requests, round) = match ex.progress.lock() {
            Ok(p) => {
                let requests: Map<String, Value> = p
                    .waiting
                    .iter()
                    .map(|w| {
                        let mut r = json!({ "method": w.method });
                        if let Some(params) = &w.params {
                            r["params"] = serde_json::from_str(params.get()).unwrap_or(Value::Null);
                        }
                        (w.key.clone(), r)
                    })
                    .collect();
                (requests, p.round)
            }
            Err(_) => (Map::new(), 0),
        };
        let token = self.seal.make(
            Held::Exchange { id: ex.id, round },
            &ex.identity.client,
            &ex.method,
            &ex.item,
            PARK_FOR,
        );
        crate::mcp::to_raw(&json!({
            "resultType": "input_required",
            "inputRequests": requests,
            "requestState": token,
        }))
    }

    /// A server's own `InputRequiredResult` or task handle, with what the client must carry
    /// wrapped in a token of ours; any other result as it is.
    fn wrap_upstream(
        &self,
        ex: &Exchange,
        result: Box<RawValue>,
        server: &str,
        tool: &str,
    ) -> Box<RawValue> {
        if ex.legacy_task {
            if let Some((task, fields)) = legacy_tasks::created(&result) {
                let origin = super::tasks::Origin::of_call(server, tool, &ex.params);
                let handle = origin.handle(&self.seal, &ex.identity.client, task, true);
                return legacy_tasks::created_result(&fields, &handle);
            }
        }
        match results::shape(&result) {
            Shape::InputRequired { state } => {
                let held = Held::UpstreamState {
                    server: server.to_owned(),
                    state,
                };
                let token =
                    self.seal
                        .make(held, &ex.identity.client, &ex.method, &ex.item, PARK_FOR);
                results::with_field(&result, "requestState", &token).unwrap_or(result)
            }
            Shape::Task { task } if ex.method == methods::TOOLS_CALL => {
                let origin = super::tasks::Origin::of_call(server, tool, &ex.params);
                let handle = origin.handle(&self.seal, &ex.identity.client, task, false);
                results::with_field(&result, "taskId", &handle).unwrap_or(result)
            }
            _ => result,
        }
    }

    /// Answers a server's request to the client with an error.
    async fn refuse(&self, ex: &Exchange, id: Id, code: ErrorCode, why: &str) {
        let resp = Response {
            id,
            outcome: Err(error_object(code, why, None)),
        };
        self.router.handle_response(&ex.session, resp).await;
    }

    /// Cancels `ex`'s call at its server and forgets it.
    async fn end(&self, ex: &Arc<Exchange>, reason: &str) {
        tracing::info!(client = %ex.identity.client, method = %ex.method, reason, "held call ended");
        let params = crate::mcp::to_raw(&json!({ "requestId": ex.first_id, "reason": reason }));
        self.router
            .handle_notification(
                &ex.session,
                crate::mcp::Notification {
                    method: methods::CANCELLED.to_owned(),
                    params: Some(params),
                },
            )
            .await;
        self.finish(ex).await;
    }

    /// Forgets `ex` and its router session (server requests still waiting are refused).
    async fn finish(&self, ex: &Arc<Exchange>) {
        if let Ok(mut p) = self.parked.lock() {
            p.remove(&ex.id);
        }
        self.router.close_session(&ex.session).await;
    }

    fn expire_later(self: &Arc<Self>, ex: Arc<Exchange>, round: u64) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(PARK_FOR).await;
            let still = ex
                .progress
                .lock()
                .is_ok_and(|p| p.parked && p.round == round);
            if let (true, Some(me)) = (still, me.upgrade()) {
                me.end(
                    &ex,
                    "the client did not answer the server's request in time",
                )
                .await;
            }
        });
    }
}
