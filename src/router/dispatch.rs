//! Answering one client request: catalog requests from the merged catalog, calls forwarded to
//! the server that owns what they name, after authorization and rate limits.

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::catalog::{self, Kind};
use super::{audit_trail, sessions, Answer, Failure, MessageSink, Router};
use crate::access::Identity;
use crate::mcp::{methods, ErrorCode, Message, Request, Response};

impl Router {
    /// Handles one request from session `key`; `related` carries messages tied to it (the SSE
    /// stream of its POST), when there is one. Returns the serialized response.
    pub async fn handle_request(
        &self,
        key: &str,
        identity: &Identity,
        req: Request,
        related: Option<Arc<dyn MessageSink>>,
        admission: Option<Admission>,
    ) -> Answer {
        let id = req.id.clone();
        match self.dispatch(key, identity, req, related, admission).await {
            Ok(result) => Answer::ok(
                Message::Response(Response {
                    id,
                    outcome: Ok(result),
                })
                .to_bytes(),
            ),
            Err(f) => f.answer(&id),
        }
    }

    /// Authorization and rate limits for a request, before it is answered: lets the transport
    /// refuse with HTTP 403/429 rather than inside an already-started stream. The returned
    /// admission is handed to `handle_request`, so quotas are taken once.
    pub fn admit(
        &self,
        session: &str,
        identity: &Identity,
        req: &Request,
    ) -> Result<Option<Admission>, Answer> {
        if req.method != methods::TOOLS_CALL {
            return Ok(None);
        }
        let Some(name) = req
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p.get()).ok())
            .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
        else {
            return Ok(None);
        };
        let agg = self.catalog.snapshot();
        let Some(route) = agg.tool(&name) else {
            return Ok(None);
        };
        self.check_call(identity, session, route)
            .map(|()| Some(Admission(())))
            .map_err(|f| f.answer(&req.id))
    }

    fn check_call(
        &self,
        identity: &Identity,
        session: &str,
        route: &catalog::Route,
    ) -> Result<(), Failure> {
        let deny = |outcome, reason: &str| {
            self.audit.record_later(audit_trail::AuditTrail::denied(
                Some(identity),
                Some(session),
                Some(&route.server),
                Some(&route.name),
                outcome,
                reason,
            ));
        };
        if !self
            .access
            .rules(&identity.client)
            .permits(&route.server, &route.name)
        {
            let reason = format!(
                "client `{}` may not call `{}__{}` (clients.{}.allow/deny in the policy)",
                identity.client, route.server, route.name, identity.client
            );
            deny(
                crate::audit::Outcome::Error(ErrorCode::FORBIDDEN.0),
                &reason,
            );
            return Err(Failure::Gateway(ErrorCode::FORBIDDEN, reason));
        }
        self.access
            .limits
            .check(&identity.client, &route.server, Some(&route.name))
            .map_err(|l| {
                deny(crate::audit::Outcome::RateLimited, &l.scope);
                Failure::Limited(l)
            })
    }

    async fn dispatch(
        &self,
        key: &str,
        identity: &Identity,
        req: Request,
        related: Option<Arc<dyn MessageSink>>,
        admission: Option<Admission>,
    ) -> Result<Box<RawValue>, Failure> {
        let params = object_params(req.params.as_deref())?;
        match req.method.as_str() {
            methods::PING => Ok(crate::mcp::to_raw(&json!({}))),
            methods::INITIALIZE => Err(Failure::Gateway(
                ErrorCode::INVALID_REQUEST,
                "this session is already initialized; open a new session to initialize again"
                    .into(),
            )),
            methods::TOOLS_LIST => self.list(Kind::Tools, &params, identity).await,
            methods::PROMPTS_LIST => self.list(Kind::Prompts, &params, identity).await,
            methods::RESOURCES_LIST => self.list(Kind::Resources, &params, identity).await,
            methods::RESOURCE_TEMPLATES_LIST => self.list(Kind::Templates, &params, identity).await,
            methods::TOOLS_CALL | methods::PROMPTS_GET => {
                self.wait_settled().await;
                let name = str_param(&params, "name")?;
                let agg = self.catalog.snapshot();
                let is_tool = req.method == methods::TOOLS_CALL;
                let (route, what) = if is_tool {
                    (agg.tool(name), "tool")
                } else {
                    (agg.prompt(name), "prompt")
                };
                let route = route.ok_or_else(|| {
                    let mut msg = format!(
                        "unknown {what} `{name}`: it is not in this gateway's {what}s/list"
                    );
                    // A server that is down contributes nothing to the lists; say which and
                    // why, or the caller cannot tell a typo from an outage.
                    let down: Vec<String> = self
                        .readiness()
                        .into_iter()
                        .filter_map(|(server, r)| r.err().map(|why| format!("`{server}`: {why}")))
                        .collect();
                    if !down.is_empty() {
                        msg.push_str(&format!(
                            "; servers not ready, whose {what}s are missing: {}",
                            down.join("; ")
                        ));
                    }
                    Failure::Gateway(ErrorCode::INVALID_PARAMS, msg)
                })?;
                if is_tool && admission.is_none() {
                    self.check_call(identity, key, route)?;
                }
                let mut params = params;
                params.insert("name".into(), Value::String(route.name.clone()));
                let server = route.server.clone();
                self.forward(
                    key,
                    identity,
                    &req.id,
                    &server,
                    &req.method,
                    params,
                    related,
                )
                .await
            }
            methods::RESOURCES_READ
            | methods::RESOURCES_SUBSCRIBE
            | methods::RESOURCES_UNSUBSCRIBE => {
                self.wait_settled().await;
                let uri = str_param(&params, "uri")?.to_owned();
                let server = self.resource_owner(&uri)?;
                if req.method == methods::RESOURCES_UNSUBSCRIBE {
                    // Other sessions may still want updates for this URI; the server keeps
                    // its subscription until the last one leaves.
                    if !self.relay.unsubscribe(key, &server, &uri) {
                        return Ok(crate::mcp::to_raw(&json!({})));
                    }
                }
                let result = self
                    .forward(
                        key,
                        identity,
                        &req.id,
                        &server,
                        &req.method,
                        params,
                        related,
                    )
                    .await;
                if req.method == methods::RESOURCES_SUBSCRIBE && result.is_ok() {
                    self.relay.subscribe(key, &server, &uri);
                }
                result
            }
            methods::COMPLETION_COMPLETE => {
                self.wait_settled().await;
                let server = self.completion_target(&params)?;
                let mut params = params;
                if let Some(Value::Object(r)) = params.get_mut("ref") {
                    if r.get("type").and_then(Value::as_str) == Some("ref/prompt") {
                        if let Some(route) = r
                            .get("name")
                            .and_then(Value::as_str)
                            .and_then(|n| self.catalog.snapshot().prompt(n).cloned())
                        {
                            r.insert("name".into(), Value::String(route.name));
                        }
                    }
                }
                self.forward(
                    key,
                    identity,
                    &req.id,
                    &server,
                    &req.method,
                    params,
                    related,
                )
                .await
            }
            methods::LOGGING_SET_LEVEL => {
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
            methods::SERVER_DISCOVER => Err(Failure::Gateway(
                ErrorCode::METHOD_NOT_FOUND,
                "server/discover is not supported: this gateway speaks the initialize handshake"
                    .into(),
            )),
            other => Err(Failure::Gateway(
                ErrorCode::METHOD_NOT_FOUND,
                format!("method `{other}` is not supported by this gateway"),
            )),
        }
    }

    fn resource_owner(&self, uri: &str) -> Result<Arc<str>, Failure> {
        if let Some(s) = self.catalog.snapshot().resource_server(uri) {
            return Ok(s.clone());
        }
        // With a single server there is no ambiguity: let it decide whether the URI exists.
        if let [only] = self.servers.names().as_slice() {
            return Ok(only.clone());
        }
        Err(Failure::Gateway(
            ErrorCode::RESOURCE_NOT_FOUND,
            format!("resource `{uri}` is not offered by any server behind this gateway"),
        ))
    }

    fn completion_target(&self, params: &Map<String, Value>) -> Result<Arc<str>, Failure> {
        let r = params
            .get("ref")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                Failure::Gateway(ErrorCode::INVALID_PARAMS, "`ref` must be an object".into())
            })?;
        match r.get("type").and_then(Value::as_str) {
            Some("ref/prompt") => {
                let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
                self.catalog
                    .snapshot()
                    .prompt(name)
                    .map(|route| route.server.clone())
                    .ok_or_else(|| {
                        Failure::Gateway(
                            ErrorCode::INVALID_PARAMS,
                            format!("unknown prompt `{name}`"),
                        )
                    })
            }
            Some("ref/resource") => {
                let uri = r.get("uri").and_then(Value::as_str).unwrap_or_default();
                self.resource_owner(uri)
            }
            _ => Err(Failure::Gateway(
                ErrorCode::INVALID_PARAMS,
                "`ref.type` must be `ref/prompt` or `ref/resource`".into(),
            )),
        }
    }

    async fn list(
        &self,
        kind: Kind,
        params: &Map<String, Value>,
        identity: &Identity,
    ) -> Result<Box<RawValue>, Failure> {
        self.wait_settled().await;
        let cursor = match params.get("cursor") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => {
                return Err(Failure::Gateway(
                    ErrorCode::INVALID_PARAMS,
                    "`cursor` must be a string".into(),
                ))
            }
        };
        let rules = self.access.rules(&identity.client);
        self.catalog
            .page(kind, cursor, self.settings().page_size, &|r| {
                rules.permits(&r.server, &r.name)
            })
            .map_err(|e| Failure::Gateway(ErrorCode::INVALID_PARAMS, e.to_string()))
    }
}

/// Proof that `Router::admit` already authorized a call and took its quota.
#[derive(Debug)]
pub struct Admission(());

fn object_params(params: Option<&RawValue>) -> Result<Map<String, Value>, Failure> {
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

fn str_param<'a>(params: &'a Map<String, Value>, key: &str) -> Result<&'a str, Failure> {
    params.get(key).and_then(Value::as_str).ok_or_else(|| {
        Failure::Gateway(
            ErrorCode::INVALID_PARAMS,
            format!("`{key}` must be a string"),
        )
    })
}
