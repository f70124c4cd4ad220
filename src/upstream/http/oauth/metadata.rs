//! The issuer check (RFC 8414 authorization server metadata) made before any credential leaves
//! the gateway.
//!
//! MCP 2026-07-28 binds client credentials to the authorization server that issued them: they
//! are keyed by its issuer identifier and never used with another one. With `oauth.issuer` set,
//! the gateway reads that issuer's metadata and goes on only when the metadata names exactly
//! this issuer (RFC 8414 section 3.3) and exactly the configured `token_url` as its token
//! endpoint. A token URL moved to another server, or metadata that claims another issuer, stops
//! the exchange before the client secret or refresh token is sent.
//!
//! The gateway redeems no authorization codes (it uses the client credentials and refresh
//! grants), so the RFC 9207 `iss` parameter of authorization responses never reaches it; this
//! check is what holds its credentials to their issuer instead.

use std::time::Duration;

use bytes::Bytes;
use http::header::ACCEPT;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use serde::Deserialize;

use super::super::{error_chain, HttpClient};
use super::OAuthError;

/// One metadata request must finish within this.
const METADATA_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest metadata document read.
const MAX_METADATA: usize = 256 * 1024;

#[derive(Deserialize)]
struct Metadata {
    issuer: Option<String>,
    token_endpoint: Option<String>,
}

/// Where an issuer's metadata may be, in the order RFC 8414 section 3.1 and MCP's
/// authorization server discovery try them: OAuth metadata, then OpenID Connect discovery
/// (path inserted, then path appended).
pub fn metadata_urls(issuer: &str) -> Result<Vec<String>, String> {
    let uri: Uri = issuer
        .parse()
        .map_err(|e| format!("the issuer `{issuer}` is not a URL: {e}"))?;
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri
        .authority()
        .ok_or_else(|| format!("the issuer `{issuer}` has no host"))?;
    let path = uri.path().trim_end_matches('/');
    let base = format!("{scheme}://{authority}");
    Ok(if path.is_empty() {
        vec![
            format!("{base}/.well-known/oauth-authorization-server"),
            format!("{base}/.well-known/openid-configuration"),
        ]
    } else {
        vec![
            format!("{base}/.well-known/oauth-authorization-server{path}"),
            format!("{base}/.well-known/openid-configuration{path}"),
            format!("{base}{path}/.well-known/openid-configuration"),
        ]
    })
}

/// Checks that `issuer`'s metadata names `issuer` itself and `token_url` as its token endpoint.
pub async fn verify_issuer(
    http: &HttpClient,
    issuer: &str,
    token_url: &str,
) -> Result<(), OAuthError> {
    let fail = |reason: String| OAuthError {
        url: issuer.to_owned(),
        reason,
        invalid_grant: false,
    };
    let mut tried = Vec::new();
    for url in metadata_urls(issuer).map_err(fail)? {
        match fetch(http, &url).await.map_err(fail)? {
            None => tried.push(url),
            Some(m) => return check(&m, &url, issuer, token_url).map_err(fail),
        }
    }
    Err(fail(format!(
        "no authorization server metadata found (tried {}); without it the gateway cannot check that `token_url` belongs to this issuer. Check `oauth.issuer`, or remove it to use `token_url` unchecked",
        tried.join(", ")
    )))
}

fn check(m: &Metadata, url: &str, issuer: &str, token_url: &str) -> Result<(), String> {
    // RFC 8414 section 3.3: identical, character for character.
    match m.issuer.as_deref() {
        Some(i) if i == issuer => {}
        Some(i) => {
            return Err(format!(
                "the metadata at {url} names issuer `{}`, not `{issuer}` (RFC 8414 section 3.3); refusing to send credentials to an authorization server that is not the configured issuer",
                clean(i)
            ))
        }
        None => return Err(format!("the metadata at {url} has no `issuer`")),
    }
    match m.token_endpoint.as_deref() {
        Some(t) if t == token_url => Ok(()),
        Some(t) => Err(format!(
            "issuer `{issuer}` names `{}` as its token endpoint, not the configured token_url `{token_url}`; refusing to send this issuer's credentials elsewhere. Set token_url to the issuer's token endpoint",
            clean(t)
        )),
        None => Err(format!(
            "the metadata at {url} has no `token_endpoint`"
        )),
    }
}

/// The metadata at `url`; `None` when there is none there (404 and the like).
async fn fetch(http: &HttpClient, url: &str) -> Result<Option<Metadata>, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let req = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("cannot build the request to {url}: {e}"))?;
    let exchange = async {
        let resp = http
            .request(req)
            .await
            .map_err(|e| format!("{url}: {}", error_chain(&e)))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_METADATA)
            .collect()
            .await
            .map_err(|e| format!("reading {url} failed: {e}"))?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(METADATA_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {}s", METADATA_TIMEOUT.as_secs()))??;
    if matches!(
        status,
        StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::GONE
    ) {
        return Ok(None);
    }
    if !status.is_success() {
        return Err(format!("{url} answered HTTP {status}"));
    }
    serde_json::from_slice(&body)
        .map(Some)
        .map_err(|e| format!("{url} is not authorization server metadata (JSON): {e}"))
}

/// Text from the authorization server without control characters (it ends up in logs), cut
/// short.
fn clean(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_looked_for_where_rfc_8414_and_oidc_put_it() {
        assert_eq!(
            metadata_urls("https://as.example.com").unwrap(),
            [
                "https://as.example.com/.well-known/oauth-authorization-server",
                "https://as.example.com/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("https://as.example.com:8443/tenant/1/").unwrap(),
            [
                "https://as.example.com:8443/.well-known/oauth-authorization-server/tenant/1",
                "https://as.example.com:8443/.well-known/openid-configuration/tenant/1",
                "https://as.example.com:8443/tenant/1/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn the_issuer_and_token_endpoint_must_match_exactly() {
        let m = |issuer: &str, token: &str| Metadata {
            issuer: Some(issuer.into()),
            token_endpoint: Some(token.into()),
        };
        let ok = check(
            &m("https://as.example.com", "https://as.example.com/token"),
            "u",
            "https://as.example.com",
            "https://as.example.com/token",
        );
        assert!(ok.is_ok());
        // A trailing slash is another issuer (RFC 8414 section 3.3 compares strings).
        let e = check(
            &m("https://as.example.com/", "https://as.example.com/token"),
            "u",
            "https://as.example.com",
            "https://as.example.com/token",
        )
        .unwrap_err();
        assert!(e.contains("names issuer `https://as.example.com/`"), "{e}");
        let e = check(
            &m("https://as.example.com", "https://other.example.net/token"),
            "u",
            "https://as.example.com",
            "https://as.example.com/token",
        )
        .unwrap_err();
        assert!(e.contains("not the configured token_url"), "{e}");
    }
}
