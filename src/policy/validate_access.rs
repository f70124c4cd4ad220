//! Validation of who may connect: `[clients]` (tokens, tool patterns, rules), the listener's TLS,
//! JWT settings, client quotas (call rates, sessions, share of call slots), and the rule that a
//! listener off loopback needs both TLS and client authentication.

use std::collections::{BTreeMap, BTreeSet};

use toml::{Spanned, Value};

use super::model::{Auth, Client, Gateway, Jwt, JwtAlgorithm, JwtKey, Rate, Tls};
use super::quotas::MAX_WEIGHT;
use super::raw::{RawAuth, RawClient, RawTls, Str};
use super::validate::{parse_secret_ref, Checker};

const DEFAULT_LEEWAY: std::time::Duration = std::time::Duration::from_secs(30);

/// A client's session and slot quotas as written (defaults are filled in by
/// [`super::Policy::client_quotas`]).
pub(super) struct WrittenQuotas {
    pub max_sessions: Option<usize>,
    pub session_rate: Option<Rate>,
    pub weight: Option<u32>,
}

impl Checker<'_> {
    pub(super) fn tls(&mut self, t: &Spanned<RawTls>) -> Tls {
        let t = t.get_ref();
        Tls {
            cert: self.resolve(t.cert.get_ref()),
            key: self.resolve(t.key.get_ref()),
            client_ca: t.client_ca.as_ref().map(|c| self.resolve(c.get_ref())),
        }
    }

    pub(super) fn tool_rates(
        &mut self,
        raw: &Option<Spanned<BTreeMap<Str, Spanned<Value>>>>,
    ) -> BTreeMap<String, Rate> {
        let mut out = BTreeMap::new();
        for (tool, rate) in raw.iter().flat_map(|r| r.get_ref().iter()) {
            if tool.get_ref().contains("__") {
                self.error(tool.span().start, format!("tool_rates names upstream tools; write \"{}\" without the `server__` prefix", tool.get_ref().split_once("__").map_or("", |x| x.1)));
            }
            if let Some(r) = self.rate(&Some(rate.clone())) {
                out.insert(tool.get_ref().clone(), r);
            }
        }
        out
    }

    pub(super) fn client(
        &mut self,
        name: &Str,
        rc: RawClient,
        servers: &BTreeSet<String>,
        tokens: &mut BTreeMap<String, String>,
        gateway_max_sessions: usize,
    ) -> Option<Client> {
        let n = name.get_ref();
        let before = self.diags.len();
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            self.error(
                name.span().start,
                format!("client name `{n}` is invalid; use 1-64 letters, digits, `-`, `_` or `.`"),
            );
        }
        if let Some(t) = &rc.token_sha256 {
            let h = t.get_ref();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.error(t.span().start, "`token_sha256` must be 64 hex digits: the SHA-256 of the token, e.g. from `printf %s \"$TOKEN\" | sha256sum`");
            } else if h.bytes().any(|b| b.is_ascii_uppercase()) {
                self.error(
                    t.span().start,
                    format!(
                        "`token_sha256` must be lower-case hex; write \"{}\"",
                        h.to_ascii_lowercase()
                    ),
                );
            } else if let Some(other) = tokens.insert(h.clone(), n.clone()) {
                self.error(t.span().start, format!("client `{n}` has the same token as client `{other}`; give every client its own token"));
            }
        }
        let allow = self.patterns(&rc.allow, true);
        let deny = self.patterns(&rc.deny, true);
        for p in rc.allow.iter().chain(rc.deny.iter()).flatten() {
            self.pattern_server(p, servers);
        }
        let rules = self.client_rules(&rc.rules, servers);
        let confirm_timeout = self.duration(&rc.confirm_timeout, "confirm_timeout");
        let max_waiting_approvals = self.max_waiting_approvals(n, &rc.max_waiting_approvals);
        let quotas = self.client_quotas(n, &rc, gateway_max_sessions);
        if self.diags.len() != before {
            return None;
        }
        let rate = self.rate(&rc.rate);
        Some(Client {
            name: n.clone(),
            token_sha256: rc.token_sha256.map(|t| t.into_inner()),
            jwt_subject: rc.jwt_subject.map(|t| t.into_inner()),
            rate,
            max_sessions: quotas.max_sessions,
            session_rate: quotas.session_rate,
            weight: quotas.weight,
            allow,
            deny,
            rules,
            confirm_timeout,
            max_waiting_approvals,
        })
    }

    /// `max_sessions`, `session_rate` and `weight` of client `name`; a session quota above the
    /// gateway's own limit could never be reached, so it is refused rather than capped silently.
    pub(super) fn client_quotas(
        &mut self,
        name: &str,
        rc: &RawClient,
        gateway_max_sessions: usize,
    ) -> WrittenQuotas {
        let max_sessions = self
            .count(&rc.max_sessions, "max_sessions", (1, 1_000_000))
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        if let (Some(n), Some(at)) = (max_sessions, &rc.max_sessions) {
            if n > gateway_max_sessions {
                self.error(at.span().start, format!("client `{name}` has max_sessions = {n}, more than the gateway's own limit (gateway.max_sessions = {gateway_max_sessions}); lower it to at most {gateway_max_sessions}, or raise gateway.max_sessions"));
            }
        }
        let weight = self
            .count(&rc.weight, "weight", (1, u64::from(MAX_WEIGHT)))
            .map(|n| u32::try_from(n).unwrap_or(MAX_WEIGHT));
        WrittenQuotas {
            max_sessions,
            session_rate: self.rate(&rc.session_rate),
            weight,
        }
    }

    pub(super) fn auth(&mut self, a: RawAuth) -> Auth {
        let jwt = a.jwt.as_ref().and_then(|j| self.jwt(j));
        let resource = a.resource.map(|r| {
            if !(r.get_ref().starts_with("https://") || r.get_ref().starts_with("http://")) {
                self.error(r.span().start, format!("auth.resource \"{}\" must be this gateway's URL, like \"https://gateway.example/mcp\"", r.get_ref()));
            }
            r.into_inner()
        });
        Auth {
            jwt,
            resource,
            authorization_servers: Self::strings(&a.authorization_servers),
        }
    }

    fn jwt(&mut self, j: &Spanned<RawJwt>) -> Option<Jwt> {
        let at = j.span().start;
        let j = j.get_ref();
        let keys = [
            j.secret.as_ref().map(|s| ("secret", s)),
            j.public_key.as_ref().map(|s| ("public_key", s)),
            j.jwks.as_ref().map(|s| ("jwks", s)),
        ];
        let given: Vec<(&str, &Str)> = keys.into_iter().flatten().collect();
        let key = match given.as_slice() {
            [("secret", s)] => match parse_secret_ref(s.get_ref()) {
                Ok(r) => JwtKey::Secret(r),
                Err(e) => {
                    self.error(s.span().start, e);
                    return None;
                }
            },
            [("public_key", p)] => JwtKey::PublicKeyPem(self.resolve(p.get_ref())),
            [("jwks", p)] => JwtKey::Jwks(self.resolve(p.get_ref())),
            _ => {
                self.error(at, "[auth.jwt] needs exactly one key source: `secret` (HS256, e.g. \"env:JWT_SECRET\"), `public_key` (PEM file) or `jwks` (JWKS file)");
                return None;
            }
        };
        let algorithms = match &j.algorithms {
            None => match key {
                JwtKey::Secret(_) => vec![JwtAlgorithm::Hs256],
                _ => vec![JwtAlgorithm::Rs256, JwtAlgorithm::EdDsa],
            },
            Some(list) => {
                let mut out = Vec::new();
                for a in list {
                    match a.get_ref().as_str() {
                        "HS256" => out.push(JwtAlgorithm::Hs256),
                        "RS256" => out.push(JwtAlgorithm::Rs256),
                        "EdDSA" => out.push(JwtAlgorithm::EdDsa),
                        other => self.error(a.span().start, format!("unsupported JWT algorithm \"{other}\"; use \"HS256\", \"RS256\" or \"EdDSA\"")),
                    }
                }
                out
            }
        };
        let symmetric = matches!(key, JwtKey::Secret(_));
        if algorithms
            .iter()
            .any(|a| (*a == JwtAlgorithm::Hs256) != symmetric)
        {
            // Mixing HS256 with a public key is the classic algorithm-confusion hole.
            self.error(
                at,
                "HS256 goes only with `secret`, and RS256/EdDSA only with `public_key` or `jwks`",
            );
        }
        Some(Jwt {
            issuer: j.issuer.get_ref().clone(),
            audience: j.audience.get_ref().clone(),
            algorithms,
            key,
            client_claim: j
                .client_claim
                .as_ref()
                .map_or_else(|| "sub".to_owned(), |c| c.get_ref().clone()),
            leeway: self.duration(&j.leeway, "leeway").unwrap_or(DEFAULT_LEEWAY),
        })
    }

    /// A listener off loopback is reachable by other machines: refuse it unless clients must
    /// authenticate and the connection is encrypted.
    pub(super) fn listener_safety(
        &mut self,
        gateway: &Gateway,
        clients: &BTreeMap<String, Client>,
        auth: &Auth,
        listen_at: usize,
    ) {
        if gateway.listen.ip().is_loopback() {
            return;
        }
        let authenticated = auth.jwt.is_some()
            || clients
                .values()
                .any(|c| c.token_sha256.is_some() || c.jwt_subject.is_some());
        let mut missing = Vec::new();
        if gateway.tls.is_none() {
            missing.push("TLS ([gateway.tls] cert and key)");
        }
        if !authenticated {
            missing.push("client authentication (a [clients.NAME] token_sha256, or [auth.jwt])");
        }
        if !missing.is_empty() {
            self.error(
                listen_at,
                format!(
                    "listen = \"{}\" is not a loopback address, so it needs {}; keep \"127.0.0.1:{}\" for local use",
                    gateway.listen,
                    missing.join(" and "),
                    gateway.listen.port()
                ),
            );
        }
    }
}

use super::raw::RawJwt;
