//! Egress rules: `host[:port]` strings -> [`EgressRule`], and back.

use super::model::{EgressHost, EgressRule};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const FORMS: &str =
    "use `name:port`, `*.domain:port`, `10.0.0.0/8:port` or `[2001:db8::/32]:port`; \
                     leave out `:port` to allow every port";

/// Parses one `egress.allow` entry.
pub fn parse_egress(s: &str) -> Result<EgressRule, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err(format!("empty egress rule; {FORMS}"));
    }
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("egress rule \"{s}\" has `[` without `]`; {FORMS}"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected \"{p}\" after `]` in \"{s}\"; {FORMS}"))?,
            ),
        };
        (parse_addr_or_cidr(inner, s)?, port)
    } else {
        if t.matches(':').count() > 1 {
            return Err(format!(
                "egress rule \"{s}\" looks like an IPv6 address; put it in brackets, like \"[2001:db8::/32]:443\""
            ));
        }
        let (h, p) = match t.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (t, None),
        };
        (parse_host(h, s)?, p)
    };
    let port = match port {
        None | Some("*") => None,
        Some(p) => Some(parse_port(p, s)?),
    };
    Ok(EgressRule { host, port })
}

fn parse_port(p: &str, rule: &str) -> Result<u16, String> {
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
        Ok(_) => Err(format!(
            "port {p} in egress rule \"{rule}\" is out of range; ports are 1-65535"
        )),
        Err(_) => Err(format!(
            "invalid port \"{p}\" in egress rule \"{rule}\"; ports are numbers 1-65535, or leave out `:port` for any port"
        )),
    }
}

fn parse_host(h: &str, rule: &str) -> Result<EgressHost, String> {
    if h.contains('/') || h.parse::<Ipv4Addr>().is_ok() {
        return parse_addr_or_cidr(h, rule);
    }
    if let Some(domain) = h.strip_prefix("*.") {
        let name = validate_name(domain, rule)?;
        if !name.contains('.') {
            return Err(format!(
                "wildcard \"{h}\" in egress rule \"{rule}\" covers a whole top-level domain; name a registered domain, like \"*.example.com\""
            ));
        }
        return Ok(EgressHost::Wildcard(name));
    }
    if h.contains('*') {
        return Err(format!(
            "misplaced `*` in egress rule \"{rule}\"; a wildcard is only allowed as a leading `*.`, like \"*.example.com:443\""
        ));
    }
    Ok(EgressHost::Name(validate_name(h, rule)?))
}

/// Lower-cases and checks a DNS name (RFC 1123 labels).
fn validate_name(name: &str, rule: &str) -> Result<String, String> {
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let bad = |why: &str| {
        Err(format!(
            "invalid host name \"{name}\" in egress rule \"{rule}\": {why}"
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 253 {
        return bad("longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("empty label (two dots in a row?)");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("only letters, digits, `-` and `.` are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label cannot start or end with `-`");
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("it is neither a host name nor a valid IPv4 address");
    }
    Ok(name)
}

fn parse_addr_or_cidr(s: &str, rule: &str) -> Result<EgressHost, String> {
    let (a, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("invalid IP address \"{a}\" in egress rule \"{rule}\"; {FORMS}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(format!(
                    "invalid prefix length \"/{p}\" in egress rule \"{rule}\"; use 0-{max}"
                ))
            }
        },
    };
    let network = mask(addr, prefix);
    if network != addr {
        return Err(format!(
            "\"{a}/{prefix}\" in egress rule \"{rule}\" has host bits set; did you mean \"{}/{prefix}\"?",
            show_addr(network)
        ));
    }
    Ok(EgressHost::Cidr { addr, prefix })
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & m))
        }
        IpAddr::V6(v6) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & m))
        }
    }
}

fn show_addr(a: IpAddr) -> String {
    a.to_string()
}

impl EgressRule {
    fn port_ok(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    /// Whether this name rule (exact or `*.` wildcard) matches DNS name `host` on `port`.
    /// `host` is compared case-insensitively, a trailing dot ignored; CIDR rules match no name.
    pub fn permits_name(&self, host: &str, port: u16) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.port_ok(port)
            && match &self.host {
                EgressHost::Name(n) => *n == host,
                EgressHost::Wildcard(d) => host
                    .strip_suffix(d.as_str())
                    .is_some_and(|pre| pre.len() > 1 && pre.ends_with('.')),
                EgressHost::Cidr { .. } => false,
            }
    }

    /// Whether this CIDR rule covers `addr` (address and port); name rules cover no address.
    pub fn covers(&self, addr: std::net::SocketAddr) -> bool {
        match self.host {
            EgressHost::Cidr { addr: net, prefix } => {
                self.port_ok(addr.port()) && cidr_covers(net, prefix, addr.ip())
            }
            _ => false,
        }
    }
}

fn cidr_covers(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let bits = u32::from(prefix.min(32));
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let bits = u32::from(prefix.min(128));
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        (IpAddr::V4(_), IpAddr::V6(a)) => a
            .to_ipv4_mapped()
            .is_some_and(|a4| cidr_covers(net, prefix, IpAddr::V4(a4))),
        _ => false,
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            EgressHost::Name(n) => write!(f, "{n}")?,
            EgressHost::Wildcard(d) => write!(f, "*.{d}")?,
            EgressHost::Cidr {
                addr: IpAddr::V4(a),
                prefix: 32,
            } => write!(f, "{a}")?,
            EgressHost::Cidr {
                addr: IpAddr::V4(a),
                prefix,
            } => write!(f, "{a}/{prefix}")?,
            EgressHost::Cidr {
                addr: IpAddr::V6(a),
                prefix: 128,
            } => write!(f, "[{a}]")?,
            EgressHost::Cidr {
                addr: IpAddr::V6(a),
                prefix,
            } => write!(f, "[{a}/{prefix}]")?,
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

/// Whether `ip` is in a range the open internet never legitimately routes to a remote MCP
/// server: private, loopback, link-local (cloud metadata lives at 169.254.169.254), CGNAT,
/// unique-local, multicast, unspecified, documentation and benchmarking ranges.
pub fn is_special(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_special_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_special_v4(v4);
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 may embed private v4
                || (s[0] == 0x2002) // 6to4 may embed private v4
        }
    }
}

fn is_special_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 240 // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> EgressRule {
        parse_egress(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(
            ok("api.github.com:443"),
            EgressRule {
                host: EgressHost::Name("api.github.com".into()),
                port: Some(443)
            }
        );
        assert_eq!(
            ok("*.Sentry.io:443"),
            EgressRule {
                host: EgressHost::Wildcard("sentry.io".into()),
                port: Some(443)
            }
        );
        assert_eq!(
            ok("10.1.2.0/24:5432"),
            EgressRule {
                host: EgressHost::Cidr {
                    addr: "10.1.2.0".parse().unwrap(),
                    prefix: 24
                },
                port: Some(5432)
            }
        );
        assert_eq!(
            ok("example.com."),
            EgressRule {
                host: EgressHost::Name("example.com".into()),
                port: None
            }
        );
        assert_eq!(ok("host:*").port, None);
        assert_eq!(
            ok("[2001:db8::/32]:443").host,
            EgressHost::Cidr {
                addr: "2001:db8::".parse().unwrap(),
                prefix: 32
            }
        );
        assert_eq!(
            ok("[::1]").host,
            EgressHost::Cidr {
                addr: "::1".parse().unwrap(),
                prefix: 128
            }
        );
        assert_eq!(
            ok("192.168.1.5:80").host,
            EgressHost::Cidr {
                addr: "192.168.1.5".parse().unwrap(),
                prefix: 32
            }
        );
    }

    #[test]
    fn refuses_bad_rules_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("api.github.com:0", "out of range"),
            ("api.github.com:65536", "out of range"),
            ("api.github.com:https", "invalid port"),
            ("api.*.com:443", "leading `*.`"),
            ("*.com:443", "top-level"),
            ("*:443", "misplaced"),
            ("exa mple.com", "only letters"),
            ("-bad.com", "start or end"),
            ("a..b", "empty label"),
            ("10.1.2.3/24", "did you mean \"10.1.2.0/24\""),
            ("10.1.2.0/33", "prefix length"),
            ("999.1.1.1", "neither a host name"),
            ("300.1.1.0/24", "invalid IP address"),
            ("10.1.2", "neither a host name"),
            ("2001:db8::1", "brackets"),
            ("[2001:db8::1", "without `]`"),
            ("[2001:db8::1]443", "unexpected"),
            ("under_score.com", "only letters"),
        ];
        for (rule, why) in cases {
            match parse_egress(rule) {
                Ok(r) => panic!("{rule:?} accepted as {r:?}"),
                Err(e) => assert!(e.contains(why), "{rule:?}: {e:?} lacks {why:?}"),
            }
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "api.github.com:443",
            "*.sentry.io:443",
            "10.1.2.0/24:5432",
            "host",
            "[2001:db8::/32]:443",
            "[::1]",
            "10.0.0.1:22",
        ] {
            assert_eq!(ok(s).to_string(), s);
            assert_eq!(ok(&ok(s).to_string()), ok(s));
        }
    }
}
