//! DNS-rebinding defence: every request's `Host` and `Origin` must name this gateway.
//!
//! A web page the developer visits could otherwise make the browser talk to the loopback
//! gateway (via a hostile DNS name that resolves to 127.0.0.1). Loopback names are always
//! allowed; anything else must be listed in the policy.

use http::HeaderMap;

#[derive(Debug, Clone)]
pub struct Guard {
    allowed_hosts: Vec<String>,
    allowed_origins: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejection {
    #[error("missing Host header")]
    MissingHost,
    #[error("Host `{0}` is not allowed; only loopback names (localhost, 127.0.0.1, [::1]) and gateway.allowed_hosts are accepted")]
    Host(String),
    #[error("Origin `{0}` is not allowed; only loopback origins and gateway.allowed_origins are accepted")]
    Origin(String),
}

impl Guard {
    pub fn new(allowed_hosts: &[String], allowed_origins: &[String]) -> Guard {
        Guard {
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allowed_origins: allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// `authority` is the request URI's authority (HTTP/2) when present.
    pub fn check(&self, headers: &HeaderMap, authority: Option<&str>) -> Result<(), Rejection> {
        let host = headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or(authority)
            .ok_or(Rejection::MissingHost)?;
        let host_l = host.to_ascii_lowercase();
        if !is_loopback_authority(&host_l) && !self.host_listed(&host_l) {
            return Err(Rejection::Host(host.to_owned()));
        }
        self.check_origin(headers)
    }

    /// The Origin half alone, for the fleet hop endpoint: a hop is addressed by whatever name
    /// the owner advertises (a pod's DNS name on Kubernetes), and what makes it safe is the
    /// fleet key's signature, which no web page can produce; a browser's request still carries
    /// an Origin, and that is still judged.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Rejection> {
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("<non-ASCII>");
            let o = origin.trim_end_matches('/').to_ascii_lowercase();
            let ok = match o.split_once("://") {
                Some(("http" | "https", rest)) => {
                    is_loopback_authority(rest) || self.allowed_origins.contains(&o)
                }
                _ => self.allowed_origins.contains(&o),
            };
            if !ok {
                return Err(Rejection::Origin(origin.to_owned()));
            }
        }
        Ok(())
    }

    fn host_listed(&self, host: &str) -> bool {
        let bare = strip_port(host);
        self.allowed_hosts.iter().any(|h| h == host || h == bare)
    }
}

fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        return match rest.find(']') {
            Some(i) => &authority[..i + 2],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

fn is_loopback_authority(authority: &str) -> bool {
    let host = strip_port(authority);
    if let Some(rest) = authority.strip_prefix(host) {
        if !(rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        {
            return false;
        }
    }
    match host {
        "localhost" | "[::1]" => true,
        h => h
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(http::header::HOST, v.parse().unwrap());
        }
        if let Some(v) = origin {
            h.insert(http::header::ORIGIN, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn loopback_hosts_and_origins_pass() {
        let g = Guard::new(&[], &[]);
        for host in [
            "127.0.0.1:8811",
            "localhost:8811",
            "localhost",
            "[::1]:8811",
            "127.0.0.2",
        ] {
            assert_eq!(g.check(&headers(Some(host), None), None), Ok(()), "{host}");
        }
        for origin in [
            "http://localhost:3000",
            "http://127.0.0.1",
            "https://[::1]:99",
        ] {
            assert_eq!(
                g.check(&headers(Some("localhost"), Some(origin)), None),
                Ok(()),
                "{origin}"
            );
        }
    }

    #[test]
    fn rebinding_attempts_are_rejected() {
        let g = Guard::new(&[], &[]);
        assert!(matches!(
            g.check(&headers(Some("evil.example:8811"), None), None),
            Err(Rejection::Host(_))
        ));
        assert!(matches!(
            g.check(&headers(Some("localhost.evil.example"), None), None),
            Err(Rejection::Host(_))
        ));
        assert!(matches!(
            g.check(&headers(Some("127.0.0.1.nip.io"), None), None),
            Err(Rejection::Host(_))
        ));
        assert!(matches!(
            g.check(
                &headers(Some("localhost:8811"), Some("http://evil.example")),
                None
            ),
            Err(Rejection::Origin(_))
        ));
        assert!(matches!(
            g.check(&headers(Some("localhost"), Some("null")), None),
            Err(Rejection::Origin(_))
        ));
        assert_eq!(
            g.check(&headers(None, None), None),
            Err(Rejection::MissingHost)
        );
    }

    #[test]
    fn policy_lists_extend_the_defaults() {
        let g = Guard::new(
            &["gateway.internal".into()],
            &["https://app.example".into()],
        );
        assert_eq!(
            g.check(
                &headers(Some("gateway.internal:8811"), Some("https://app.example")),
                None
            ),
            Ok(())
        );
    }
}
