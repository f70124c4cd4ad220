//! Who may call what, and how often: client authentication (token hashes, JWT), the access
//! decision, rate limits and concurrency caps.
//!
//! # The access decision
//!
//! Everything that reaches a server is one [`Target`]: a capability kind (tool, prompt,
//! resource, resource template, completion, subscription) carrying the server and the item.
//! [`Access::decide`] answers for a client under the policy in force now: a [`Permit`], or a
//! [`Denied`] naming the client, the item and the policy keys. [`Access::admit`] adds the
//! quotas: the client's `rate`, the server's `rate` (per client), and for a tool call the
//! tool's `tool_rates` entry, each taking one request.
//!
//! The contract the router keeps:
//! - every request it forwards is admitted first, and forwarding takes the [`Permit`] by value
//!   (only this module makes them), so a method forwarded without a decision does not compile;
//! - every list entry it shows and every notification about an item it relays passes
//!   [`Rules::allows`] with the same [`Target`] the request for that item would have;
//! - rules are looked up per request ([`Access::rules`]), never fixed when a session opens, so
//!   a reload that takes a grant away applies at once to open sessions.
//!
//! Rules are compiled once per policy ([`rules`]), so a decision is a few byte comparisons and
//! list filtering costs nothing measurable.
//!
//! # Extending it
//!
//! A new kind of request gets a [`Target`] variant; the exhaustive matches here then make the
//! build fail until its item and refusal text are named. What later revisions add fits as:
//! a `subscriptions/listen` filter is one decision per item it names (and its notifications
//! pass the same filter as today's); a task handle is decided as the target of the request that
//! created it, plus ownership by the client; a multi-round-trip retry is decided afresh as its
//! original request. Conditions on arguments or human approval extend [`Decision`] and the
//! compiled rules, not the router.

mod decision;
pub mod fair_slots;
pub mod jwt;
pub mod limits;
pub mod rules;
pub mod session_quotas;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use http::HeaderMap;

use crate::policy::Policy;
pub use decision::{Completed, Decision, Denied, Permit, Target};
pub use limits::{Busy, Limited, Limits};
pub use rules::Rules;
pub use session_quotas::SessionLimit;

/// An authenticated (or, with auth off, anonymous) caller. What the client may use is looked
/// up in the policy in force at the time of each request ([`Access::rules`]), not fixed when
/// its session opened, so that a reload applies to open sessions too.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The policy's client name; `anonymous` when authentication is off.
    pub client: Arc<str>,
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.client == other.client
    }
}

/// Why a request was not authenticated; becomes a 401 with `WWW-Authenticate`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct Unauthorized {
    pub reason: String,
    /// `invalid_request` (no credentials) or `invalid_token`.
    pub error: &'static str,
}

/// Why [`Access::admit`] refused a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// The rules do not grant the target.
    Forbidden(Denied),
    /// A quota is used up.
    Limited(Limited),
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Jwt(#[from] jwt::JwtSetupError),
}

/// Who the clients are and what each may call, as one policy says; replaced whole on reload.
pub struct Clients {
    required: bool,
    anonymous: Identity,
    /// token hash -> client
    tokens: Vec<([u8; 64], Identity)>,
    jwt: Option<jwt::JwtVerifier>,
    jwt_clients: HashMap<String, Identity>,
    /// Compiled rules by client name (with `anonymous` when authentication is off).
    rules: HashMap<Arc<str>, Arc<Rules>>,
    resource: Option<String>,
    authorization_servers: Vec<String>,
}

impl Clients {
    /// Builds the client table of `policy`; fails when a JWT key cannot be read.
    pub fn from_policy(policy: &Policy) -> Result<Clients, AccessError> {
        let mut tokens = Vec::new();
        let mut jwt_clients = HashMap::new();
        let mut rules = HashMap::new();
        for (name, c) in &policy.clients {
            let id = Identity {
                client: Arc::from(name.as_str()),
            };
            rules.insert(id.client.clone(), Arc::new(Rules::for_client(c)));
            if let Some(h) = &c.token_sha256 {
                let mut buf = [0u8; 64];
                if h.len() == 64 {
                    buf.copy_from_slice(h.as_bytes());
                    tokens.push((buf, id.clone()));
                }
            }
            if let Some(sub) = &c.jwt_subject {
                jwt_clients.insert(sub.clone(), id);
            }
        }
        let jwt = policy
            .auth
            .jwt
            .as_ref()
            .map(jwt::JwtVerifier::new)
            .transpose()?;
        let required = policy.requires_auth();
        // With authentication off, a `[clients.anonymous]` entry (if any) still scopes access.
        let anonymous = Identity {
            client: Arc::from("anonymous"),
        };
        if !required {
            rules
                .entry(anonymous.client.clone())
                .or_insert_with(|| Arc::new(Rules::default()));
        }
        Ok(Clients {
            required,
            anonymous,
            tokens,
            jwt,
            jwt_clients,
            rules,
            resource: policy.auth.resource.clone(),
            authorization_servers: policy.auth.authorization_servers.clone(),
        })
    }

    /// Whether every caller sees the same lists: authentication is off and no client's rules
    /// restrict anything.
    pub fn all_see_everything(&self) -> bool {
        !self.required && self.rules.values().all(|r| r.is_unrestricted())
    }

    /// What `client` may call. A client the policy no longer names may call nothing.
    pub fn rules(&self, client: &str) -> Arc<Rules> {
        self.rules
            .get(client)
            .cloned()
            .unwrap_or_else(|| Arc::new(Rules::nothing()))
    }
}

pub struct Access {
    clients: RwLock<Arc<Clients>>,
    /// Call rates, call slots, and how many sessions each client may hold and open.
    pub limits: Limits,
}

impl Access {
    pub fn from_policy(policy: &Policy) -> Result<Access, AccessError> {
        Ok(Access {
            clients: RwLock::new(Arc::new(Clients::from_policy(policy)?)),
            limits: Limits::from_policy(policy),
        })
    }

    /// The client table in force now.
    pub fn clients(&self) -> Arc<Clients> {
        match self.clients.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// What `client` may use under the policy in force now.
    pub fn rules(&self, client: &str) -> Arc<Rules> {
        self.clients().rules(client)
    }

    /// The access decision: may `identity` reach `target` under the policy in force now?
    pub fn decide(&self, identity: &Identity, target: &Target) -> Decision {
        self.rules(&identity.client)
            .decide(&identity.client, target)
    }

    /// The decision, then every quota that applies to `target` (the tool's, the server's, the
    /// client's, most specific first), each taking one request. A request the rules refuse
    /// takes nothing from any quota.
    pub fn admit(&self, identity: &Identity, target: &Target) -> Result<Permit, Refused> {
        match self.decide(identity, target) {
            Decision::Deny(d) => Err(Refused::Forbidden(d)),
            Decision::Allow(permit) => {
                self.limits
                    .check(&identity.client, target.server(), target.tool())
                    .map_err(Refused::Limited)?;
                Ok(permit)
            }
        }
    }

    /// Puts a reloaded policy's clients, rules and quotas in force; requests from here on see
    /// them. Quotas whose settings did not change keep their state.
    pub fn replace(&self, clients: Clients, policy: &Policy) {
        let clients = Arc::new(clients);
        match self.clients.write() {
            Ok(mut c) => *c = clients,
            Err(p) => *p.into_inner() = clients,
        }
        self.limits.reload(policy);
    }

    pub fn required(&self) -> bool {
        self.clients().required
    }

    /// Identifies the caller of a request from its `Authorization` header.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, Unauthorized> {
        self.clients().authenticate(headers)
    }

    /// The `WWW-Authenticate` header value for a 401.
    pub fn challenge(&self, err: &Unauthorized, base_url: &str) -> String {
        self.clients().challenge(err, base_url)
    }

    /// RFC 9728 protected-resource metadata, when OAuth-style (JWT) tokens are configured.
    pub fn resource_metadata(&self, base_url: &str) -> Option<serde_json::Value> {
        self.clients().resource_metadata(base_url)
    }
}

impl Clients {
    fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, Unauthorized> {
        if !self.required {
            return Ok(self.anonymous.clone());
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(Unauthorized {
                reason:
                    "this gateway requires a bearer token: send `Authorization: Bearer <token>`"
                        .into(),
                error: "invalid_request",
            });
        };
        let value = value.to_str().unwrap_or("");
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => {
                return Err(Unauthorized {
                    reason: "the Authorization header must use the Bearer scheme".into(),
                    error: "invalid_request",
                })
            }
        };
        let hash = token::hash(token);
        // Every stored hash is compared, so timing says nothing about which one (if any) matched.
        let mut found: Option<&Identity> = None;
        for (h, id) in &self.tokens {
            if token::constant_time_eq(h, hash.as_bytes()) {
                found = Some(id);
            }
        }
        if let Some(id) = found {
            return Ok(id.clone());
        }
        if let Some(v) = &self.jwt {
            if token.matches('.').count() == 2 {
                let subject = v.verify(token).map_err(|reason| Unauthorized {
                    reason,
                    error: "invalid_token",
                })?;
                return self.jwt_clients.get(&subject).cloned().ok_or_else(|| Unauthorized {
                    reason: format!("the JWT names `{subject}`, which is not a configured client (clients.NAME.jwt_subject)"),
                    error: "invalid_token",
                });
            }
        }
        Err(Unauthorized {
            reason: "the bearer token is not valid for this gateway".into(),
            error: "invalid_token",
        })
    }

    fn challenge(&self, err: &Unauthorized, base_url: &str) -> String {
        let desc = err.reason.replace('"', "'");
        let mut v = format!(
            "Bearer realm=\"portcullis\", error=\"{}\", error_description=\"{desc}\"",
            err.error
        );
        if self.jwt.is_some() {
            v.push_str(&format!(
                ", resource_metadata=\"{base_url}/.well-known/oauth-protected-resource\""
            ));
        }
        v
    }

    fn resource_metadata(&self, base_url: &str) -> Option<serde_json::Value> {
        self.jwt.as_ref()?;
        Some(serde_json::json!({
            "resource": self.resource.clone().unwrap_or_else(|| format!("{base_url}/mcp")),
            "authorization_servers": self.authorization_servers,
            "bearer_methods_supported": ["header"],
            "resource_name": "Portcullis MCP gateway"
        }))
    }
}
