//! Client authentication, tool authorization, rate limits and listener safety, end to end.

mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::client::{tool_text, Mcp, LATEST};
use common::{gateway_bin, Gateway};
use serde_json::{json, Value};

const ALICE: &str = "pcs_alice-token-for-tests-only-0000000000000";
const BOB: &str = "pcs_bob-token-for-tests-only-11111111111111111";

fn sha(t: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(t.as_bytes()))
}

fn token_policy(extra_server: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.fixture]
runtime = "process"
command = "{{fixture}}"
{extra_server}

[clients.alice]
token_sha256 = "{}"
allow = ["fixture__echo", "fixture__pid", "fixture__count_calls"]
deny = ["fixture__pid"]

[clients.bob]
token_sha256 = "{}"
"#,
        sha(ALICE),
        sha(BOB)
    )
}

async fn init_as(gw: &Gateway, token: Option<&str>) -> Mcp {
    let mut c = Mcp::new(&gw.url);
    c.bearer = token.map(str::to_owned);
    c.initialize(LATEST).await;
    c
}

fn names(list: &Value) -> Vec<String> {
    list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn tokens_are_required_and_checked() {
    let gw = Gateway::start(&token_policy(""));
    let anon = Mcp::new(&gw.url);
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":LATEST,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let r = anon.post(&init).await;
    assert_eq!(r.status, 401, "{}", r.body);
    let challenge = r.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains("invalid_request"),
        "{challenge}"
    );

    let mut wrong = Mcp::new(&gw.url);
    wrong.bearer = Some(format!("{ALICE}x"));
    let r = wrong.post(&init).await;
    assert_eq!(r.status, 401);
    assert!(r.headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));

    let r = anon
        .post_with(
            &init.to_string(),
            &[("authorization", &format!("Basic {ALICE}"))],
        )
        .await;
    assert_eq!(r.status, 401, "only the Bearer scheme: {}", r.body);

    let mut bob = init_as(&gw, Some(BOB)).await;
    assert_eq!(
        tool_text(&bob.call_tool("echo", json!({"text": "hi"})).await),
        "hi"
    );
}

#[tokio::test]
async fn clients_see_and_call_only_their_tools() {
    let gw = Gateway::start(&token_policy(""));
    let mut alice = init_as(&gw, Some(ALICE)).await;
    let mut bob = init_as(&gw, Some(BOB)).await;
    let mut seen = names(&alice.request("tools/list", json!({})).await);
    seen.sort();
    assert_eq!(seen, vec!["count_calls", "echo"], "allow minus deny");
    assert!(names(&bob.request("tools/list", json!({})).await).len() > 10);

    let denied = alice
        .post(&json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"pid","arguments":{}}}))
        .await;
    assert_eq!(denied.status, 403, "{}", denied.body);
    let msg = denied.message();
    assert_eq!(msg["error"]["code"], -32013);
    assert!(
        msg["error"]["message"].as_str().unwrap().contains("alice"),
        "{msg}"
    );
    assert!(bob
        .call_tool("pid", json!({}))
        .await
        .get("result")
        .is_some());
}

#[tokio::test]
async fn a_session_id_is_useless_to_another_identity() {
    let gw = Gateway::start(&token_policy(""));
    let alice = init_as(&gw, Some(ALICE)).await;
    let mut thief = Mcp::new(&gw.url);
    thief.bearer = Some(BOB.to_owned());
    thief.session = alice.session.clone();
    let r = thief
        .post(&json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await;
    assert_eq!(
        r.status, 404,
        "hijack must look like an unknown session: {}",
        r.body
    );
    let get = thief
        .http
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", alice.session.clone().unwrap())
        .header("authorization", format!("Bearer {BOB}"))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 404);
    // Nor can the thief end it.
    let del = thief
        .http
        .delete(&gw.url)
        .header("mcp-session-id", alice.session.clone().unwrap())
        .header("authorization", format!("Bearer {BOB}"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 404);
    let mut alice = alice;
    assert_eq!(
        tool_text(&alice.call_tool("echo", json!({"text": "still mine"})).await),
        "still mine"
    );
}

#[tokio::test]
async fn rate_limits_count_exactly_and_refused_calls_never_reach_the_server() {
    let gw = Gateway::start(&token_policy("rate = { quota = \"3/hour\", burst = 3 }"));
    let alice = init_as(&gw, Some(ALICE)).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = alice
            .post_with(
                &json!({"jsonrpc":"2.0","id":100+i,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}).to_string(),
                &[("mcp-protocol-version", LATEST), ("accept", "application/json")],
            )
            .await;
        if r.status == 429 {
            let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry >= 60, "an hourly quota waits minutes: {retry}");
            assert_eq!(r.json()["error"]["code"], -32014);
            assert!(
                r.json()["error"]["data"]["retryAfterSeconds"]
                    .as_u64()
                    .unwrap()
                    >= 60
            );
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    // SSE clients are refused before the stream starts, with the same status.
    let r = alice
        .post(&json!({"jsonrpc":"2.0","id":200,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}))
        .await;
    assert_eq!(r.status, 429);

    // Bob has his own quota; the server saw Alice's 3 calls and this one, nothing more.
    let mut bob = init_as(&gw, Some(BOB)).await;
    assert_eq!(
        tool_text(&bob.call_tool("count_calls", json!({})).await),
        "4"
    );
}

#[tokio::test]
async fn concurrency_cap_refuses_when_the_queue_times_out() {
    let gw = Gateway::start(&token_policy(
        "max_in_flight = 1\nqueue_timeout = \"200ms\"",
    ));
    let bob = init_as(&gw, Some(BOB)).await;
    let (url, sid) = (gw.url.clone(), bob.session.clone());
    let long = tokio::spawn(async move {
        let mut c = Mcp::new(&url);
        c.bearer = Some(BOB.to_owned());
        c.session = sid;
        c.call_tool("slow", json!({"ms": 1500})).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut bob = bob;
    let busy = bob.call_tool("echo", json!({"text": "x"})).await;
    assert_eq!(busy["error"]["code"], -32015, "{busy}");
    assert_eq!(tool_text(&long.await.unwrap()), "done");
    assert_eq!(
        tool_text(&bob.call_tool("echo", json!({"text": "after"})).await),
        "after"
    );
}

#[test]
fn a_public_listener_without_tls_and_auth_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.toml");
    std::fs::write(
        &p,
        "[servers.t]\nruntime = \"process\"\ncommand = \"true\"\n",
    )
    .unwrap();
    let out = Command::new(gateway_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--policy"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a loopback address")
            && err.contains("TLS")
            && err.contains("authentication"),
        "{err}"
    );

    std::fs::write(&p, "[gateway]\nlisten = \"0.0.0.0:8811\"\n\n[servers.t]\nruntime = \"process\"\ncommand = \"true\"\n").unwrap();
    let out = Command::new(gateway_bin())
        .args(["policy", "check"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("p.toml:2:10") && err.contains("not a loopback address"),
        "{err}"
    );
}

#[test]
fn token_new_prints_a_token_and_its_hash() {
    let out = Command::new(gateway_bin())
        .args(["token", "new", "--client", "ci"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("token:"))
        .unwrap()
        .trim();
    let hash = text
        .lines()
        .find_map(|l| l.strip_prefix("token_sha256:"))
        .unwrap()
        .trim();
    assert_eq!(sha(token), hash);
    assert!(text.contains("[clients.ci]"));
}

// ---------------------------------------------------------------- JWT

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn openssl(args: &[&str]) {
    let st = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        st.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn jwt_policy(dir: &std::path::Path, key_line: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.fixture]
runtime = "process"
command = "{{fixture}}"

[auth]
resource = "https://gw.test/mcp"
authorization_servers = ["https://idp.test"]

[auth.jwt]
issuer = "https://idp.test"
audience = "portcullis"
{key_line}

[clients.carol]
jwt_subject = "carol@corp"
allow = ["fixture__echo"]
"#
    )
    .replace("{dir}", &dir.display().to_string())
}

fn claims(sub: &str, exp_from_now: i64, aud: &str) -> Value {
    json!({"iss": "https://idp.test", "aud": aud, "sub": sub, "exp": now() as i64 + exp_from_now, "iat": now()})
}

#[tokio::test]
async fn jwts_are_verified_hs256() {
    use jsonwebtoken::{encode, EncodingKey, Header};
    let dir = tempfile::tempdir().unwrap();
    let secret = "jwt-shared-secret-for-tests-0123456789";
    let gw = Gateway::start_with(
        &jwt_policy(dir.path(), "secret = \"env:TEST_JWT_SECRET\""),
        &[("TEST_JWT_SECRET", secret)],
    );
    let key = EncodingKey::from_secret(secret.as_bytes());
    let good = encode(
        &Header::default(),
        &claims("carol@corp", 300, "portcullis"),
        &key,
    )
    .unwrap();
    let mut carol = init_as(&gw, Some(&good)).await;
    assert_eq!(
        names(&carol.request("tools/list", json!({})).await),
        vec!["echo"]
    );
    assert_eq!(
        tool_text(&carol.call_tool("echo", json!({"text": "jwt"})).await),
        "jwt"
    );

    let cases = [
        (
            "expired",
            encode(
                &Header::default(),
                &claims("carol@corp", -3600, "portcullis"),
                &key,
            )
            .unwrap(),
            "expired",
        ),
        (
            "wrong audience",
            encode(
                &Header::default(),
                &claims("carol@corp", 300, "other"),
                &key,
            )
            .unwrap(),
            "audience",
        ),
        (
            "unknown subject",
            encode(
                &Header::default(),
                &claims("mallory", 300, "portcullis"),
                &key,
            )
            .unwrap(),
            "not a configured client",
        ),
        (
            "wrong key",
            encode(
                &Header::default(),
                &claims("carol@corp", 300, "portcullis"),
                &EncodingKey::from_secret(b"other-secret"),
            )
            .unwrap(),
            "signature",
        ),
        (
            "tampered",
            {
                let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
                use base64::Engine;
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let mut body: Value =
                    serde_json::from_slice(&b64.decode(&parts[1]).unwrap()).unwrap();
                body["sub"] = json!("admin");
                parts[1] = b64.encode(serde_json::to_vec(&body).unwrap());
                parts.join(".")
            },
            "signature",
        ),
        (
            "alg none",
            {
                use base64::Engine;
                let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                format!(
                    "{}.{}.",
                    b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
                    b64.encode(claims("carol@corp", 300, "portcullis").to_string())
                )
            },
            "",
        ),
    ];
    for (what, token, expect) in cases {
        let mut c = Mcp::new(&gw.url);
        c.bearer = Some(token);
        let r = c
            .post(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":LATEST,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}}))
            .await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        let challenge = r.headers["www-authenticate"].to_str().unwrap().to_owned();
        assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
        assert!(
            challenge.contains("resource_metadata="),
            "{what}: {challenge}"
        );
        assert!(r.body.contains(expect), "{what}: {}", r.body);
    }

    let (s, body) =
        common::http_get(&format!("{}/.well-known/oauth-protected-resource", gw.base)).unwrap();
    assert_eq!(s, 200);
    let meta: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(meta["resource"], "https://gw.test/mcp");
    assert_eq!(meta["authorization_servers"][0], "https://idp.test");
}

#[tokio::test]
async fn jwts_are_verified_eddsa_and_rs256() {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let dir = tempfile::tempdir().unwrap();
    let d = |f: &str| dir.path().join(f).display().to_string();
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", &d("ed.key")]);
    openssl(&["pkey", "-in", &d("ed.key"), "-pubout", "-out", &d("ed.pub")]);
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        &d("rsa.key"),
    ]);
    openssl(&[
        "pkey",
        "-in",
        &d("rsa.key"),
        "-pubout",
        "-out",
        &d("rsa.pub"),
    ]);

    for (pubkey, privkey, alg) in [
        ("ed.pub", "ed.key", Algorithm::EdDSA),
        ("rsa.pub", "rsa.key", Algorithm::RS256),
    ] {
        let gw = Gateway::start(&jwt_policy(
            dir.path(),
            &format!("public_key = \"{}\"", d(pubkey)),
        ));
        let pem = std::fs::read(d(privkey)).unwrap();
        let key = match alg {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let token = encode(
            &Header::new(alg),
            &claims("carol@corp", 300, "portcullis"),
            &key,
        )
        .unwrap();
        let mut carol = init_as(&gw, Some(&token)).await;
        assert_eq!(
            tool_text(&carol.call_tool("echo", json!({"text": "signed"})).await),
            "signed",
            "{alg:?}"
        );
        // HS256 signed with the public key bytes: the algorithm-confusion attack.
        let confused = encode(
            &Header::default(),
            &claims("carol@corp", 300, "portcullis"),
            &EncodingKey::from_secret(&std::fs::read(d(pubkey)).unwrap()),
        )
        .unwrap();
        let mut c = Mcp::new(&gw.url);
        c.bearer = Some(confused);
        let r = c.post(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":LATEST,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}})).await;
        assert_eq!(r.status, 401, "{alg:?} confusion: {}", r.body);
    }
}

// ---------------------------------------------------------------- TLS

fn make_pki(dir: &std::path::Path) {
    let d = |f: &str| dir.join(f).display().to_string();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        &d("ca.key"),
        "-out",
        &d("ca.pem"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &d("server.key"),
        "-out",
        &d("server.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &d("server.csr"),
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &d("server.ext"),
        "-out",
        &d("server.pem"),
    ]);
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=client",
        "-keyout",
        &d("client.key"),
        "-out",
        &d("client.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &d("client.csr"),
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &d("client.ext"),
        "-out",
        &d("client.pem"),
    ]);
}

fn curl_init(url: &str, extra: &[&str]) -> (bool, String) {
    let body = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":LATEST,"capabilities":{},"clientInfo":{"name":"curl","version":"0"}}}).to_string();
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            "accept: application/json, text/event-stream",
            "-d",
            &body,
        ])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn tls_and_mtls_listeners() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path());
    let d = |f: &str| dir.path().join(f).display().to_string();
    let tls = format!(
        "[gateway.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        d("server.pem"),
        d("server.key")
    );
    let policy = |extra: &str| {
        common::fixture_policy().replace(
            "listen = \"127.0.0.1:0\"\n",
            &format!("listen = \"127.0.0.1:0\"\n\n{extra}"),
        )
    };
    let gw = Gateway::spawn(&policy(&tls), &[]);
    assert!(gw.url.starts_with("https://"), "{}", gw.url);
    let (ok, out) = retry_curl(&gw.url, &["--cacert", &d("ca.pem")]);
    assert!(ok && out.contains("\"protocolVersion\""), "{out}");
    let (ok, out) = curl_init(&gw.url, &[]);
    assert!(!ok, "an unknown CA must fail verification: {out}");
    let (ok, _) = curl_init(&gw.url.replace("https://", "http://"), &[]);
    assert!(!ok, "plain HTTP on a TLS port gets no answer");
    drop(gw);

    let mtls = format!("{tls}client_ca = \"{}\"\n", d("ca.pem"));
    let gw = Gateway::spawn(&policy(&mtls), &[]);
    let with_cert = [
        "--cacert",
        &d("ca.pem"),
        "--cert",
        &d("client.pem"),
        "--key",
        &d("client.key"),
    ];
    let (ok, out) = retry_curl(&gw.url, &with_cert);
    assert!(ok && out.contains("\"protocolVersion\""), "{out}");
    let (ok, out) = curl_init(&gw.url, &["--cacert", &d("ca.pem")]);
    assert!(!ok, "mTLS rejects a client without a certificate: {out}");
}

/// Retries only while the gateway is still coming up (connection refused, or the catalog not
/// loaded yet); any TLS verdict is returned at once.
fn retry_curl(url: &str, extra: &[&str]) -> (bool, String) {
    for _ in 0..100 {
        let (ok, out) = curl_init(url, extra);
        if !out.contains("Connection refused") && !out.contains("Couldn't connect") {
            return (ok, out);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    curl_init(url, extra)
}

/// `mcp-remote` (npm) as a user would run it with a wrong token: it treats the 401 as an OAuth
/// challenge and tries to register with the gateway; what it prints must name the real problem.
#[test]
fn an_oauth_client_with_a_wrong_token_is_told_there_is_no_authorization_server() {
    let Some(bin) = common::peer("node/node_modules/.bin/mcp-remote-client") else {
        return;
    };
    let gw = Gateway::start(&token_policy(""));
    let run = |token: &str| {
        let home = tempfile::tempdir().unwrap();
        let out = Command::new("timeout")
            .arg("60")
            .arg(&bin)
            .arg(&gw.url)
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .env("HOME", home.path())
            .env("MCP_REMOTE_CONFIG_DIR", home.path().join(".mcp-auth"))
            .env("BROWSER", "true")
            .output()
            .unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let refused = run("pcs_not-a-token-of-this-gateway");
    assert!(
        refused.contains("Portcullis has no OAuth authorization server"),
        "{refused}"
    );
    let works = run(ALICE);
    assert!(works.contains("Connected successfully"), "{works}");
    assert!(!works.contains("authorization server"), "{works}");
}
