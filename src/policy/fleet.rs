//! `[limits]`: where the quotas of a fleet of replicas are kept, and what happens when that
//! store cannot be reached.
//!
//! ```toml
//! [limits]
//! store = "redis://127.0.0.1:6379/0"   # or rediss:// for TLS
//! password = "env:REDIS_PASSWORD"      # a secret reference, never the value
//! on_store_error = "deny"              # or "local"
//! replicas = 3                         # how many replicas share the quotas ("local" divides by it)
//! store_timeout = "250ms"
//! ```

use std::time::Duration;

use super::model::SecretRef;
use super::raw::RawSharedLimits;
use super::validate::{parse_secret_ref, Checker};

pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_millis(250);
const DEFAULT_REDIS_PORT: u16 = 6379;

/// `[limits]`; without `store` every quota is kept in this process (governor).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SharedLimits {
    pub store: Option<QuotaStore>,
}

/// A Redis (or Valkey) server that holds every rate quota of the policy once for all replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaStore {
    /// `rediss://` (TLS, certificate checked against the system roots).
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: u32,
    pub password: Option<SecretRef>,
    pub on_error: OnStoreError,
    /// How many replicas share the quotas; `local` gives each replica 1/replicas of each quota.
    pub replicas: u32,
    /// Bound on one quota step (connect included); past it the step counts as a store error.
    pub timeout: Duration,
    /// `store_ca`: a PEM file of the CA that signed a `rediss://` store's certificate, trusted
    /// instead of the system roots (a private Redis has a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

impl QuotaStore {
    /// The store's address without credentials, for logs, errors and audit records.
    pub fn display(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("{scheme}://{host}:{}/{}", self.port, self.db)
    }
}

/// What a replica does when the quota store does not answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Refuse the call (-32014, audited): no replica can exceed a quota while the store is down.
    Deny,
    /// Enforce each quota in this process, divided by the expected replica count.
    Local,
}

/// `redis://HOST[:PORT][/DB]` or `rediss://...`, without credentials.
pub fn parse_store_url(s: &str) -> Result<(bool, String, u16, u32), String> {
    let (tls, rest) = if let Some(r) = s.strip_prefix("rediss://") {
        (true, r)
    } else if let Some(r) = s.strip_prefix("redis://") {
        (false, r)
    } else {
        return Err(format!(
            "`store` must be a redis:// or rediss:// URL such as \"redis://127.0.0.1:6379/0\", not \"{s}\""
        ));
    };
    let (authority, db) = match rest.split_once('/') {
        Some((a, "")) => (a, 0),
        Some((a, d)) => (
            a,
            d.parse::<u32>().map_err(|_| {
                format!("the database in \"{s}\" must be a number such as /0, not \"/{d}\"")
            })?,
        ),
        None => (rest, 0),
    };
    if authority.contains('@') {
        // Not echoed: the part before `@` may be a password.
        return Err("`store` must not carry credentials; put the password in `password = \"env:NAME\"` (or file:/dotenv:)".into());
    }
    if authority.contains(['?', '#']) {
        return Err(format!("`store` takes no query or fragment: \"{s}\""));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed `[` in \"{s}\""))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`store` names no host: \"{s}\""));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port \"{p}\" in \"{s}\""))?,
        None => DEFAULT_REDIS_PORT,
    };
    Ok((tls, host.to_string(), port, db))
}

impl Checker<'_> {
    pub(super) fn shared_limits(&mut self, r: RawSharedLimits) -> SharedLimits {
        let timeout = self
            .duration(&r.store_timeout, "store_timeout")
            .unwrap_or(DEFAULT_STORE_TIMEOUT);
        if let Some(v) = &r.store_timeout {
            if timeout.is_zero() || timeout > Duration::from_secs(10) {
                self.error(v.span().start, "`store_timeout` must be between 1ms and 10s: every rate-limited call waits for the store at most this long");
            }
        }
        let on_error = match r.on_store_error.as_ref().map(|v| (v.get_ref().as_str(), v)) {
            None | Some(("deny", _)) => OnStoreError::Deny,
            Some(("local", _)) => OnStoreError::Local,
            Some((other, v)) => {
                self.error(
                    v.span().start,
                    format!("unknown on_store_error \"{other}\"; use \"deny\" or \"local\""),
                );
                OnStoreError::Deny
            }
        };
        let replicas = match &r.replicas {
            Some(v) if *v.get_ref() == 0 || *v.get_ref() > 1000 => {
                self.error(v.span().start, "`replicas` must be between 1 and 1000");
                1
            }
            Some(v) => *v.get_ref() as u32,
            None => 1,
        };
        let password = r.password.as_ref().and_then(|v| {
            parse_secret_ref(v.get_ref())
                .map_err(|e| self.error(v.span().start, format!("`password`: {e}")))
                .ok()
        });
        let Some(store) = &r.store else {
            for (key, at) in [
                ("password", r.password.as_ref().map(|v| v.span().start)),
                (
                    "on_store_error",
                    r.on_store_error.as_ref().map(|v| v.span().start),
                ),
                ("replicas", r.replicas.as_ref().map(|v| v.span().start)),
                ("store_ca", r.store_ca.as_ref().map(|v| v.span().start)),
                (
                    "store_timeout",
                    r.store_timeout.as_ref().map(|v| v.span().start),
                ),
            ] {
                if let Some(at) = at {
                    let at = self.key_at(at, key);
                    self.error(at, format!("`{key}` applies only with `store = \"redis://...\"`; without a store every quota is kept in this process"));
                }
            }
            return SharedLimits::default();
        };
        match parse_store_url(store.get_ref()) {
            Ok((tls, host, port, db)) => {
                let ca_file = r.store_ca.as_ref().map(|v| {
                    if !tls {
                        self.error(
                            v.span().start,
                            "`store_ca` applies only to a TLS store (`rediss://`)",
                        );
                    }
                    std::path::PathBuf::from(v.get_ref())
                });
                SharedLimits {
                    store: Some(QuotaStore {
                        tls,
                        host,
                        port,
                        db,
                        password,
                        on_error,
                        replicas,
                        timeout,
                        ca_file,
                    }),
                }
            }
            Err(e) => {
                self.error(store.span().start, e);
                SharedLimits::default()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(body: &str) -> Result<SharedLimits, String> {
        let src = format!("[limits]\n{body}\n");
        crate::policy::parse(&src, "t.toml")
            .map(|p| p.limits)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_store_with_every_key() {
        let l = limits("store = \"rediss://cache.internal:6380/2\"\npassword = \"env:REDIS_PASSWORD\"\non_store_error = \"local\"\nreplicas = 3\nstore_timeout = \"100ms\"").unwrap();
        let s = l.store.unwrap();
        assert!(s.tls);
        assert_eq!((s.host.as_str(), s.port, s.db), ("cache.internal", 6380, 2));
        assert_eq!(s.password, Some(SecretRef::Env("REDIS_PASSWORD".into())));
        assert_eq!(s.on_error, OnStoreError::Local);
        assert_eq!(s.replicas, 3);
        assert_eq!(s.timeout, Duration::from_millis(100));
        assert_eq!(s.display(), "rediss://cache.internal:6380/2");
    }

    #[test]
    fn defaults_deny_one_replica_default_port() {
        let s = limits("store = \"redis://[::1]\"").unwrap().store.unwrap();
        assert_eq!((s.host.as_str(), s.port, s.db), ("::1", 6379, 0));
        assert_eq!(s.on_error, OnStoreError::Deny);
        assert_eq!(s.replicas, 1);
        assert_eq!(s.timeout, DEFAULT_STORE_TIMEOUT);
        assert_eq!(s.display(), "redis://[::1]:6379/0");
        assert_eq!(limits("").unwrap(), SharedLimits::default());
    }

    #[test]
    fn the_fleet_key_is_a_secret_reference() {
        let p =
            crate::policy::parse("[gateway]\nfleet_key = \"env:FLEET_KEY\"\n", "t.toml").unwrap();
        assert_eq!(
            p.gateway.fleet_key,
            Some(SecretRef::Env("FLEET_KEY".into()))
        );
        let e = crate::policy::parse("[gateway]\nfleet_key = \"hunter2\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`fleet_key`") && !e.contains("hunter2"), "{e}");
    }

    #[test]
    fn the_fleet_ca_is_a_path_beside_the_policy_and_needs_the_fleet_key() {
        let p = crate::policy::parse(
            "[gateway]\nfleet_key = \"env:K\"\nfleet_ca = \"fleet/ca.pem\"\n",
            "/etc/portcullis/t.toml",
        )
        .unwrap();
        assert!(p.gateway.fleet_ca.unwrap().ends_with("fleet/ca.pem"));
        let e = crate::policy::parse("[gateway]\nfleet_ca = \"/ca.pem\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`fleet_ca` applies only with `fleet_key`"),
            "{e}"
        );
        let e = crate::policy::parse(
            "[gateway]\nfleet_key = \"env:K\"\nfleet_ca = \" \"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`fleet_ca` is empty"), "{e}");
    }

    #[test]
    fn a_private_ca_is_for_a_tls_store_only() {
        let l = limits("store = \"rediss://r:6380\"\nstore_ca = \"/etc/ca.pem\"").unwrap();
        let ca = l.store.unwrap().ca_file;
        assert_eq!(ca, Some(std::path::PathBuf::from("/etc/ca.pem")));
        let e = limits("store = \"redis://r\"\nstore_ca = \"/etc/ca.pem\"").unwrap_err();
        assert!(e.contains("only to a TLS store"), "{e}");
        let e = limits("store_ca = \"/etc/ca.pem\"").unwrap_err();
        assert!(e.contains("applies only with `store"), "{e}");
    }

    #[test]
    fn bad_settings_are_errors_with_a_way_out() {
        let e = limits("store = \"redis://:hunter2@h:6379/0\"").unwrap_err();
        assert!(e.contains("must not carry credentials"), "{e}");
        assert!(!e.contains("hunter2"), "the password is not echoed: {e}");
        for (body, want) in [
            ("store = \"http://h:6379\"", "redis:// or rediss://"),
            ("store = \"redis://h:0\"", "invalid port"),
            ("store = \"redis://h:6379/x\"", "must be a number"),
            ("store = \"redis://:6379\"", "names no host"),
            (
                "store = \"redis://h\"\non_store_error = \"open\"",
                "use \"deny\" or \"local\"",
            ),
            ("store = \"redis://h\"\nreplicas = 0", "between 1 and 1000"),
            ("store = \"redis://h\"\npassword = \"s3cret\"", "`password`"),
            (
                "store = \"redis://h\"\nstore_timeout = \"1m\"",
                "between 1ms and 10s",
            ),
            ("on_store_error = \"local\"", "applies only with `store"),
            ("stor = \"redis://h\"", "stor"),
        ] {
            let e = limits(body).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
        }
    }
}
