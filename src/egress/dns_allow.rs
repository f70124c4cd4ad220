//! What one server's resolver may answer: the names (exact, or strictly below a `*.domain`)
//! with their ports, and the CIDR rules that let an otherwise special address (private,
//! loopback, link-local, ...) be handed out. Built from the server's egress rules and swapped
//! whole on a policy reload; it keeps the list it was made from so that pins can carry it
//! (see `dns.rs`, "Pin, then answer").

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use crate::policy::{EgressHost, EgressRule, Server};

/// What a server may resolve.
#[derive(Debug, Clone)]
pub struct Allow {
    /// (exact name, port)
    names: Vec<(String, Option<u16>)>,
    /// (domain under which names match, port)
    wildcards: Vec<(String, Option<u16>)>,
    /// CIDR rules, for the private-address exception.
    cidrs: Vec<(IpAddr, u8)>,
    /// The list this was made from: pins carry it, so the worker can tell an answer judged
    /// under rules that were replaced since.
    rules: Arc<[EgressRule]>,
}

impl Allow {
    /// Allows nothing.
    pub fn none() -> Allow {
        Allow {
            names: vec![],
            wildcards: vec![],
            cidrs: vec![],
            rules: Arc::from(Vec::new()),
        }
    }

    pub fn of(server: &Server) -> Allow {
        Allow::from_rules(&server.egress.allow)
    }

    /// What a list of egress rules allows.
    pub fn from_rules(rules: &[EgressRule]) -> Allow {
        let mut a = Allow::none();
        a.rules = Arc::from(rules.to_vec());
        for r in rules {
            match &r.host {
                EgressHost::Name(n) => a.names.push((n.clone(), r.port)),
                EgressHost::Wildcard(d) => a.wildcards.push((d.clone(), r.port)),
                EgressHost::Cidr { addr, prefix } => a.cidrs.push((*addr, *prefix)),
            }
        }
        a
    }

    /// The rule list this allows by.
    pub fn rules(&self) -> Arc<[EgressRule]> {
        self.rules.clone()
    }

    /// The ports `name` is allowed on (`None` in the list: every port); empty if not allowed.
    pub fn ports(&self, name: &str) -> Vec<Option<u16>> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let mut out = Vec::new();
        for (n, p) in &self.names {
            if *n == name {
                out.push(*p);
            }
        }
        for (d, p) in &self.wildcards {
            if name.len() > d.len() + 1
                && name.ends_with(d.as_str())
                && name.as_bytes()[name.len() - d.len() - 1] == b'.'
            {
                out.push(*p);
            }
        }
        if out.contains(&None) {
            return vec![None];
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    fn cidr_allows(&self, a: Ipv4Addr) -> bool {
        self.cidrs.iter().any(|(net, prefix)| match net {
            IpAddr::V4(n) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(a) & mask == u32::from(*n) & mask
            }
            IpAddr::V6(_) => false,
        })
    }

    /// Whether the address may be handed out.
    pub fn address_ok(&self, a: Ipv4Addr) -> bool {
        !is_special(a) || self.cidr_allows(a)
    }
}

/// Addresses a sandbox must never learn from DNS unless the policy names their range.
pub fn is_special(a: Ipv4Addr) -> bool {
    let o = a.octets();
    a.is_unspecified()
        || a.is_loopback()
        || a.is_private()
        || a.is_link_local()
        || a.is_multicast()
        || a.is_broadcast()
        || o[0] == 0
        || o[0] >= 240
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::egress::parse_egress;

    fn allow(rules: &[&str]) -> Allow {
        let rules: Vec<EgressRule> = rules.iter().map(|r| parse_egress(r).unwrap()).collect();
        Allow::from_rules(&rules)
    }

    #[test]
    fn wildcards_match_strictly_below_the_domain() {
        let a = allow(&[
            "*.example.test:443",
            "api.other.test:443",
            "api.other.test:8443",
        ]);
        assert_eq!(a.ports("a.example.test"), vec![Some(443)]);
        assert_eq!(a.ports("A.B.Example.Test."), vec![Some(443)]);
        assert!(a.ports("example.test").is_empty());
        assert!(a.ports("badexample.test").is_empty());
        assert!(a.ports("example.test.evil.test").is_empty());
        assert_eq!(a.ports("api.other.test"), vec![Some(443), Some(8443)]);
        assert!(a.ports("other.test").is_empty());
    }

    #[test]
    fn special_addresses_need_a_cidr_rule() {
        let a = allow(&["10.1.2.0/24:5432"]);
        for s in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.3.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
        ] {
            assert!(!a.address_ok(s.parse().unwrap()), "{s}");
        }
        assert!(a.address_ok("10.1.2.7".parse().unwrap()));
        assert!(a.address_ok("198.18.0.10".parse().unwrap()));
    }
}
