//! How the gateway reaches a server it talks to over HTTP itself (`remote` and `openapi`): the
//! configured headers with their secrets filled in, a client that dials only what the server's
//! egress rules allow, and the OAuth token on each request with one renewal after a 401.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{connector, egress, error_chain, oauth, HttpClient};
use crate::policy::Server;
use crate::secrets::Redactor;

/// Replaces every `${secret:NAME}` in a header template with the secret's value.
fn render(template: &str, secrets: &[(String, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("${secret:") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "${secret:".len()..];
        let end = after
            .find('}')
            .ok_or("unclosed ${secret: in a header template")?;
        let name = &after[..end];
        let value = secrets
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("header uses secret `{name}`, which is not declared"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The policy's `headers` with their `${secret:NAME}`s filled in, marked sensitive.
fn configured_headers(
    templates: &std::collections::BTreeMap<String, String>,
    secrets: &[(String, String)],
) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::new();
    for (name, template) in templates {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("invalid header name `{name}`"))?;
        let value = render(template, secrets)?;
        // The error must not quote the value: it holds a secret.
        let mut value = HeaderValue::from_str(&value)
            .map_err(|_| format!("header `{name}` has a value that is not valid in HTTP"))?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    Ok(headers)
}

/// How the gateway reaches a server over HTTP (`remote`, `openapi`).
pub(in crate::upstream) struct Reach {
    /// The policy's headers, secrets filled in, marked sensitive.
    pub headers: HeaderMap,
    /// Dials only what the server's egress rules allow; verifies TLS (system roots or
    /// `ca_file`).
    pub client: HttpClient,
    /// With `oauth`: the source of access tokens (fetched through the same client, so under
    /// the same rules).
    pub oauth: Option<Arc<oauth::TokenSource>>,
}

pub(in crate::upstream) fn reach(
    server: &Server,
    headers: &std::collections::BTreeMap<String, String>,
    ca_file: Option<&std::path::Path>,
    oauth: Option<&crate::policy::OAuth>,
    secrets: &[(String, String)],
    redactor: &Arc<Redactor>,
) -> Result<Reach, String> {
    let headers = configured_headers(headers, secrets)?;
    let tls = connector::tls_config(ca_file).map_err(|e| e.to_string())?;
    let egress = egress::Egress::new(server.egress.allow.clone());
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector::Connector::new(egress, tls, ca_file.is_some()));
    let oauth = match oauth {
        Some(o) => Some(Arc::new(oauth::TokenSource::new(
            &server.name,
            o,
            secrets,
            client.clone(),
            redactor.clone(),
        )?)),
        None => None,
    };
    Ok(Reach {
        headers,
        client,
        oauth,
    })
}

/// Why a request got no HTTP answer.
pub(in crate::upstream) enum SendError {
    /// The server could not be reached, or did not answer in time.
    Connection(String),
    /// No access token could be obtained for it (the server itself may be fine).
    Token(String),
}

impl From<SendError> for String {
    fn from(e: SendError) -> String {
        match e {
            SendError::Connection(s) | SendError::Token(s) => s,
        }
    }
}

/// A copy of a request with `Authorization: Bearer token`.
fn with_bearer(
    parts: &http::request::Parts,
    body: Full<Bytes>,
    token: &str,
) -> Result<Request<Full<Bytes>>, SendError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| SendError::Token("the access token is not valid in a header".to_owned()))?;
    value.set_sensitive(true);
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(parts.uri.clone())
        .version(parts.version)
        .body(body)
        .map_err(|e| SendError::Connection(format!("cannot build the request: {e}")))?;
    *req.headers_mut() = parts.headers.clone();
    req.headers_mut().insert(AUTHORIZATION, value);
    Ok(req)
}

/// Sends requests with a server's client and, when `oauth` is configured, its access token.
pub(in crate::upstream) struct Sender<'a> {
    pub client: &'a HttpClient,
    pub oauth: Option<&'a oauth::TokenSource>,
    pub redactor: &'a Redactor,
}

impl Sender<'_> {
    /// Sends a request, with the access token when `oauth` is configured. A 401 gets one new
    /// token and one retry: a token refused twice is a configuration problem (scope, audience),
    /// not an expiry, and retrying further would only hammer the authorization server.
    pub(in crate::upstream) async fn send(
        &self,
        req: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<http::Response<Incoming>, SendError> {
        let Some(oauth) = self.oauth else {
            return self
                .send_once(req, limit)
                .await
                .map_err(SendError::Connection);
        };
        let (parts, body) = req.into_parts();
        let token = oauth
            .bearer()
            .await
            .map_err(|e| SendError::Token(e.to_string()))?;
        let first = with_bearer(&parts, body.clone(), &token)?;
        let resp = self
            .send_once(first, limit)
            .await
            .map_err(SendError::Connection)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        drop(resp);
        let token = oauth
            .renew(&token)
            .await
            .map_err(|e| SendError::Token(e.to_string()))?;
        let retry = with_bearer(&parts, body, &token)?;
        self.send_once(retry, limit)
            .await
            .map_err(SendError::Connection)
    }

    async fn send_once(
        &self,
        req: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<http::Response<Incoming>, String> {
        match tokio::time::timeout(limit, self.client.request(req)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(self.redactor.redact(&error_chain(&e)).into_owned()),
            Err(_) => Err(format!("no response within {}s", limit.as_secs())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_secret_references() {
        let s = vec![("TOKEN".to_owned(), "abc".to_owned())];
        assert_eq!(render("Bearer ${secret:TOKEN}", &s).unwrap(), "Bearer abc");
        assert_eq!(render("plain", &s).unwrap(), "plain");
        assert!(render("${secret:OTHER}", &s).is_err());
        assert!(render("${secret:TOKEN", &s).is_err());
    }
}
