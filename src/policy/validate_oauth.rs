//! Validation of `oauth = { ... }` on a remote server: where tokens come from, with which
//! credentials (secret references only), and that the token endpoint is an allowed destination.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use toml::Spanned;

use super::model::{ClientAuth, Egress, OAuth, SecretRef};
use super::raw::{RawOAuth, Str};
use super::validate::{check_url, is_loopback_url, Checker};

impl Checker<'_> {
    pub(super) fn oauth(
        &mut self,
        server: &str,
        raw: &Spanned<RawOAuth>,
        secrets: &BTreeMap<String, SecretRef>,
        egress: &Egress,
    ) -> Option<OAuth> {
        let at = raw.span().start;
        let o = raw.get_ref();
        let before = self.diags.len();

        let token_url = o.token_url.get_ref();
        self.oauth_endpoint(server, "token_url", &o.token_url, egress);
        let issuer = o.issuer.as_ref().map(|i| {
            self.oauth_endpoint(server, "issuer", i, egress);
            let v = i.get_ref();
            // RFC 8414 section 2: an issuer has no query or fragment.
            if v.contains('?') || v.contains('#') {
                self.error(i.span().start, format!("oauth `issuer` \"{v}\" has a query or fragment; an issuer identifier is a plain https URL (RFC 8414 section 2), like \"https://auth.example.com\""));
            }
            v.clone()
        });

        if o.client_id.get_ref().trim().is_empty() {
            self.error(o.client_id.span().start, "oauth `client_id` is empty; use the client id the authorization server issued for the gateway");
        }
        let client_secret = self.secret_name(&o.client_secret, "client_secret", server, secrets);
        let refresh_token = self.secret_name(&o.refresh_token, "refresh_token", server, secrets);
        if o.client_secret.is_none() && o.refresh_token.is_none() {
            self.error(at, "oauth needs `client_secret` (client_credentials grant) or `refresh_token` (refresh_token grant), each a secret reference like \"${secret:NAME}\"");
        }
        let client_auth = match &o.client_auth {
            None => ClientAuth::Basic,
            Some(c) => {
                if o.client_secret.is_none() {
                    self.error(c.span().start, "oauth `client_auth` says how the client secret is sent, but there is no `client_secret`; remove `client_auth`");
                }
                match c.get_ref().as_str() {
                    "basic" => ClientAuth::Basic,
                    "post" => ClientAuth::Post,
                    other => {
                        self.error(c.span().start, format!("unknown oauth `client_auth` \"{other}\"; use \"basic\" (HTTP Basic, the default) or \"post\" (credentials in the form body)"));
                        ClientAuth::Basic
                    }
                }
            }
        };
        let scope = self.plain(&o.scope, "scope");
        let audience = self.plain(&o.audience, "audience");
        let resource = self.plain(&o.resource, "resource");
        if let Some(r) = &o.resource {
            let v = r.get_ref();
            if !(v.starts_with("https://") || v.starts_with("http://")) || v.contains('#') {
                self.error(r.span().start, format!("oauth `resource` \"{v}\" must be an absolute URI without a fragment (RFC 8707), usually the server's url, like \"https://mcp.example.com/mcp\""));
            }
        }
        if self.diags.len() != before {
            return None;
        }
        Some(OAuth {
            token_url: token_url.clone(),
            issuer,
            client_id: o.client_id.get_ref().clone(),
            client_secret,
            client_auth,
            scope,
            refresh_token,
            resource,
            audience,
            cache_file: OAuth::cache_file_in(&self.state_dir, server),
        })
    }

    /// A URL the gateway sends requests to for this server's tokens (`key` names it): http(s),
    /// https unless loopback, and an allowed destination.
    fn oauth_endpoint(&mut self, server: &str, key: &str, v: &Str, egress: &Egress) {
        let url = v.get_ref();
        let url_at = v.span().start;
        if let Err(e) = check_url(url) {
            self.error(url_at, format!("oauth `{key}`: {e}"));
            return;
        }
        if url.starts_with("http://") && !is_loopback_url(url) {
            self.error(url_at, format!("oauth `{key}` would be reached over plain http, where the tokens and credentials can be read or forged; use https:// (plain http is accepted only to a loopback IP literal)"));
        }
        if let Some((host, port)) = host_port(url) {
            if !egress_allows(egress, &host, port) {
                let rule = if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                };
                let what = if key == "issuer" {
                    "the oauth issuer (where its metadata is read)"
                } else {
                    "the oauth token endpoint"
                };
                self.error(url_at, format!("{what} `{rule}` is not in egress.allow of [servers.{server}]; the gateway reaches it under the same egress rules as the server, so add \"{rule}\" (an IP address needs a CIDR rule, like \"{rule}\" or a range)"));
            }
        }
    }

    /// The NAME of a `"${secret:NAME}"` value, which must be declared in the server's secrets.
    fn secret_name(
        &mut self,
        v: &Option<Str>,
        key: &str,
        server: &str,
        secrets: &BTreeMap<String, SecretRef>,
    ) -> Option<String> {
        let v = v.as_ref()?;
        let text = v.get_ref();
        let name = text
            .strip_prefix("${secret:")
            .and_then(|r| r.strip_suffix('}'))
            .filter(|n| super::validate::is_env_name(n));
        match name {
            // The value is not echoed: it may be the secret itself, pasted in by mistake.
            None => {
                self.error(v.span().start, format!("oauth `{key}` must be a secret reference like \"${{secret:NAME}}\", with NAME declared in this server's `secrets`; the value itself never goes in the policy"));
                None
            }
            Some(n) if !secrets.contains_key(n) => {
                self.error(v.span().start, format!("oauth `{key}` uses ${{secret:{n}}} but [servers.{server}] declares no secret `{n}`; add secrets = {{ {n} = \"env:{n}\" }}"));
                None
            }
            Some(n) => Some(n.to_owned()),
        }
    }

    fn plain(&mut self, v: &Option<Str>, key: &str) -> Option<String> {
        let v = v.as_ref()?;
        if v.get_ref().trim().is_empty() || v.get_ref().chars().any(char::is_control) {
            self.error(
                v.span().start,
                format!(
                    "oauth `{key}` is empty or has control characters; remove it or give a value"
                ),
            );
        }
        Some(v.get_ref().clone())
    }
}

/// Host (without brackets) and port of an http(s) url.
fn host_port(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Some((host.to_ascii_lowercase(), port))
}

/// Whether a connection to `host:port` passes the server's egress rules: a name must match a
/// name rule, an address must be covered by a CIDR rule.
fn egress_allows(egress: &Egress, host: &str, port: u16) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => egress
            .allow
            .iter()
            .any(|r| r.covers(SocketAddr::new(ip, port))),
        Err(_) => egress.allow.iter().any(|r| r.permits_name(host, port)),
    }
}

#[cfg(test)]
mod tests {
    use crate::policy::{parse_in, ClientAuth, OAuthGrant, Runtime};
    use std::path::{Path, PathBuf};

    const HEAD: &str = "[servers.r]\nruntime = \"remote\"\nurl = \"https://mcp.example.com/mcp\"\n";

    fn check(body: &str) -> Result<crate::policy::Policy, Vec<String>> {
        let src = format!("{HEAD}{body}");
        parse_in(&src, "p.toml", Some(Path::new("/etc/pc"))).map_err(|e| {
            e.diagnostics()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        })
    }

    fn one_error(body: &str) -> String {
        let e = check(body).expect_err("accepted");
        assert_eq!(e.len(), 1, "{e:#?}");
        e[0].clone()
    }

    const EGRESS: &str =
        "egress.allow = [\"mcp.example.com:443\", \"auth.example.com:443\"]\nsecrets = { CS = \"env:CS\", RT = \"file:rt\" }\n";

    #[test]
    fn client_credentials_and_refresh_token_settings_are_read() {
        let p = check(&format!("{EGRESS}oauth = {{ token_url = \"https://auth.example.com/token\", client_id = \"gw\", client_secret = \"${{secret:CS}}\", scope = \"mcp:read mcp:write\", resource = \"https://mcp.example.com/mcp\", audience = \"mcp\" }}\n")).unwrap();
        let Runtime::Remote(r) = &p.servers["r"].runtime else {
            panic!()
        };
        let o = r.oauth.as_ref().unwrap();
        assert_eq!(o.grant(), OAuthGrant::ClientCredentials);
        assert_eq!(o.client_secret.as_deref(), Some("CS"));
        assert_eq!(o.client_auth, ClientAuth::Basic);
        assert_eq!(o.scope.as_deref(), Some("mcp:read mcp:write"));
        assert_eq!(o.resource.as_deref(), Some("https://mcp.example.com/mcp"));
        assert_eq!(o.audience.as_deref(), Some("mcp"));
        assert_eq!(
            o.cache_file,
            PathBuf::from("/etc/pc/portcullis-state/oauth/r.json")
        );

        let p = check(&format!("{EGRESS}[servers.r.oauth]\ntoken_url = \"https://auth.example.com/token\"\nclient_id = \"gw\"\nrefresh_token = \"${{secret:RT}}\"\n")).unwrap();
        let Runtime::Remote(r) = &p.servers["r"].runtime else {
            panic!()
        };
        assert_eq!(r.oauth.as_ref().unwrap().grant(), OAuthGrant::RefreshToken);
    }

    #[test]
    fn state_dir_moves_the_token_cache() {
        let src = format!("[gateway]\nstate_dir = \"/var/lib/portcullis\"\n{HEAD}{EGRESS}oauth = {{ token_url = \"https://auth.example.com/t\", client_id = \"gw\", client_secret = \"${{secret:CS}}\", client_auth = \"post\" }}\n");
        let mut p = parse_in(&src, "p.toml", None).unwrap();
        let cache = |p: &crate::policy::Policy| match &p.servers["r"].runtime {
            Runtime::Remote(r) => r.oauth.as_ref().unwrap().cache_file.clone(),
            _ => panic!(),
        };
        assert_eq!(cache(&p), PathBuf::from("/var/lib/portcullis/oauth/r.json"));
        p.set_state_dir(PathBuf::from("/srv/state"));
        assert_eq!(cache(&p), PathBuf::from("/srv/state/oauth/r.json"));
        assert_eq!(p.gateway.state_dir, PathBuf::from("/srv/state"));
    }

    #[test]
    fn unknown_oauth_keys_are_located() {
        let e = one_error(&format!("{EGRESS}[servers.r.oauth]\ntoken_url = \"https://auth.example.com/t\"\nclient_id = \"gw\"\nclient_secrt = \"${{secret:CS}}\"\n"));
        assert!(
            e.starts_with("p.toml:9:1: error: unknown key `client_secrt` in [servers.r.oauth]; expected one of: token_url, client_id, client_secret,"),
            "{e}"
        );
        assert!(e.contains("did you mean `client_secret`?"), "{e}");
    }

    #[test]
    fn credentials_must_be_declared_secret_references() {
        let literal = one_error(&format!("{EGRESS}oauth = {{ token_url = \"https://auth.example.com/t\", client_id = \"gw\", client_secret = \"hunter2-literal\" }}\n"));
        assert!(
            literal.starts_with("p.toml:6:") && literal.contains("must be a secret reference"),
            "{literal}"
        );
        assert!(!literal.contains("hunter2"), "echoed the secret: {literal}");
        let undeclared = one_error(&format!("{EGRESS}oauth = {{ token_url = \"https://auth.example.com/t\", client_id = \"gw\", refresh_token = \"${{secret:NOPE}}\" }}\n"));
        assert!(
            undeclared.contains("declares no secret `NOPE`"),
            "{undeclared}"
        );
        let neither = one_error(&format!(
            "{EGRESS}oauth = {{ token_url = \"https://auth.example.com/t\", client_id = \"gw\" }}\n"
        ));
        assert!(
            neither.contains("needs `client_secret`") && neither.starts_with("p.toml:6:9:"),
            "{neither}"
        );
    }

    #[test]
    fn the_token_endpoint_must_be_an_allowed_destination() {
        let e = one_error("egress.allow = [\"mcp.example.com:443\"]\nsecrets = { CS = \"env:CS\" }\noauth = { token_url = \"https://auth.example.com/t\", client_id = \"gw\", client_secret = \"${secret:CS}\" }\n");
        assert!(
            e.contains("`auth.example.com:443` is not in egress.allow of [servers.r]")
                && e.contains("add \"auth.example.com:443\""),
            "{e}"
        );
        // A wildcard rule covers it; a loopback address needs a CIDR rule with its port.
        assert!(check("egress.allow = [\"*.example.com:443\"]\nsecrets = { CS = \"env:CS\" }\noauth = { token_url = \"https://auth.example.com/t\", client_id = \"gw\", client_secret = \"${secret:CS}\" }\n").is_ok());
        let lo = "secrets = { CS = \"env:CS\" }\noauth = { token_url = \"http://127.0.0.1:9000/t\", client_id = \"gw\", client_secret = \"${secret:CS}\" }\n";
        assert!(
            one_error(&format!("egress.allow = [\"127.0.0.1/32:9001\"]\n{lo}"))
                .contains("`127.0.0.1:9000` is not in egress.allow")
        );
        assert!(check(&format!("egress.allow = [\"127.0.0.0/8:9000\"]\n{lo}")).is_ok());
    }

    #[test]
    fn the_issuer_is_a_plain_allowed_url() {
        let cs = "secrets = { CS = \"env:CS\" }\n";
        let with = |allow: &str, issuer: &str| {
            format!("egress.allow = [\"mcp.example.com:443\", {allow}]\n{cs}oauth = {{ token_url = \"https://auth.example.com/t\", client_id = \"gw\", client_secret = \"${{secret:CS}}\", issuer = \"{issuer}\" }}\n")
        };
        let p = check(&with(
            "\"auth.example.com:443\"",
            "https://auth.example.com",
        ))
        .unwrap();
        let Runtime::Remote(r) = &p.servers["r"].runtime else {
            panic!("not remote")
        };
        let oauth = r.oauth.as_ref().unwrap();
        assert_eq!(oauth.issuer.as_deref(), Some("https://auth.example.com"));
        let e = one_error(&with(
            "\"auth.example.com:443\"",
            "https://id.example.org/tenant",
        ));
        assert!(
            e.contains("the oauth issuer (where its metadata is read) `id.example.org:443` is not in egress.allow"),
            "{e}"
        );
        let e = one_error(&with(
            "\"auth.example.com:443\"",
            "https://auth.example.com/?t=1",
        ));
        assert!(e.contains("has a query or fragment"), "{e}");
        let e = one_error(&with(
            "\"auth.example.com:443\", \"auth.example.com:80\"",
            "http://auth.example.com",
        ));
        assert!(
            e.contains("oauth `issuer` would be reached over plain http"),
            "{e}"
        );
    }

    #[test]
    fn secrets_never_travel_over_plain_http_off_loopback() {
        let e = one_error("egress.allow = [\"auth.example.com:80\"]\nsecrets = { CS = \"env:CS\" }\noauth = { token_url = \"http://auth.example.com/t\", client_id = \"gw\", client_secret = \"${secret:CS}\" }\n");
        assert!(e.contains("over plain http"), "{e}");
        let src = "[servers.r]\nruntime = \"remote\"\nurl = \"http://mcp.example.com/mcp\"\negress.allow = [\"auth.example.com:443\"]\nsecrets = { CS = \"env:CS\" }\noauth = { token_url = \"https://auth.example.com/t\", client_id = \"gw\", client_secret = \"${secret:CS}\" }\n";
        let e = crate::policy::parse(src, "p.toml").unwrap_err().to_string();
        assert!(e.contains("access tokens over plain http"), "{e}");
    }

    #[test]
    fn oauth_and_an_authorization_header_conflict() {
        let e = one_error(&format!("{EGRESS}headers = {{ authorization = \"Bearer ${{secret:CS}}\" }}\noauth = {{ token_url = \"https://auth.example.com/t\", client_id = \"gw\", client_secret = \"${{secret:CS}}\" }}\n"));
        assert!(
            e.starts_with("p.toml:6:13:") && e.contains("conflicts with `oauth`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_are_explained() {
        let e = check(&format!("{EGRESS}oauth = {{ token_url = \"https://auth.example.com/t\", client_id = \"gw\", refresh_token = \"${{secret:RT}}\", client_auth = \"jwt\", resource = \"mcp\" }}\n")).unwrap_err();
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(e[0].contains("there is no `client_secret`"), "{e:#?}");
        assert!(
            e[1].contains("unknown oauth `client_auth` \"jwt\""),
            "{e:#?}"
        );
        assert!(e[2].contains("RFC 8707"), "{e:#?}");
        let e = one_error("oauth = { token_url = \"https://x/t\", client_id = \"gw\", client_secret = \"${secret:CS}\" }\nsecrets = { CS = \"env:CS\" }\nruntime2 = 1\n");
        assert!(e.contains("unknown key `runtime2`"), "{e}");
    }

    #[test]
    fn oauth_is_a_remote_only_key() {
        let src = "[servers.p]\nruntime = \"process\"\ncommand = \"x\"\noauth = { token_url = \"https://a/t\", client_id = \"c\" }\n";
        let e = crate::policy::parse(src, "p.toml").unwrap_err().to_string();
        assert!(
            e.contains("p.toml:4:1: error: `oauth` is not a key of a runtime = \"process\" server"),
            "{e}"
        );
    }
}
