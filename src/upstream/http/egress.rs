//! The in-process egress check for remote servers.
//!
//! Remote servers are reached by the gateway itself, not from a sandboxed network, so the
//! nftables side does not apply: the same rules are enforced here, on every connection. The
//! host name is resolved once per connection and the connection goes to an address that passed
//! the check (never to a fresh lookup), so a DNS answer cannot change between check and use.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use crate::policy::egress::is_special;
use crate::policy::{EgressHost, EgressRule};

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum EgressError {
    #[error(
        "egress to `{host}` is not allowed: the host matches no name in the server's egress.allow"
    )]
    HostNotAllowed { host: String },
    #[error("egress to `{host}` is not allowed: it resolves only to {addrs}, which are private, loopback, link-local or metadata addresses; allow them explicitly with a CIDR rule in egress.allow (e.g. \"{example}\")")]
    PrivateAddress {
        host: String,
        addrs: String,
        example: String,
    },
    #[error("cannot resolve `{host}`: {reason}")]
    Resolve { host: String, reason: String },
}

/// The egress rules of one remote server.
#[derive(Debug, Clone)]
pub struct Egress {
    rules: Vec<EgressRule>,
}

impl Egress {
    pub fn new(rules: Vec<EgressRule>) -> Egress {
        Egress { rules }
    }

    /// Checks a DNS name against the name rules. With no name rules, the URL's own host is the
    /// only name ever dialled, so it is allowed (an empty list means "the URL's host only").
    pub fn check_name(&self, host: &str, port: u16) -> Result<(), EgressError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let mut names = self
            .rules
            .iter()
            .filter(|r| !matches!(r.host, EgressHost::Cidr { .. }))
            .peekable();
        if names.peek().is_none() {
            return Ok(());
        }
        if names.any(|r| r.permits_name(&host, port)) {
            Ok(())
        } else {
            Err(EgressError::HostNotAllowed { host })
        }
    }

    /// Whether an address may be dialled: public addresses may, special ones only when a CIDR
    /// rule names them.
    pub fn address_allowed(&self, addr: SocketAddr) -> bool {
        if !is_special(addr.ip()) {
            return true;
        }
        self.rules.iter().any(|r| r.covers(addr))
    }

    /// Resolves `host` and returns the addresses that may be dialled, in resolver order.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = if let Ok(ip) = bare.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port)]
        } else {
            self.check_name(bare, port)?;
            let lookup = tokio::net::lookup_host((bare, port));
            match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
                Ok(Ok(a)) => a.collect(),
                Ok(Err(e)) => {
                    return Err(EgressError::Resolve {
                        host: bare.to_owned(),
                        reason: e.to_string(),
                    })
                }
                Err(_) => {
                    return Err(EgressError::Resolve {
                        host: bare.to_owned(),
                        reason: format!("no answer within {}s", LOOKUP_TIMEOUT.as_secs()),
                    })
                }
            }
        };
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.address_allowed(*a))
            .collect();
        if allowed.is_empty() {
            let example = addrs.first().map_or_else(String::new, |a| match a.ip() {
                IpAddr::V4(ip) => format!("{ip}/32:{port}"),
                IpAddr::V6(ip) => format!("[{ip}/128]:{port}"),
            });
            return Err(EgressError::PrivateAddress {
                host: bare.to_owned(),
                addrs: addrs
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                example,
            });
        }
        Ok(allowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::egress::parse_egress;

    fn eg(rules: &[&str]) -> Egress {
        Egress::new(rules.iter().map(|r| parse_egress(r).unwrap()).collect())
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_special(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_special(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn private_addresses_need_a_cidr_rule_with_the_port() {
        let none = eg(&[]);
        assert!(!none.address_allowed(sa("127.0.0.1:8080")));
        assert!(!none.address_allowed(sa("169.254.169.254:80")));
        assert!(none.address_allowed(sa("1.1.1.1:443")));
        let lo = eg(&["127.0.0.1/32:8080"]);
        assert!(lo.address_allowed(sa("127.0.0.1:8080")));
        assert!(!lo.address_allowed(sa("127.0.0.1:8081")));
        assert!(!lo.address_allowed(sa("169.254.169.254:8080")));
        let net = eg(&["127.0.0.0/8"]);
        assert!(net.address_allowed(sa("127.0.0.2:1")));
    }

    #[test]
    fn names_must_match_name_rules_when_there_are_any() {
        assert!(eg(&[]).check_name("mcp.example.com", 443).is_ok());
        assert!(eg(&["10.0.0.0/8"])
            .check_name("mcp.example.com", 443)
            .is_ok());
        let named = eg(&["mcp.example.com:443", "*.corp.example:443"]);
        assert!(named.check_name("MCP.example.com.", 443).is_ok());
        assert!(named.check_name("mcp.example.com", 80).is_err());
        assert!(named.check_name("a.corp.example", 443).is_ok());
        assert!(named.check_name("corp.example", 443).is_err());
        assert!(named.check_name("evil.com", 443).is_err());
    }

    #[tokio::test]
    async fn localhost_is_refused_without_a_rule() {
        let err = eg(&[]).resolve("localhost", 9).await.unwrap_err();
        assert!(matches!(err, EgressError::PrivateAddress { .. }), "{err}");
        let ok = eg(&["127.0.0.0/8:9", "[::1/128]:9"])
            .resolve("localhost", 9)
            .await
            .unwrap();
        assert!(ok.iter().all(|a| a.ip().is_loopback()));
        assert!(eg(&[]).resolve("127.0.0.1", 9).await.is_err());
        assert!(eg(&["127.0.0.1/32:9"])
            .resolve("127.0.0.1", 9)
            .await
            .is_ok());
    }
}
