//! One request to the token endpoint (RFC 6749 section 4.4 client credentials, section 6
//! refresh) and what its answer means, with errors that say what to fix.

use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use super::super::{error_chain, HttpClient};
use crate::policy::{ClientAuth, OAuth};
use crate::secrets::Redactor;

/// The whole exchange (connect, TLS, answer) must finish within this.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest token response read.
const MAX_RESPONSE: usize = 64 * 1024;
/// Longest piece of the authorization server's own text quoted in an error.
const EXCERPT: usize = 200;

/// A token request that did not produce a token.
#[derive(Debug, Clone, thiserror::Error)]
#[error("oauth token request to {url} failed: {reason}")]
pub struct OAuthError {
    pub url: String,
    pub reason: String,
    /// The authorization server answered `invalid_grant` (e.g. a refresh token it no longer
    /// accepts), as opposed to a transport or configuration problem.
    pub invalid_grant: bool,
}

pub enum Grant<'a> {
    ClientCredentials,
    Refresh(&'a str),
}

impl Grant<'_> {
    fn name(&self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::Refresh(_) => "refresh_token",
        }
    }
}

/// What the authorization server issued.
pub struct Issued {
    pub access_token: String,
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
}

/// Where and as whom tokens are requested.
pub struct Endpoint {
    pub http: HttpClient,
    pub uri: Uri,
    /// `scheme://host/path` of the token URL, for messages.
    pub shown: String,
    pub spec: OAuth,
    pub client_secret: Option<String>,
    pub redactor: std::sync::Arc<Redactor>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    error: String,
    error_description: Option<String>,
}

impl Endpoint {
    fn fail(&self, reason: impl Into<String>) -> OAuthError {
        OAuthError {
            url: self.shown.clone(),
            reason: reason.into(),
            invalid_grant: false,
        }
    }

    /// Asks for a token with `grant`.
    pub async fn request(&self, grant: &Grant<'_>) -> Result<Issued, OAuthError> {
        let req = self.build(grant)?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| self.fail(self.redactor.redact(&error_chain(&e)).into_owned()))?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| self.fail(format!("reading the answer failed: {e}")))?
                .to_bytes();
            Ok::<_, OAuthError>((status, body))
        };
        let (status, body) = tokio::time::timeout(TOKEN_TIMEOUT, exchange)
            .await
            .map_err(|_| self.fail(format!("no answer within {}s", TOKEN_TIMEOUT.as_secs())))??;
        if status.is_success() {
            return self.issued(&body);
        }
        Err(self.refused(grant, status, &body))
    }

    fn build(&self, grant: &Grant<'_>) -> Result<Request<Full<Bytes>>, OAuthError> {
        let spec = &self.spec;
        let mut form = vec![("grant_type", grant.name())];
        if let Grant::Refresh(token) = grant {
            form.push(("refresh_token", token));
        }
        for (k, v) in [
            ("scope", &spec.scope),
            ("resource", &spec.resource),
            ("audience", &spec.audience),
        ] {
            if let Some(v) = v {
                form.push((k, v));
            }
        }
        let mut basic = None;
        match (&self.client_secret, spec.client_auth) {
            (Some(secret), ClientAuth::Basic) => {
                // RFC 6749 section 2.3.1: both parts form-encoded before base64.
                let pair = format!("{}:{}", form_encode(&spec.client_id), form_encode(secret));
                let b64 = base64::engine::general_purpose::STANDARD.encode(pair);
                let mut v = HeaderValue::from_str(&format!("Basic {b64}"))
                    .map_err(|_| self.fail("the client credentials do not fit in a header"))?;
                v.set_sensitive(true);
                basic = Some(v);
            }
            (Some(secret), ClientAuth::Post) => {
                form.push(("client_id", &spec.client_id));
                form.push(("client_secret", secret));
            }
            // A public client identifies itself only.
            (None, _) => form.push(("client_id", &spec.client_id)),
        }
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        if let Some(b) = basic {
            req = req.header(AUTHORIZATION, b);
        }
        req.body(Full::new(Bytes::from(body)))
            .map_err(|e| self.fail(format!("cannot build the request: {e}")))
    }

    fn issued(&self, body: &[u8]) -> Result<Issued, OAuthError> {
        let answer: TokenAnswer = serde_json::from_slice(body).map_err(|e| {
            self.fail(format!(
                "the answer is not a token response (JSON with access_token): {e}"
            ))
        })?;
        let access_token = answer
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or_else(|| self.fail("the answer has no access_token"))?;
        // The token goes into a header; refuse what cannot be sent rather than fail later.
        if HeaderValue::from_str(&format!("Bearer {access_token}")).is_err() {
            return Err(self.fail("the access_token has characters not allowed in an HTTP header"));
        }
        if let Some(t) = &answer.token_type {
            if !t.eq_ignore_ascii_case("bearer") {
                return Err(self.fail(format!(
                    "token_type `{t}` is not supported; the gateway sends Bearer tokens (RFC 6750)"
                )));
            }
        }
        let expires_in = match &answer.expires_in {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => n.as_u64().or_else(|| {
                // A fractional or negative lifetime: treat as already short.
                n.as_f64().map(|f| f.max(0.0) as u64)
            }),
            Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        Ok(Issued {
            access_token,
            expires_in,
            refresh_token: answer.refresh_token.filter(|t| !t.is_empty()),
        })
    }

    fn refused(&self, grant: &Grant<'_>, status: http::StatusCode, body: &[u8]) -> OAuthError {
        let Ok(e) = serde_json::from_slice::<ErrorAnswer>(body) else {
            let text = String::from_utf8_lossy(&body[..body.len().min(EXCERPT)]);
            let text = self.redactor.redact(clean(&text).trim()).into_owned();
            return self.fail(if text.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {text}")
            });
        };
        let secret = |key: &str, name: &Option<String>| match name {
            Some(n) => format!("{key} (secret `{n}`)"),
            None => key.to_owned(),
        };
        let hint = match e.error.as_str() {
            "invalid_client" => format!(
                "check client_id and {}",
                secret("client_secret", &self.spec.client_secret)
            ),
            "invalid_grant" => match grant {
                Grant::Refresh(_) => format!(
                    "the refresh token was refused: expired, revoked or already used; get a new one and update {}",
                    secret("refresh_token", &self.spec.refresh_token)
                ),
                Grant::ClientCredentials => {
                    "the authorization server refused the client credentials grant".to_owned()
                }
            },
            "invalid_scope" => "check scope".to_owned(),
            "invalid_target" => "check resource and audience".to_owned(),
            "unauthorized_client" => format!(
                "this client may not use the {} grant; allow it at the authorization server",
                grant.name()
            ),
            "unsupported_grant_type" => format!(
                "the authorization server does not offer the {} grant",
                grant.name()
            ),
            _ => format!("HTTP {status}"),
        };
        let mut reason = format!("{} ({hint})", clean(&e.error));
        if let Some(d) = e.error_description.as_deref().map(clean) {
            let d: String = d.chars().take(EXCERPT).collect();
            if !d.trim().is_empty() {
                reason.push_str(": ");
                reason.push_str(&self.redactor.redact(d.trim()));
            }
        }
        OAuthError {
            url: self.shown.clone(),
            reason,
            invalid_grant: e.error == "invalid_grant",
        }
    }
}

/// Text from the authorization server without control characters (it ends up in logs).
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_follows_the_html_rules() {
        assert_eq!(form_encode("a b+c/d:é"), "a+b%2Bc%2Fd%3A%C3%A9");
        assert_eq!(form_encode("Az09-._*"), "Az09-._*");
    }
}
