//! Validation of servers the gateway reaches over HTTP (`remote`; `openapi` shares the checks):
//! the url and whether egress rules let it be reached, headers with secret references, CA, OAuth.
//! Also the url and `host:port` checks that audit sinks, OAuth and telemetry use too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::model::*;
use super::raw::*;
use super::validate::{is_env_name, Checker};

impl Checker<'_> {
    pub(super) fn remote(
        &mut self,
        n: &str,
        rs: &RawServer,
        secrets: &BTreeMap<String, SecretRef>,
        egress: &Egress,
    ) -> Option<Runtime> {
        let url = match &rs.url {
            Some(u) => self.endpoint_url(n, u, egress, "url"),
            None => {
                self.error(self.server_at(rs), format!("[servers.{n}] has runtime = \"remote\" but no `url`; add url = \"https://...\""));
                None
            }
        };
        let (headers, ca_file, oauth) =
            self.http_credentials(n, rs, secrets, egress, url.as_deref());
        Some(Runtime::Remote(RemoteSpec {
            url: url?,
            headers,
            ca_file,
            oauth,
        }))
    }

    /// A server's `url` (or `base_url`, named by `key`): well-formed, and reachable under its
    /// egress rules when it names a private address.
    pub(super) fn endpoint_url(
        &mut self,
        n: &str,
        u: &Str,
        egress: &Egress,
        key: &str,
    ) -> Option<String> {
        let named = |msg: String| match msg.strip_prefix("url ") {
            Some(rest) => format!("{key} {rest}"),
            None => msg,
        };
        match check_url(u.get_ref()) {
            Ok(()) => {
                if let Some(why) = unreachable_without_rule(u.get_ref(), egress) {
                    self.error(u.span().start, format!("[servers.{n}] {}", named(why)));
                }
                Some(u.get_ref().clone())
            }
            Err(e) => {
                self.error(u.span().start, named(e));
                None
            }
        }
    }

    /// `headers`, `ca_file` and `oauth` of a server the gateway reaches over HTTP (`remote`,
    /// `openapi`); `url` is where requests go.
    pub(super) fn http_credentials(
        &mut self,
        n: &str,
        rs: &RawServer,
        secrets: &BTreeMap<String, SecretRef>,
        egress: &Egress,
        url: Option<&str>,
    ) -> (BTreeMap<String, String>, Option<PathBuf>, Option<OAuth>) {
        // Plain http may carry secrets only to a loopback address: those bytes never leave
        // the machine (this is how a sidecar or a test server on 127.0.0.1 is reached).
        let plain_http = url.is_some_and(|u| u.starts_with("http://") && !is_loopback_url(u));
        let mut headers = BTreeMap::new();
        for (k, v) in rs.headers.iter().flat_map(|h| h.get_ref().iter()) {
            let name = k.get_ref();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                self.error(k.span().start, format!("invalid HTTP header name `{name}`"));
            }
            match secret_refs(v.get_ref()) {
                Ok(refs) => {
                    for r in &refs {
                        if !secrets.contains_key(r) {
                            self.error(v.span().start, format!("header `{name}` uses ${{secret:{r}}} but [servers.{n}] declares no secret `{r}`; add secrets = {{ {r} = \"env:{r}\" }}"));
                        }
                    }
                    if plain_http && !refs.is_empty() {
                        self.error(v.span().start, format!("header `{name}` would send a secret over plain http; use an https:// url"));
                    }
                }
                Err(e) => self.error(v.span().start, e),
            }
            headers.insert(name.clone(), v.get_ref().clone());
        }
        let ca_file = rs.ca_file.as_ref().map(|p| self.resolve(p.get_ref()));
        let oauth = match &rs.oauth {
            Some(o) => {
                if let Some(k) = rs
                    .headers
                    .iter()
                    .flat_map(|h| h.get_ref().keys())
                    .find(|k| k.get_ref().eq_ignore_ascii_case("authorization"))
                {
                    self.error(k.span().start, format!("header `{}` conflicts with `oauth`, which sends its own `Authorization: Bearer` access token; remove the header", k.get_ref()));
                }
                if plain_http {
                    self.error(o.span().start, "`oauth` would send access tokens over plain http; use an https:// url (plain http is accepted only to a loopback IP literal)");
                }
                self.oauth(n, o, secrets, egress)
            }
            None => None,
        };
        (headers, ca_file, oauth)
    }
}

/// `host:port` with a non-empty host and a valid port (IPv6 in brackets).
pub fn validate_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return None;
    }
    Some((host.to_string(), port))
}

/// Whether an `http://` url names a loopback IP literal (127.0.0.0/8 or [::1]).
pub(super) fn is_loopback_url(u: &str) -> bool {
    let rest = u.strip_prefix("http://").unwrap_or(u);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// A remote server's url that names a private, loopback or link-local address as an IP literal can be reached only when a CIDR rule allows it: the gateway refuses such
/// addresses otherwise, at every connection. Returns the address and the rule that allows it.
pub(super) fn private_target_rule(u: &str, egress: &Egress) -> Option<(std::net::IpAddr, String)> {
    let (https, rest) = match u.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, u.strip_prefix("http://")?),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok()?,
        None if https => 443,
        None => 80,
    };
    // Names are checked when they resolve (and by `doctor`): only literals are known here.
    let ip: std::net::IpAddr = host.parse().ok()?;
    if !super::egress::is_special(ip) {
        return None;
    }
    let addr = std::net::SocketAddr::new(ip, port);
    if egress.allow.iter().any(|r| r.covers(addr)) {
        return None;
    }
    let rule = if ip.is_ipv4() {
        format!("{ip}:{port}")
    } else {
        format!("[{ip}]:{port}")
    };
    Some((ip, rule))
}

fn unreachable_without_rule(u: &str, egress: &Egress) -> Option<String> {
    let (ip, rule) = private_target_rule(u, egress)?;
    Some(format!(
        "url \"{u}\" names {ip}, a private/loopback address that remote servers may reach only when an egress rule allows it; every connection would be refused. add egress.allow = [\"{rule}\"]"
    ))
}

pub(super) fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("url \"{u}\" must start with https:// (or http://)"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || u.chars().any(char::is_whitespace) {
        return Err(format!("url \"{u}\" has no valid host; write it like \"https://mcp.example.com/mcp\" (credentials go in headers and secrets, not the url)"));
    }
    Ok(())
}

/// The `NAME`s of every `${secret:NAME}` in a header template.
pub fn secret_refs(t: &str) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    let mut rest = t;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed `${` in header value; write ${secret:NAME}".to_string())?;
        let inner = &after[..end];
        match inner.strip_prefix("secret:") {
            Some(name) if is_env_name(name) => {
                out.insert(name.to_string());
            }
            _ => return Err(format!("`${{{inner}}}` in header value is not a secret reference; write ${{secret:NAME}} and declare NAME in `secrets`")),
        }
        rest = &after[end + 1..];
    }
    Ok(out)
}
