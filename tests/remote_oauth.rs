//! OAuth for remote upstreams: the gateway gets its own access token from an authorization
//! server and the protected MCP server checks it. Both run on 127.0.0.1: the authorization
//! server is tests/oauth_support (client_credentials, refresh_token with rotation, RFC 7662
//! introspection), the MCP server is the Python SDK's (tests/python/servers/remote_server.py
//! with `--introspect`), which asks the authorization server about every bearer token.
//!
//! Also here: the client's own `Authorization` header is never passed upstream, and the TLS
//! path with a private CA (`ca_file`) for the server and for the token endpoint.

mod common;
mod oauth_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::client::{tool_text, Mcp, LATEST};
use common::remote::Remote;
use common::Gateway;
use oauth_support::{private_ca, AuthServer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "portcullis-gw";
const CLIENT_SECRET: &str = "cs-7f3e9a1c55d04b2e";
/// The MCP client's own credential for the gateway: it must end there.
const CLIENT_TOKEN: &str = "client-own-token-5b81c2d7";

/// An authorization server, a protected MCP server and the directories a gateway keeps its
/// state and audit log in (they outlive one gateway, for restart tests).
struct Lab {
    auth: AuthServer,
    remote: Remote,
    dir: tempfile::TempDir,
}

impl Lab {
    fn start() -> Option<Lab> {
        let auth = AuthServer::start(CLIENT_ID, CLIENT_SECRET, None);
        let remote = Remote::python_with(
            "streamable-http",
            &["--introspect".to_owned(), auth.introspect_url()],
        )?;
        Some(Lab {
            auth,
            remote,
            dir: tempfile::tempdir().unwrap(),
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.remote.port)
    }

    /// A policy with one remote server `remote` behind `oauth = { token_url, client_id,
    /// <oauth> }`, secrets `<secrets>`, and a client that must authenticate.
    fn policy(&self, oauth: &str, secrets: &str) -> String {
        let sha = hex::encode(Sha256::digest(CLIENT_TOKEN.as_bytes()));
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
request_timeout = "20s"
state_dir = "{state}"

[audit]
dir = "{audit}"
record_arguments = true

[servers.remote]
runtime = "remote"
url = "{url}"
startup_timeout = "10s"
secrets = {{ {secrets} }}
egress = {{ allow = ["127.0.0.1/32:{mcp}", "127.0.0.1/32:{asp}"] }}
oauth = {{ token_url = "{token_url}", client_id = "{CLIENT_ID}", {oauth} }}

[clients.dev]
token_sha256 = "{sha}"
"#,
            state = self.state_dir().display(),
            audit = self.dir.path().join("audit").display(),
            url = self.url(),
            mcp = self.remote.port,
            asp = self.auth.port(),
            token_url = self.auth.token_url(),
        )
    }

    fn client_credentials_policy(&self) -> String {
        self.policy(
            &format!(
                "client_secret = \"${{secret:CS}}\", scope = \"mcp:tools\", resource = \"{}\"",
                self.url()
            ),
            "CS = \"env:OAUTH_CLIENT_SECRET\"",
        )
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cache_file(&self) -> PathBuf {
        self.state_dir().join("oauth/remote.json")
    }

    fn cache(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.cache_file()).unwrap()).unwrap()
    }

    /// Every byte of the audit log.
    fn audit_text(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.dir.path().join("audit")).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
            }
        }
        out
    }

    /// No token the authorization server issued, no client secret and no client token in
    /// the gateway's log or the audit log; and every request the MCP server saw carried an
    /// access token from the authorization server, never the client's own.
    fn assert_no_leaks(&self, gw: &Gateway) {
        let log = gw.stderr();
        let audit = self.audit_text();
        assert!(
            audit.contains("\"kind\":\"call\""),
            "no call records in the audit log:\n{audit}"
        );
        let issued = self.auth.issued();
        assert!(!issued.is_empty());
        for secret in issued
            .iter()
            .map(String::as_str)
            .chain([CLIENT_SECRET, CLIENT_TOKEN])
        {
            assert!(
                !log.contains(secret),
                "`{secret}` in the gateway's log:\n{log}"
            );
            assert!(!audit.contains(secret), "`{secret}` in the audit log");
        }
        for r in self.remote.requests() {
            let auth = r["headers"]["authorization"].as_str().unwrap_or_default();
            let token = auth.strip_prefix("Bearer ").unwrap_or_default();
            assert!(
                token.starts_with("at-") && issued.iter().any(|t| t == token),
                "the MCP server got a credential the authorization server did not issue: {r}"
            );
            assert!(
                !r.to_string().contains(CLIENT_TOKEN),
                "client token passed through: {r}"
            );
        }
    }

    fn gateway(&self, policy: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with(policy, env)
    }
}

async fn client(gw: &Gateway) -> Mcp {
    let mut c = Mcp::new(&gw.url);
    c.bearer = Some(CLIENT_TOKEN.to_owned());
    c.initialize(LATEST).await;
    c
}

async fn echo(c: &mut Mcp, text: &str) {
    let r = c.call_tool("echo", json!({ "text": text })).await;
    assert_eq!(tool_text(&r), format!("echo: {text}"), "{r}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn error_message(r: &Value) -> String {
    r["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {r}"))
        .to_owned()
}

/// Polls `/ready` until its body contains `needle`; returns the body.
async fn ready_says(gw: &Gateway, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, body) = common::http_get(&format!("{}/ready", gw.base)).unwrap_or_default();
        if body.contains(needle) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/ready never said `{needle}`: {body}\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn client_credentials_token_is_used_reused_and_cached_privately() {
    let Some(lab) = Lab::start() else { return };
    let env = [("OAUTH_CLIENT_SECRET", CLIENT_SECRET)];
    let gw = lab.gateway(&lab.client_credentials_policy(), &env);
    let mut c = client(&gw).await;
    for i in 0..3 {
        echo(&mut c, &format!("call {i}")).await;
    }
    // One token for the handshake, the GET stream and every call.
    let reqs = lab.auth.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    let r = &reqs[0];
    assert_eq!(r.grant_type, "client_credentials");
    assert!(r.basic, "client_secret_basic is the default: {r:?}");
    assert!(!r.form.contains_key("client_secret"), "{r:?}");
    assert_eq!(r.form["scope"], "mcp:tools");
    assert_eq!(r.form["resource"], lab.url());
    assert_eq!(r.status, 200);
    let token = lab.auth.issued()[0].clone();
    let seen = lab.remote.requests();
    assert!(seen.len() >= 5, "{seen:#?}");
    assert!(seen.iter().all(|q| q["auth"] == "ok"), "{seen:#?}");

    // The cache: the gateway's user only, written atomically (nothing else in the directory).
    let cache = lab.cache_file();
    assert_eq!(mode(&cache), 0o600);
    assert_eq!(mode(cache.parent().unwrap()), 0o700);
    assert_eq!(lab.cache()["access_token"], token.as_str());
    let names: Vec<_> = std::fs::read_dir(cache.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["remote.json"]);
    lab.assert_no_leaks(&gw);
    drop(gw);

    // Opened up by someone: repaired at the next start, and the cached token is reused.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(
        cache.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let gw = lab.gateway(&lab.client_credentials_policy(), &env);
    let mut c = client(&gw).await;
    echo(&mut c, "after restart").await;
    assert_eq!(mode(&cache), 0o600);
    assert_eq!(mode(cache.parent().unwrap()), 0o700);
    assert!(
        gw.stderr().contains("readable by other users"),
        "{}",
        gw.stderr()
    );
    assert_eq!(
        lab.auth.requests().len(),
        1,
        "the cached token was not reused"
    );
    lab.assert_no_leaks(&gw);
}

#[tokio::test]
async fn an_expiring_token_is_renewed_before_it_runs_out() {
    let Some(lab) = Lab::start() else { return };
    lab.auth.with(|s| s.expires_in = 4);
    let gw = lab.gateway(
        &lab.client_credentials_policy(),
        &[("OAUTH_CLIENT_SECRET", CLIENT_SECRET)],
    );
    let mut c = client(&gw).await;
    echo(&mut c, "first").await;
    // Past the token's lifetime: the next call must not go out with the expired token.
    tokio::time::sleep(Duration::from_secs(5)).await;
    echo(&mut c, "second").await;
    let reqs = lab.auth.requests();
    assert!(reqs.len() >= 2, "{reqs:#?}");
    assert!(reqs
        .iter()
        .all(|r| r.grant_type == "client_credentials" && r.status == 200));
    let seen = lab.remote.requests();
    assert!(
        seen.iter().all(|q| q["auth"] == "ok"),
        "a request went out with an expired token: {seen:#?}"
    );
    let tokens: std::collections::BTreeSet<&str> = seen
        .iter()
        .filter_map(|q| q["headers"]["authorization"].as_str())
        .collect();
    assert!(tokens.len() >= 2, "{tokens:?}");
    assert_eq!(
        lab.cache()["access_token"],
        lab.auth.issued().last().unwrap().as_str()
    );
    lab.assert_no_leaks(&gw);
}

#[tokio::test]
async fn a_refused_token_is_renewed_once_and_the_call_retried() {
    let Some(lab) = Lab::start() else { return };
    let gw = lab.gateway(
        &lab.client_credentials_policy(),
        &[("OAUTH_CLIENT_SECRET", CLIENT_SECRET)],
    );
    let mut c = client(&gw).await;
    echo(&mut c, "before").await;
    assert_eq!(lab.auth.requests().len(), 1);

    // Revoked at the authorization server: the MCP server answers 401; the gateway gets a new
    // token and the client never notices.
    lab.auth.with(|s| s.revoke_access_tokens());
    let seen_before = lab.remote.requests().len();
    echo(&mut c, "after revocation").await;
    assert_eq!(lab.auth.requests().len(), 2);
    let since: Vec<Value> = lab.remote.requests()[seen_before..].to_vec();
    let refused = since.iter().filter(|q| q["auth"] == "refused").count();
    assert_eq!(refused, 1, "{since:#?}");
    assert_eq!(since.last().unwrap()["auth"], "ok", "{since:#?}");

    // A server that refuses every token: one renewal, one retry, then a clear error (no loop).
    lab.auth.with(|s| s.refuse_all = true);
    let r = c.call_tool("echo", json!({ "text": "refused" })).await;
    let msg = error_message(&r);
    assert!(
        msg.contains("401") && msg.contains("check the oauth scope, resource and audience"),
        "{msg}"
    );
    assert!(
        msg.contains("invalid_token"),
        "the challenge is quoted: {msg}"
    );
    // The MCP server quoted the refused token in its answer; the gateway scrubbed it.
    assert!(msg.contains("[REDACTED:oauth:remote]"), "{msg}");
    assert_eq!(lab.auth.requests().len(), 3, "more than one renewal");
    lab.assert_no_leaks(&gw);
    for t in lab.auth.issued() {
        assert!(!msg.contains(&t), "token in the client's error: {msg}");
    }
}

#[tokio::test]
async fn refresh_token_rotation_is_persisted_and_survives_a_restart() {
    let Some(lab) = Lab::start() else { return };
    const FIRST_REFRESH: &str = "rt-issued-out-of-band-0001";
    lab.auth.with(|s| s.add_refresh_token(FIRST_REFRESH));
    let policy = lab.policy(
        "client_secret = \"${secret:CS}\", client_auth = \"post\", refresh_token = \"${secret:RT}\"",
        "CS = \"env:OAUTH_CLIENT_SECRET\", RT = \"env:OAUTH_REFRESH_TOKEN\"",
    );
    let env = [
        ("OAUTH_CLIENT_SECRET", CLIENT_SECRET),
        ("OAUTH_REFRESH_TOKEN", FIRST_REFRESH),
    ];
    let gw = lab.gateway(&policy, &env);
    let mut c = client(&gw).await;
    echo(&mut c, "one").await;
    let reqs = lab.auth.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!(reqs[0].grant_type, "refresh_token");
    assert_eq!(reqs[0].form["refresh_token"], FIRST_REFRESH);
    assert!(!reqs[0].basic && reqs[0].form["client_secret"] == CLIENT_SECRET);
    // The authorization server rotated the refresh token; the new one is what is kept.
    let rotated = lab.auth.with(|s| s.valid_refresh_tokens());
    assert_eq!(rotated.len(), 1);
    assert_ne!(rotated[0], FIRST_REFRESH);
    assert_eq!(lab.cache()["refresh_token"], rotated[0].as_str());
    assert_eq!(mode(&lab.cache_file()), 0o600);
    lab.assert_no_leaks(&gw);
    drop(gw);

    // Restart with the same (now used-up) refresh token in the environment and the access
    // token revoked: only the persisted, rotated refresh token can get a new one.
    lab.auth.with(|s| s.revoke_access_tokens());
    let gw = lab.gateway(&policy, &env);
    let mut c = client(&gw).await;
    echo(&mut c, "two").await;
    let reqs = lab.auth.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(reqs[1].form["refresh_token"], rotated[0]);
    assert_eq!(reqs[1].status, 200);
    let again = lab.auth.with(|s| s.valid_refresh_tokens());
    assert_eq!(lab.cache()["refresh_token"], again[0].as_str());
    lab.assert_no_leaks(&gw);
}

#[tokio::test]
async fn a_wrong_client_secret_is_a_clear_error_not_a_hang() {
    let Some(lab) = Lab::start() else { return };
    let hint = "invalid_client (check client_id and client_secret (secret `CS`))";
    let expected = format!(
        "oauth token request to {} failed: {hint}",
        lab.auth.token_url()
    );

    // Wrong from the start: the server never comes up, and both /ready and a call say why.
    let gw = Gateway::spawn(
        &lab.client_credentials_policy(),
        &[("OAUTH_CLIENT_SECRET", "cs-wrong-value-0000")],
    );
    ready_says(&gw, &expected).await;
    let mut c = client(&gw).await;
    let r = c.call_tool("echo", json!({ "text": "x" })).await;
    let msg = error_message(&r);
    assert!(msg.contains(&expected), "{msg}");
    assert!(
        !gw.stderr().contains("cs-wrong-value-0000"),
        "{}",
        gw.stderr()
    );
    assert!(
        lab.remote.requests().is_empty(),
        "reached the server without a token"
    );
    drop(gw);

    // Right at first, then the client secret is rotated at the authorization server and the
    // token revoked: the next call fails at once with the reason.
    let gw = lab.gateway(
        &lab.client_credentials_policy(),
        &[("OAUTH_CLIENT_SECRET", CLIENT_SECRET)],
    );
    let mut c = client(&gw).await;
    echo(&mut c, "fine").await;
    lab.auth.with(|s| {
        s.client_secret = "cs-rotated-elsewhere".to_owned();
        s.revoke_access_tokens();
    });
    let r = c.call_tool("echo", json!({ "text": "y" })).await;
    let msg = error_message(&r);
    assert!(msg.contains(&expected), "{msg}");
    lab.assert_no_leaks(&gw);
}

/// MCP 2026-07-28 binds credentials to their issuer. With `oauth.issuer` the gateway sends
/// its client secret only after the issuer's metadata names that very issuer and `token_url`;
/// and a token cached for one issuer is not used once the policy names another.
#[tokio::test]
async fn credentials_go_only_to_the_named_issuer_and_its_cache_is_keyed_by_it() {
    let Some(lab) = Lab::start() else { return };
    let env = [("OAUTH_CLIENT_SECRET", CLIENT_SECRET)];
    let issuer = lab.auth.issuer();
    let policy = |issuer: &str| {
        lab.policy(
            &format!("client_secret = \"${{secret:CS}}\", issuer = \"{issuer}\""),
            "CS = \"env:OAUTH_CLIENT_SECRET\"",
        )
    };
    let metadata = |issuer: &str, token: &str| json!({ "issuer": issuer, "token_endpoint": token });

    // Metadata that names another issuer, then another token endpoint: no credential is sent,
    // and /ready and a call say why.
    let lies = [
        (
            metadata(&format!("{issuer}/"), &lab.auth.token_url()),
            format!("names issuer `{issuer}/`, not `{issuer}`"),
        ),
        (
            metadata(&issuer, "http://127.0.0.1:9/token"),
            "names `http://127.0.0.1:9/token` as its token endpoint, not the configured token_url"
                .to_owned(),
        ),
    ];
    for (doc, says) in lies {
        lab.auth.with(|s| s.metadata = Some(doc));
        let gw = Gateway::spawn(&policy(&issuer), &env);
        ready_says(&gw, &says).await;
        let mut c = client(&gw).await;
        let msg = error_message(&c.call_tool("echo", json!({ "text": "x" })).await);
        assert!(msg.contains(&says), "{msg}");
        assert!(
            lab.auth.requests().is_empty(),
            "credentials reached the token endpoint: {:#?}",
            lab.auth.requests()
        );
        assert!(lab.remote.requests().is_empty(), "reached the server");
    }
    // No metadata at all: the same, with the places looked at.
    lab.auth.with(|s| s.metadata = None);
    let gw = Gateway::spawn(&policy(&issuer), &env);
    ready_says(&gw, "no authorization server metadata found").await;
    assert!(lab.auth.requests().is_empty());
    drop(gw);

    // Honest metadata: the exchange goes ahead and the cache records the issuer.
    lab.auth
        .with(|s| s.metadata = Some(metadata(&issuer, &lab.auth.token_url())));
    let gw = lab.gateway(&policy(&issuer), &env);
    let mut c = client(&gw).await;
    echo(&mut c, "from the named issuer").await;
    assert_eq!(lab.auth.requests().len(), 1);
    assert_eq!(lab.cache()["issuer"], issuer.as_str());
    let first = lab.cache()["access_token"].clone();
    drop(gw);

    // The same token_url now answers for another issuer (the authorization server changed):
    // the cached token is not used, a new one is obtained, and the cache is keyed anew.
    let other = format!("{issuer}/tenant-b");
    lab.auth
        .with(|s| s.metadata = Some(metadata(&other, &lab.auth.token_url())));
    let gw = lab.gateway(&policy(&other), &env);
    let mut c = client(&gw).await;
    echo(&mut c, "from the other issuer").await;
    assert_eq!(
        lab.auth.requests().len(),
        2,
        "the token cached for {issuer} was used for {other}"
    );
    assert_eq!(lab.cache()["issuer"], other.as_str());
    assert_ne!(lab.cache()["access_token"], first);
    lab.assert_no_leaks(&gw);
}

/// Proves "no token passthrough": a client authenticates to the gateway with its own bearer
/// token, and the server (which has no credentials configured) sees no Authorization at all.
#[tokio::test]
async fn the_clients_own_authorization_header_never_reaches_the_upstream() {
    let Some(remote) = Remote::python("streamable-http") else {
        return;
    };
    let sha = hex::encode(Sha256::digest(CLIENT_TOKEN.as_bytes()));
    let policy = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.remote]
runtime = "remote"
url = "http://127.0.0.1:{port}/mcp"
egress = {{ allow = ["127.0.0.1/32:{port}"] }}

[clients.dev]
token_sha256 = "{sha}"
"#,
        port = remote.port
    );
    let gw = Gateway::start(&policy);
    let mut c = client(&gw).await;
    echo(&mut c, "no passthrough").await;
    let seen = remote.requests();
    assert!(seen.len() >= 3, "{seen:#?}");
    for r in &seen {
        assert!(r["headers"].get("authorization").is_none(), "{r}");
        assert!(!r.to_string().contains(CLIENT_TOKEN), "{r}");
    }
}

fn tls_policy(remote: &Remote, extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.remote]
runtime = "remote"
url = "https://127.0.0.1:{port}/mcp"
startup_timeout = "10s"
egress = {{ allow = ["127.0.0.1/32:{port}"] }}
{extra}
"#,
        port = remote.port,
    )
}

#[tokio::test]
async fn a_tls_server_with_a_private_ca_needs_ca_file() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(pki.path());
    let Some(remote) = Remote::python_with(
        "streamable-http",
        &[
            "--tls".to_owned(),
            cert.display().to_string(),
            key.display().to_string(),
        ],
    ) else {
        return;
    };
    let gw = Gateway::start(&tls_policy(
        &remote,
        &format!("ca_file = \"{}\"", ca.display()),
    ));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    echo(&mut c, "over tls").await;
    drop(gw);

    // Without it the system store does not know the CA: refused, and the reason says so.
    let gw = Gateway::spawn(&tls_policy(&remote, ""), &[]);
    let body = ready_says(&gw, "certificate").await;
    assert!(
        body.contains("UnknownIssuer") && body.contains("ca_file"),
        "{body}"
    );
}

#[tokio::test]
async fn the_token_endpoint_is_reached_with_the_same_tls_settings() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = private_ca(pki.path());
    let auth = AuthServer::start(CLIENT_ID, CLIENT_SECRET, Some((&cert, &key)));
    let Some(remote) = Remote::python_with(
        "streamable-http",
        &[
            "--tls".to_owned(),
            cert.display().to_string(),
            key.display().to_string(),
            "--introspect".to_owned(),
            auth.introspect_url(),
        ],
    ) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let policy = |ca_line: &str| {
        format!(
            r#"
[gateway]
listen = "127.0.0.1:0"
state_dir = "{state}"

[servers.remote]
runtime = "remote"
url = "https://127.0.0.1:{port}/mcp"
startup_timeout = "10s"
egress = {{ allow = ["127.0.0.1/32:{port}", "127.0.0.1/32:{tls_port}"] }}
secrets = {{ CS = "env:OAUTH_CLIENT_SECRET" }}
oauth = {{ token_url = "{token_url}", client_id = "{CLIENT_ID}", client_secret = "${{secret:CS}}" }}
{ca_line}
"#,
            state = state.path().display(),
            port = remote.port,
            tls_port = auth.tls_port(),
            token_url = auth.tls_token_url(),
        )
    };
    let env = [("OAUTH_CLIENT_SECRET", CLIENT_SECRET)];
    let gw = Gateway::start_with(&policy(&format!("ca_file = \"{}\"", ca.display())), &env);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    echo(&mut c, "tls both ways").await;
    let reqs = auth.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert!(reqs[0].tls && reqs[0].status == 200, "{reqs:#?}");
    drop(gw);

    // Without ca_file the token endpoint's certificate is not trusted either.
    let fresh = tempfile::tempdir().unwrap();
    let policy = policy("").replace(
        &state.path().display().to_string(),
        &fresh.path().display().to_string(),
    );
    let gw = Gateway::spawn(&policy, &env);
    let body = ready_says(&gw, "oauth token request to").await;
    assert!(
        body.contains(&auth.tls_token_url()) && body.contains("certificate"),
        "{body}"
    );
    assert_eq!(auth.requests().len(), 1, "a token request got through");
}
