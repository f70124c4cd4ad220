//! Remote MCP servers (`runtime = "remote"`) behind the gateway: the Python SDK's server in
//! Streamable HTTP and SSE modes and `@modelcontextprotocol/server-everything` in both modes,
//! all run by the test on 127.0.0.1. Proves header injection from secrets (and that neither the
//! secret nor the client's own token leaks), the in-process egress check, and failure handling.

mod common;

use std::time::{Duration, Instant};

use common::client::{tool_text, Mcp, LATEST};
use common::remote::Remote;
use common::Gateway;
use serde_json::{json, Value};

const SECRET: &str = "sk-remote-test-4f8a9c2e71";
const CLIENT_TOKEN: &str = "client-own-token-77d1e0";

fn policy(url: &str, egress: &str, extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
request_timeout = "20s"

[servers.remote]
runtime = "remote"
url = "{url}"
headers = {{ Authorization = "Bearer ${{secret:TOKEN}}", X-Portcullis-Test = "static-value" }}
secrets = {{ TOKEN = "env:REMOTE_TOKEN" }}
startup_timeout = "10s"
egress = {{ allow = [{egress}] }}
{extra}
"#
    )
}

fn start_gateway(url: &str, port: u16) -> Gateway {
    Gateway::start_with(
        &policy(url, &format!("\"127.0.0.1/32:{port}\""), ""),
        &[("REMOTE_TOKEN", SECRET)],
    )
}

/// A gateway that speaks the 2025 era's Streamable HTTP (sessions, the GET stream) to the
/// server even though the SDK's server also speaks 2026-07-28: the tests of that transport pin
/// it (`tests/modern_upstream.rs` covers the 2026-07-28 one).
fn start_legacy_gateway(url: &str, port: u16) -> Gateway {
    Gateway::start_with(
        &policy(
            url,
            &format!("\"127.0.0.1/32:{port}\""),
            "protocol = \"legacy\"",
        ),
        &[("REMOTE_TOKEN", SECRET)],
    )
}

fn names(tools: &Value) -> Vec<String> {
    tools["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {tools}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The header checks every Python-backed test makes: the secret arrived on every request,
/// the client's own token never did, and the gateway never logged the secret.
fn assert_headers(remote: &Remote, gw: &Gateway) {
    let reqs = remote.requests();
    assert!(!reqs.is_empty(), "the test server saw no requests");
    for r in &reqs {
        if r["path"] == "/admin/expire" {
            continue;
        }
        let h = &r["headers"];
        assert_eq!(h["authorization"], format!("Bearer {SECRET}"), "{r}");
        assert_eq!(h["x-portcullis-test"], "static-value", "{r}");
        assert!(
            !r.to_string().contains(CLIENT_TOKEN),
            "client token leaked upstream: {r}"
        );
    }
    let log = gw.stderr();
    assert!(!log.contains(SECRET), "secret in the gateway's log:\n{log}");
}

async fn client(gw: &Gateway) -> Mcp {
    let mut c = Mcp::new(&gw.url);
    // Sent to the gateway (which needs no auth here); it must never travel further.
    c.bearer = Some(CLIENT_TOKEN.to_owned());
    c.initialize(LATEST).await;
    c
}

#[tokio::test]
async fn python_streamable_http_server_with_injected_headers() {
    let Some(remote) = Remote::python("streamable-http") else {
        return;
    };
    let gw = start_legacy_gateway(
        &format!("http://127.0.0.1:{}/mcp", remote.port),
        remote.port,
    );
    let mut c = client(&gw).await;
    let tools = c.request("tools/list", json!({})).await;
    assert!(names(&tools).contains(&"echo".to_owned()), "{tools}");
    let r = c.call_tool("echo", json!({"text": "hi"})).await;
    assert_eq!(tool_text(&r), "echo: hi", "{r}");
    assert!(remote
        .requests()
        .iter()
        .any(|r| r["headers"]["mcp-session-id"].is_string()));
    assert_headers(&remote, &gw);
}

#[tokio::test]
async fn python_sse_server_through_the_legacy_fallback() {
    let Some(remote) = Remote::python("sse") else {
        return;
    };
    let gw = start_gateway(
        &format!("http://127.0.0.1:{}/sse", remote.port),
        remote.port,
    );
    assert!(gw.stderr().contains("legacy HTTP+SSE"), "{}", gw.stderr());
    let mut c = client(&gw).await;
    let tools = c.request("tools/list", json!({})).await;
    assert!(names(&tools).contains(&"echo".to_owned()), "{tools}");
    let r = c.call_tool("echo", json!({"text": "over sse"})).await;
    assert_eq!(tool_text(&r), "echo: over sse", "{r}");
    assert!(remote
        .requests()
        .iter()
        .any(|r| r["path"].as_str().unwrap().starts_with("/messages")));
    assert_headers(&remote, &gw);
}

async fn everything(mode: &str, path: &str) {
    let Some(remote) = Remote::everything(mode) else {
        return;
    };
    let gw = start_gateway(
        &format!("http://127.0.0.1:{}{path}", remote.port),
        remote.port,
    );
    let mut c = client(&gw).await;
    let tools = c.request("tools/list", json!({})).await;
    assert!(names(&tools).contains(&"echo".to_owned()), "{tools}");
    let r = c.call_tool("echo", json!({"message": "everything"})).await;
    assert!(tool_text(&r).contains("everything"), "{r}");
    assert!(!gw.stderr().contains(SECRET));
}

#[tokio::test]
async fn server_everything_streamable_http() {
    everything("streamableHttp", "/mcp").await;
}

#[tokio::test]
async fn server_everything_sse() {
    everything("sse", "/sse").await;
}

#[tokio::test]
async fn remote_stopped_mid_call_gives_a_prompt_error_and_a_restart_recovers() {
    let Some(mut remote) = Remote::python("streamable-http") else {
        return;
    };
    let gw = start_gateway(
        &format!("http://127.0.0.1:{}/mcp", remote.port),
        remote.port,
    );
    let mut c = client(&gw).await;
    let id = c.next_id();
    let slow = json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"slow","arguments":{"seconds":60}}});
    let call = c.post(&slow);
    let started = Instant::now();
    let (r, ()) = tokio::join!(call, async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        remote.stop();
    });
    let answer = r.message();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    let msg = answer["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{answer}"));
    assert!(msg.contains("remote"), "{msg}");

    remote.restart();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let r = c.call_tool("echo", json!({"text": "back"})).await;
        if r.get("result").is_some() && r["result"]["isError"] != true {
            assert_eq!(tool_text(&r), "echo: back");
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {r}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_headers(&remote, &gw);
}

#[tokio::test]
async fn expired_upstream_session_is_reinitialized_transparently() {
    let Some(remote) = Remote::python("streamable-http") else {
        return;
    };
    let gw = start_legacy_gateway(
        &format!("http://127.0.0.1:{}/mcp", remote.port),
        remote.port,
    );
    let mut c = client(&gw).await;
    assert_eq!(
        tool_text(&c.call_tool("echo", json!({"text": "1"})).await),
        "echo: 1"
    );
    let inits = |r: &Remote| {
        r.requests()
            .iter()
            .filter(|q| q["method"] == "POST" && q["headers"]["mcp-session-id"].is_null())
            .count()
    };
    let before = inits(&remote);
    let expired = common::http_post(&format!("http://127.0.0.1:{}/admin/expire", remote.port));
    assert_eq!(expired, 200);
    let r = c.call_tool("echo", json!({"text": "2"})).await;
    assert_eq!(tool_text(&r), "echo: 2", "{r}");
    assert!(inits(&remote) > before, "no new initialize after the 404");
    assert_headers(&remote, &gw);
}

#[tokio::test]
async fn tools_added_upstream_reach_the_catalog() {
    let Some(remote) = Remote::python("streamable-http") else {
        return;
    };
    let gw = start_legacy_gateway(
        &format!("http://127.0.0.1:{}/mcp", remote.port),
        remote.port,
    );
    let mut c = client(&gw).await;
    let r = c.call_tool("add_tool", json!({"name": "fresh"})).await;
    assert_eq!(tool_text(&r), "added fresh", "{r}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tools = c.request("tools/list", json!({})).await;
        if names(&tools).contains(&"fresh".to_owned()) {
            break;
        }
        assert!(Instant::now() < deadline, "new tool never listed: {tools}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        tool_text(&c.call_tool("fresh", json!({})).await),
        "I am fresh"
    );
}

/// `localhost` resolves to a loopback address: refused unless a CIDR rule allows it.
#[tokio::test]
async fn private_address_refused_without_an_egress_rule() {
    let Some(remote) = Remote::python("streamable-http") else {
        return;
    };
    let url = format!("http://localhost:{}/mcp", remote.port);
    // No secret headers: plain http may carry secrets only to a loopback IP literal.
    let no_headers = |p: String| {
        p.lines()
            .filter(|l| !l.starts_with("headers"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let text = no_headers(policy(&url, "", ""));
    let gw = Gateway::spawn(&text, &[("REMOTE_TOKEN", SECRET)]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, body) = common::http_get(&format!("{}/ready", gw.base)).unwrap_or_default();
        if body.contains("not allowed") {
            assert!(body.contains("127.0.0.1") || body.contains("::1"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never refused: {body}\n{}",
            gw.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        remote.requests().is_empty(),
        "the gateway reached a refused address"
    );
    drop(gw);

    // The same server with the rule: allowed.
    let allowed = no_headers(policy(
        &url,
        &format!("\"127.0.0.0/8:{}\"", remote.port),
        "",
    ));
    let gw = Gateway::start_with(&allowed, &[("REMOTE_TOKEN", SECRET)]);
    let mut c = client(&gw).await;
    assert_eq!(
        tool_text(&c.call_tool("echo", json!({"text": "ok"})).await),
        "echo: ok"
    );
}
