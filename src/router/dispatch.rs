//! Answering one client request: catalog requests from the merged catalog, calls forwarded to
//! the server that owns what they name, after authorization and rate limits.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::audit_trail::AuditTrail;
use super::catalog::Kind;
use super::resolve::{str_param, Call, Forwarded, Method};
use super::{sessions, Answer, Failure, Inbound, MessageSink, Router};
use crate::access::{Identity, Permit, Refused};
use crate::audit::Outcome;
use crate::mcp::{ErrorCode, Id, Message, Request, RequestContext, Response};

impl Router {
    /// Handles one request; `related` carries messages tied to it (the SSE stream of its
    /// POST), when there is one. Returns the serialized response.
    pub async fn handle_request(
        &self,
        inbound: Inbound,
        related: Option<Arc<dyn MessageSink>>,
        admission: Option<Admission>,
    ) -> Answer {
        let id = inbound.request.id.clone();
        match self.handle(inbound, related, admission).await {
            Ok(result) => Answer::ok(
                Message::Response(Response {
                    id,
                    outcome: Ok(result),
                })
                .to_bytes(),
            ),
            Err(refused) => refused,
        }
    }

    /// Handles one request: its result object, or its serialized error response.
    pub async fn handle(
        &self,
        inbound: Inbound,
        related: Option<Arc<dyn MessageSink>>,
        admission: Option<Admission>,
    ) -> Result<Box<RawValue>, Answer> {
        let Inbound {
            identity,
            session,
            request,
            context,
        } = inbound;
        let id = request.id.clone();
        self.dispatch(&session, &identity, request, &context, related, admission)
            .await
            .map_err(|f| f.answer(&id))
    }

    /// The access decision and rate limits for a forwarded request, before it is answered:
    /// lets the transport refuse with HTTP 403/429 rather than inside an already-started
    /// stream. The returned admission carries the resolved request and its permit to
    /// `handle_request`, so quotas are taken once and the request goes where it was decided.
    pub fn admit(
        &self,
        session: &str,
        identity: &Identity,
        req: &Request,
    ) -> Result<Option<Admission>, Answer> {
        let Method::Forward(method) = Method::of(&req.method) else {
            return Ok(None);
        };
        // What does not resolve yet is reported by `dispatch`, once the catalog has settled.
        let Some(call) = object_params(req.params.as_deref())
            .ok()
            .and_then(|params| self.resolve(identity, method, params).ok())
        else {
            return Ok(None);
        };
        match self.authorize(identity, session, &call) {
            Ok(permit) => Ok(Some(Admission { call, permit })),
            Err(f) => Err(f.answer(&req.id)),
        }
    }

    /// Asks the access decision and the quotas about `call`; a refusal is audited as `denied`
    /// with the method and the item (never the arguments).
    fn authorize(
        &self,
        identity: &Identity,
        session: &str,
        call: &Call,
    ) -> Result<Permit, Failure> {
        let target = call.target();
        self.access.admit(identity, &target).map_err(|refused| {
            let (outcome, reason, failure) = match refused {
                Refused::Forbidden(d) => (
                    Outcome::Error(ErrorCode::FORBIDDEN.0),
                    d.reason.clone(),
                    Failure::Gateway(ErrorCode::FORBIDDEN, d.reason),
                ),
                Refused::Limited(l) => (Outcome::RateLimited, l.scope.clone(), Failure::Limited(l)),
            };
            self.audit.record_later(AuditTrail::refused(
                identity,
                session,
                call.method.method(),
                &target,
                outcome,
                &reason,
            ));
            failure
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn dispatch(
        &self,
        key: &str,
        identity: &Identity,
        req: Request,
        context: &RequestContext,
        related: Option<Arc<dyn MessageSink>>,
        admission: Option<Admission>,
    ) -> Result<Box<RawValue>, Failure> {
        let method = Method::of(&req.method);
        if let Some(Admission { call, permit }) = admission {
            return self
                .send(key, identity, &req.id, call, permit, context, related)
                .await;
        }
        let params = object_params(req.params.as_deref())?;
        match method {
            Method::Ping => Ok(crate::mcp::to_raw(&json!({}))),
            Method::Initialize => Err(Failure::Gateway(
                ErrorCode::INVALID_REQUEST,
                "this session is already initialized; open a new session to initialize again"
                    .into(),
            )),
            Method::List(kind) => self.list(kind, &params, identity).await,
            Method::Forward(method) => {
                self.wait_settled().await;
                let call = self.resolve(identity, method, params)?;
                let permit = self.authorize(identity, key, &call)?;
                self.send(key, identity, &req.id, call, permit, context, related)
                    .await
            }
            Method::SetLevel => {
                let level = str_param(&params, "level")?;
                let Some(rank) = sessions::level_rank(level) else {
                    return Err(Failure::Gateway(
                        ErrorCode::INVALID_PARAMS,
                        format!("unknown log level `{level}`; use one of debug, info, notice, warning, error, critical, alert, emergency"),
                    ));
                };
                self.sessions.set_level(key, rank);
                self.push_log_level().await;
                Ok(crate::mcp::to_raw(&json!({})))
            }
            Method::Discover => Err(Failure::Gateway(
                ErrorCode::METHOD_NOT_FOUND,
                "server/discover is not supported: this gateway speaks the initialize handshake"
                    .into(),
            )),
            Method::Unknown => Err(Failure::Gateway(
                ErrorCode::METHOD_NOT_FOUND,
                format!("method `{}` is not supported by this gateway", req.method),
            )),
        }
    }

    /// Forwards an admitted request, keeping the gateway's subscription table in step.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        key: &str,
        identity: &Identity,
        id: &Id,
        call: Call,
        permit: Permit,
        context: &RequestContext,
        related: Option<Arc<dyn MessageSink>>,
    ) -> Result<Box<RawValue>, Failure> {
        let server = permit.server().clone();
        let Call {
            method,
            item,
            params,
            ..
        } = call;
        // Other sessions may still want updates for this URI; the server keeps its
        // subscription until the last one leaves.
        if method == Forwarded::ResourcesUnsubscribe && !self.relay.unsubscribe(key, &server, &item)
        {
            return Ok(crate::mcp::to_raw(&json!({})));
        }
        let result = self
            .forward(
                key,
                identity,
                id,
                permit,
                method.method(),
                params,
                context,
                related,
            )
            .await;
        if method == Forwarded::ResourcesSubscribe && result.is_ok() {
            self.relay.subscribe(key, &server, &item);
        }
        result
    }

    async fn list(
        &self,
        kind: Kind,
        params: &Map<String, Value>,
        identity: &Identity,
    ) -> Result<Box<RawValue>, Failure> {
        self.wait_settled().await;
        let cursor = cursor_param(params)?;
        let page = self.cached_page(kind, cursor, identity)?;
        RawValue::from_string(page.to_string()).map_err(|e| {
            Failure::Gateway(
                ErrorCode::INTERNAL_ERROR,
                format!("list page is not JSON: {e}"),
            )
        })
    }
}

/// A request `Router::admit` resolved and authorized, with its quotas taken.
#[derive(Debug)]
pub struct Admission {
    call: Call,
    permit: Permit,
}

pub(super) fn cursor_param(params: &Map<String, Value>) -> Result<Option<&str>, Failure> {
    match params.get("cursor") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(Failure::Gateway(
            ErrorCode::INVALID_PARAMS,
            "`cursor` must be a string".into(),
        )),
    }
}

pub(super) fn object_params(params: Option<&RawValue>) -> Result<Map<String, Value>, Failure> {
    match params {
        None => Ok(Map::new()),
        Some(raw) => match serde_json::from_str::<Value>(raw.get()) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(Failure::Gateway(
                ErrorCode::INVALID_PARAMS,
                "`params` must be an object".into(),
            )),
        },
    }
}
