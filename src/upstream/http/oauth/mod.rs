//! OAuth 2.1 for remote servers: the gateway is the OAuth client and gets its own access token
//! (client credentials, or a refresh token), which it sends as `Authorization: Bearer`.
//!
//! Tokens are reused until shortly before they expire, kept across restarts in a private cache
//! file (with a rotated refresh token, which the old one no longer replaces), and renewed once
//! when the server answers 401. A client's own credentials are never involved: they end at the
//! gateway. Every token obtained joins the live redaction set before it is used.

mod cache_file;
mod exchange;
mod metadata;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::HttpClient;
use crate::policy::{OAuth, OAuthGrant};
use crate::secrets::Redactor;
use cache_file::{CacheFile, Stored};
pub use exchange::OAuthError;
use exchange::{Endpoint, Grant, Issued};

/// A token is renewed this long before it expires (at most; a short-lived token is renewed
/// when a quarter of its lifetime is left), so that it does not expire in flight.
const MAX_EARLY_RENEWAL: Duration = Duration::from_secs(30);

pub struct TokenSource {
    server: Arc<str>,
    endpoint: Endpoint,
    cache: Arc<CacheFile>,
    /// The refresh token from the policy and its fingerprint.
    configured_refresh: Option<(String, String)>,
    /// Held while a token is fetched: concurrent callers wait for that one fetch.
    state: tokio::sync::Mutex<Tokens>,
}

#[derive(Default)]
struct Tokens {
    loaded: bool,
    /// The issuer's metadata named our token endpoint (always true without `oauth.issuer`).
    issuer_checked: bool,
    access: Option<Access>,
    refresh: Option<String>,
}

#[derive(Clone)]
struct Access {
    token: String,
    expires_at_ms: Option<u64>,
    lifetime_s: Option<u64>,
}

impl Access {
    fn usable(&self, now_ms: u64) -> bool {
        let Some(expires) = self.expires_at_ms else {
            return true; // no expiry given: used until the server refuses it
        };
        let early = self
            .lifetime_s
            .map_or(MAX_EARLY_RENEWAL, |l| Duration::from_secs(l) / 4)
            .min(MAX_EARLY_RENEWAL);
        now_ms.saturating_add(early.as_millis() as u64) < expires
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl TokenSource {
    /// `secrets` are the server's resolved secrets, where the client secret and the refresh
    /// token are looked up by name.
    pub fn new(
        server: &str,
        spec: &OAuth,
        secrets: &[(String, String)],
        http: HttpClient,
        redactor: Arc<Redactor>,
    ) -> Result<TokenSource, String> {
        let lookup = |name: &Option<String>| -> Result<Option<String>, String> {
            match name {
                None => Ok(None),
                Some(n) => secrets
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, v)| Some(v.clone()))
                    .ok_or_else(|| format!("oauth uses secret `{n}`, which is not declared")),
            }
        };
        let uri: http::Uri = spec
            .token_url
            .parse()
            .map_err(|e| format!("invalid oauth token_url `{}`: {e}", spec.token_url))?;
        let shown = format!(
            "{}://{}{}",
            uri.scheme_str().unwrap_or("https"),
            uri.authority().map_or("", |a| a.as_str()),
            uri.path()
        );
        let configured_refresh = lookup(&spec.refresh_token)?.map(|t| {
            let fp = sha256_hex(&t);
            (t, fp)
        });
        Ok(TokenSource {
            server: Arc::from(server),
            endpoint: Endpoint {
                http,
                uri,
                shown,
                spec: spec.clone(),
                client_secret: lookup(&spec.client_secret)?,
                redactor,
            },
            cache: Arc::new(CacheFile::new(spec.cache_file.clone())),
            configured_refresh,
            state: tokio::sync::Mutex::new(Tokens::default()),
        })
    }

    /// A usable access token: the current one, or a new one.
    pub async fn bearer(&self) -> Result<String, OAuthError> {
        let mut tokens = self.state.lock().await;
        self.load(&mut tokens).await;
        if let Some(a) = tokens.access.as_ref().filter(|a| a.usable(now_ms())) {
            return Ok(a.token.clone());
        }
        self.fetch(&mut tokens).await
    }

    /// A new access token after the server refused `rejected`. Callers that saw the same
    /// refusal at the same time share one renewal.
    pub async fn renew(&self, rejected: &str) -> Result<String, OAuthError> {
        let mut tokens = self.state.lock().await;
        if let Some(a) = tokens.access.as_ref() {
            if a.token != rejected && a.usable(now_ms()) {
                return Ok(a.token.clone());
            }
        }
        tracing::info!(server = %self.server, "the server refused our access token (401); getting a new one");
        tokens.access = None;
        self.fetch(&mut tokens).await
    }

    /// Reads the cache once: tokens issued for these settings survive a restart.
    async fn load(&self, tokens: &mut Tokens) {
        if tokens.loaded {
            return;
        }
        tokens.loaded = true;
        tokens.refresh = self.configured_refresh.as_ref().map(|(t, _)| t.clone());
        let cache = self.cache.clone();
        let stored = match tokio::task::spawn_blocking(move || cache.load()).await {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!(server = %self.server, error = %e, "not using the token cache");
                return;
            }
            Err(e) => {
                tracing::warn!(server = %self.server, error = %e, "reading the token cache failed");
                return;
            }
        };
        let spec = &self.endpoint.spec;
        // Credentials belong to the authorization server that issued them (MCP 2026-07-28):
        // a cache written for another issuer is never used.
        let same_settings = stored.token_url == spec.token_url
            && stored.issuer == spec.issuer
            && stored.client_id == spec.client_id
            && stored.scope == spec.scope
            && stored.resource == spec.resource
            && stored.audience == spec.audience;
        if !same_settings {
            tracing::info!(server = %self.server, "the token cache was written for other oauth settings; not using it");
            return;
        }
        let configured_fp = self.configured_refresh.as_ref().map(|(_, fp)| fp.clone());
        if spec.grant() == OAuthGrant::RefreshToken
            && stored.configured_refresh_sha256 != configured_fp
        {
            tracing::info!(server = %self.server, "the policy's refresh token changed since the cache was written; starting from the new one");
            return;
        }
        let label = format!("oauth:{}", self.server);
        if let Some(t) = &stored.access_token {
            crate::secrets::live().remember(&label, t);
            tokens.access = Some(Access {
                token: t.clone(),
                expires_at_ms: stored.expires_at_ms,
                lifetime_s: stored.lifetime_s,
            });
        }
        if let Some(r) = &stored.refresh_token {
            crate::secrets::live().remember(&label, r);
            tokens.refresh = Some(r.clone());
        }
        tracing::debug!(server = %self.server, path = %self.cache.path().display(), "loaded cached oauth tokens");
    }

    /// Gets a new access token: with the refresh token when there is one, else with the client
    /// credentials. A client-credentials client whose (server-issued) refresh token is no longer
    /// accepted falls back to its credentials.
    async fn fetch(&self, tokens: &mut Tokens) -> Result<String, OAuthError> {
        if let (Some(issuer), false) = (&self.endpoint.spec.issuer, tokens.issuer_checked) {
            metadata::verify_issuer(&self.endpoint.http, issuer, &self.endpoint.spec.token_url)
                .await?;
            tracing::info!(server = %self.server, issuer = %issuer, "the authorization server's metadata names this issuer and our token_url");
            tokens.issuer_checked = true;
        }
        let grant_is_refresh = self.endpoint.spec.grant() == OAuthGrant::RefreshToken;
        let issued = match tokens.refresh.clone() {
            Some(refresh) => match self.endpoint.request(&Grant::Refresh(&refresh)).await {
                Ok(i) => i,
                Err(e) if e.invalid_grant && !grant_is_refresh => {
                    tracing::info!(server = %self.server, "the authorization server no longer accepts our refresh token; using the client credentials");
                    tokens.refresh = None;
                    self.endpoint.request(&Grant::ClientCredentials).await?
                }
                Err(e) => return Err(e),
            },
            None if grant_is_refresh => {
                return Err(OAuthError {
                    url: self.endpoint.shown.clone(),
                    reason: "no refresh token".to_owned(),
                    invalid_grant: false,
                })
            }
            None => self.endpoint.request(&Grant::ClientCredentials).await?,
        };
        Ok(self.accept(tokens, issued).await)
    }

    /// Takes a new token into use: redacted from now on, kept in memory, written to the cache.
    async fn accept(&self, tokens: &mut Tokens, issued: Issued) -> String {
        let label = format!("oauth:{}", self.server);
        let live = crate::secrets::live();
        live.remember(&label, &issued.access_token);
        let rotated = issued.refresh_token.is_some();
        if let Some(r) = issued.refresh_token {
            live.remember(&label, &r);
            tokens.refresh = Some(r);
        }
        let access = Access {
            token: issued.access_token,
            expires_at_ms: issued
                .expires_in
                .map(|s| now_ms().saturating_add(s.saturating_mul(1000))),
            lifetime_s: issued.expires_in,
        };
        tracing::info!(
            server = %self.server,
            token_url = %self.endpoint.shown,
            expires_in_s = issued.expires_in,
            new_refresh_token = rotated,
            "obtained an oauth access token"
        );
        tokens.access = Some(access.clone());
        let spec = &self.endpoint.spec;
        let stored = Stored {
            token_url: spec.token_url.clone(),
            issuer: spec.issuer.clone(),
            client_id: spec.client_id.clone(),
            scope: spec.scope.clone(),
            resource: spec.resource.clone(),
            audience: spec.audience.clone(),
            configured_refresh_sha256: self.configured_refresh.as_ref().map(|(_, fp)| fp.clone()),
            access_token: Some(access.token.clone()),
            expires_at_ms: access.expires_at_ms,
            lifetime_s: access.lifetime_s,
            refresh_token: tokens.refresh.clone(),
        };
        let cache = self.cache.clone();
        match tokio::task::spawn_blocking(move || cache.store(&stored)).await {
            Ok(Ok(())) => {}
            // The token still works for this run; a lost rotated refresh token would need a
            // new one from the operator after a restart, so say so loudly.
            Ok(Err(e)) => {
                tracing::error!(server = %self.server, error = %e, "cannot write the token cache; tokens are kept in memory only")
            }
            Err(e) => {
                tracing::error!(server = %self.server, error = %e, "writing the token cache failed")
            }
        }
        access.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_shortly_before_they_expire() {
        let a = |expires_at_ms, lifetime_s| Access {
            token: "t".into(),
            expires_at_ms,
            lifetime_s,
        };
        assert!(a(None, None).usable(u64::MAX - 1));
        // An hour-long token: renewed in its last 30 seconds.
        assert!(a(Some(3_600_000), Some(3600)).usable(3_569_000));
        assert!(!a(Some(3_600_000), Some(3600)).usable(3_571_000));
        // A 4-second token: renewed in its last second.
        assert!(a(Some(4_000), Some(4)).usable(2_900));
        assert!(!a(Some(4_000), Some(4)).usable(3_100));
    }
}
