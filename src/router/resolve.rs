//! What a client request is, by how the router answers it ([`Method`]), and for the requests it
//! forwards, what they reach ([`Call`]): the server that owns the item they name, the item as
//! the access decision sees it, and the params as that server gets them.
//!
//! [`Forwarded`] is the closed set of methods that reach a server. A method outside it is
//! answered by the gateway or refused; a method in it is resolved by an exhaustive match into
//! a [`Target`], so adding one without saying what it reaches does not compile.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::catalog::Kind;
use super::{hints, Failure, Router};
use crate::access::{Completed, Identity, Target};
use crate::mcp::{methods, ErrorCode};

/// The client requests the router forwards to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    ToolsCall,
    PromptsGet,
    ResourcesRead,
    ResourcesSubscribe,
    ResourcesUnsubscribe,
    CompletionComplete,
}

impl Forwarded {
    pub const ALL: [Forwarded; 6] = [
        Forwarded::ToolsCall,
        Forwarded::PromptsGet,
        Forwarded::ResourcesRead,
        Forwarded::ResourcesSubscribe,
        Forwarded::ResourcesUnsubscribe,
        Forwarded::CompletionComplete,
    ];

    pub fn method(self) -> &'static str {
        match self {
            Forwarded::ToolsCall => methods::TOOLS_CALL,
            Forwarded::PromptsGet => methods::PROMPTS_GET,
            Forwarded::ResourcesRead => methods::RESOURCES_READ,
            Forwarded::ResourcesSubscribe => methods::RESOURCES_SUBSCRIBE,
            Forwarded::ResourcesUnsubscribe => methods::RESOURCES_UNSUBSCRIBE,
            Forwarded::CompletionComplete => methods::COMPLETION_COMPLETE,
        }
    }
}

/// Every method name the router forwards to servers, for tests that must cover each one.
pub fn forwarded_methods() -> impl Iterator<Item = &'static str> {
    Forwarded::ALL.into_iter().map(Forwarded::method)
}

/// How the router answers a request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Method {
    Ping,
    Initialize,
    Discover,
    SetLevel,
    List(Kind),
    Forward(Forwarded),
    Unknown,
}

impl Method {
    pub fn of(name: &str) -> Method {
        match name {
            methods::PING => Method::Ping,
            methods::INITIALIZE => Method::Initialize,
            methods::SERVER_DISCOVER => Method::Discover,
            methods::LOGGING_SET_LEVEL => Method::SetLevel,
            methods::TOOLS_LIST => Method::List(Kind::Tools),
            methods::PROMPTS_LIST => Method::List(Kind::Prompts),
            methods::RESOURCES_LIST => Method::List(Kind::Resources),
            methods::RESOURCE_TEMPLATES_LIST => Method::List(Kind::Templates),
            other => Forwarded::ALL
                .into_iter()
                .find(|f| f.method() == other)
                .map_or(Method::Unknown, Method::Forward),
        }
    }
}

/// A forwarded request, resolved against the catalog.
#[derive(Debug)]
pub(crate) struct Call {
    pub method: Forwarded,
    pub server: Arc<str>,
    /// The upstream name of the tool or prompt, or the URI (template) the request names.
    pub item: String,
    /// For a completion: whether its `ref` is a prompt (else a resource).
    completes_prompt: bool,
    /// The params as the server gets them.
    pub params: Map<String, Value>,
}

impl Call {
    /// What the access decision is asked about.
    pub fn target(&self) -> Target<'_> {
        let (server, item) = (&*self.server, self.item.as_str());
        match self.method {
            Forwarded::ToolsCall => Target::Tool { server, name: item },
            Forwarded::PromptsGet => Target::Prompt { server, name: item },
            Forwarded::ResourcesRead => Target::Resource { server, uri: item },
            Forwarded::ResourcesSubscribe | Forwarded::ResourcesUnsubscribe => {
                Target::Subscription { server, uri: item }
            }
            Forwarded::CompletionComplete => Target::Completion {
                server,
                of: if self.completes_prompt {
                    Completed::Prompt(item)
                } else {
                    Completed::Resource(item)
                },
            },
        }
    }
}

impl Router {
    /// Finds what a forwarded request reaches in the catalog in force now.
    pub(super) fn resolve(
        &self,
        identity: &Identity,
        method: Forwarded,
        mut params: Map<String, Value>,
    ) -> Result<Call, Failure> {
        let call = |server, item, completes_prompt, params| Call {
            method,
            server,
            item,
            completes_prompt,
            params,
        };
        match method {
            Forwarded::ToolsCall | Forwarded::PromptsGet => {
                let name = str_param(&params, "name")?;
                let agg = self.catalog.snapshot();
                let (route, kind) = if method == Forwarded::ToolsCall {
                    (agg.tool(name), Kind::Tools)
                } else {
                    (agg.prompt(name), Kind::Prompts)
                };
                if route.is_none() {
                    self.refuse_withheld(identity, &agg, kind, name)?;
                }
                let route = route
                    .cloned()
                    .ok_or_else(|| self.unknown(identity, kind, name))?;
                params.insert("name".into(), Value::String(route.name.clone()));
                Ok(call(route.server, route.name, false, params))
            }
            Forwarded::ResourcesRead
            | Forwarded::ResourcesSubscribe
            | Forwarded::ResourcesUnsubscribe => {
                let uri = str_param(&params, "uri")?.to_owned();
                let server = self.resource_owner(&uri)?;
                Ok(call(server, uri, false, params))
            }
            Forwarded::CompletionComplete => {
                let r = params
                    .get_mut("ref")
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| {
                        Failure::Gateway(
                            ErrorCode::INVALID_PARAMS,
                            "`ref` must be an object".into(),
                        )
                    })?;
                match r.get("type").and_then(Value::as_str) {
                    Some("ref/prompt") => {
                        let name = r.get("name").and_then(Value::as_str).unwrap_or_default();
                        let route = self.catalog.snapshot().prompt(name).cloned();
                        let route = route.ok_or_else(|| {
                            Failure::Gateway(
                                ErrorCode::INVALID_PARAMS,
                                format!("unknown prompt `{name}`"),
                            )
                        })?;
                        r.insert("name".into(), Value::String(route.name.clone()));
                        Ok(call(route.server, route.name, true, params))
                    }
                    Some("ref/resource") => {
                        let uri = r
                            .get("uri")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        let server = self.resource_owner(&uri)?;
                        Ok(call(server, uri, false, params))
                    }
                    _ => Err(Failure::Gateway(
                        ErrorCode::INVALID_PARAMS,
                        "`ref.type` must be `ref/prompt` or `ref/resource`".into(),
                    )),
                }
            }
        }
    }

    /// An unknown tool or prompt, with the servers that are down (whose lists are missing) and
    /// the name probably meant, among those `identity` may see, so that the caller can tell a
    /// typo from an outage without learning names outside its view.
    fn unknown(&self, identity: &Identity, kind: Kind, name: &str) -> Failure {
        let down: Vec<(String, String)> = self
            .readiness()
            .into_iter()
            .filter_map(|(server, r)| r.err().map(|why| (server, why)))
            .collect();
        let rules = self.access.rules(&identity.client);
        let agg = self.catalog.snapshot();
        let visible: Vec<&str> = agg
            .names(kind)
            .filter(|(_, r)| {
                let (server, name) = (&*r.server, r.name.as_str());
                rules.allows(&match kind {
                    Kind::Prompts => Target::Prompt { server, name },
                    _ => Target::Tool { server, name },
                })
            })
            .map(|(n, _)| n)
            .collect();
        let what = if kind == Kind::Prompts {
            "prompt"
        } else {
            "tool"
        };
        Failure::Gateway(
            ErrorCode::INVALID_PARAMS,
            hints::unknown_item(what, name, &down, &visible),
        )
    }

    /// Refuses a withheld tool or prompt with the reason, when `identity` may see it; `Ok`
    /// when `exposed` is not withheld (or not the caller's to know about).
    fn refuse_withheld(
        &self,
        identity: &Identity,
        agg: &super::catalog::Aggregate,
        kind: Kind,
        exposed: &str,
    ) -> Result<(), Failure> {
        let Some((route, why)) = agg.withheld(kind, exposed) else {
            return Ok(());
        };
        let (server, name) = (&*route.server, route.name.as_str());
        let target = match kind {
            Kind::Prompts => Target::Prompt { server, name },
            _ => Target::Tool { server, name },
        };
        if !self.access.rules(&identity.client).allows(&target) {
            return Ok(());
        }
        self.audit.record_later(
            crate::audit::AuditEvent::new(crate::audit::Kind::Denied)
                .outcome(crate::audit::Outcome::Error(ErrorCode::WITHHELD.0))
                .client(identity.client.to_string())
                .server(server)
                .tool(name)
                .detail(why),
        );
        crate::metrics::global().refusal("withheld");
        Err(Failure::Gateway(ErrorCode::WITHHELD, why.to_owned()))
    }

    /// The server that owns `uri`: the one listing it, else the one with a template for it (an
    /// exact template first, for completions), else the only server there is.
    fn resource_owner(&self, uri: &str) -> Result<Arc<str>, Failure> {
        let agg = self.catalog.snapshot();
        if let Some(s) = agg.resource_server(uri) {
            return Ok(s.clone());
        }
        // Only a withheld template offers it: say why rather than let a single server answer.
        if let Some((_, why)) = agg.withheld_template(uri) {
            return Err(Failure::Gateway(ErrorCode::WITHHELD, why.to_owned()));
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
}

pub(super) fn str_param<'a>(params: &'a Map<String, Value>, key: &str) -> Result<&'a str, Failure> {
    params.get(key).and_then(Value::as_str).ok_or_else(|| {
        Failure::Gateway(
            ErrorCode::INVALID_PARAMS,
            format!("`{key}` must be a string"),
        )
    })
}
