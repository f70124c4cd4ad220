//! Server lifecycles with the process runtime: shared, per-session, per-call.

mod common;

use std::time::{Duration, Instant};

use common::client::{tool_text, Mcp, LATEST};
use common::Gateway;
use serde_json::json;

fn policy(lifecycle: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.fixture]
runtime = "process"
command = "{{fixture}}"
lifecycle = "{lifecycle}"
"#
    )
}

/// Child processes of the gateway (its running servers).
fn children(gw: &Gateway) -> Vec<u32> {
    common::child_pids(gw.child.id())
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[tokio::test]
async fn per_call_gives_a_fresh_server_every_call_and_leaves_nothing() {
    let gw = Gateway::start(&policy("per-call"));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let a = tool_text(&c.call_tool("pid", json!({})).await);
    let b = tool_text(&c.call_tool("pid", json!({})).await);
    assert_ne!(a, b, "two calls, two processes");
    // A fresh process has served exactly one call: no state carried over.
    assert_eq!(tool_text(&c.call_tool("count_calls", json!({})).await), "1");
    assert_eq!(tool_text(&c.call_tool("count_calls", json!({})).await), "1");

    let mut calls = Vec::new();
    for i in 0..40 {
        let url = gw.url.clone();
        let sid = c.session.clone();
        calls.push(tokio::spawn(async move {
            let mut c = Mcp::new(&url);
            c.session = sid;
            tool_text(&c.call_tool("echo", json!({"text": format!("n{i}")})).await)
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap(), format!("n{i}"));
    }
    assert!(
        wait_until(Duration::from_secs(10), || children(&gw).is_empty()),
        "per-call processes left behind: {:?}",
        children(&gw)
    );
}

#[tokio::test]
async fn per_session_servers_are_private_and_end_with_the_session() {
    let gw = Gateway::start(&policy("per-session"));
    let mut a = Mcp::new(&gw.url);
    a.initialize(LATEST).await;
    let mut b = Mcp::new(&gw.url);
    b.initialize(LATEST).await;
    let pa1 = tool_text(&a.call_tool("pid", json!({})).await);
    let pa2 = tool_text(&a.call_tool("pid", json!({})).await);
    let pb = tool_text(&b.call_tool("pid", json!({})).await);
    assert_eq!(pa1, pa2, "a session keeps its server");
    assert_ne!(pa1, pb, "sessions do not share a server");
    assert_eq!(tool_text(&a.call_tool("count_calls", json!({})).await), "3");
    assert_eq!(tool_text(&b.call_tool("count_calls", json!({})).await), "2");

    let pid: u32 = pa1.parse().unwrap();
    assert!(children(&gw).contains(&pid));
    let del = a
        .http
        .delete(&gw.url)
        .header("mcp-session-id", a.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert!(
        wait_until(Duration::from_secs(10), || !children(&gw).contains(&pid)),
        "the deleted session's server still runs"
    );
    assert_eq!(
        tool_text(&b.call_tool("pid", json!({})).await),
        pb,
        "the other session is untouched"
    );
}

#[tokio::test]
async fn shared_servers_serve_every_session() {
    let gw = Gateway::start(&policy("shared"));
    let mut a = Mcp::new(&gw.url);
    a.initialize(LATEST).await;
    let mut b = Mcp::new(&gw.url);
    b.initialize(LATEST).await;
    assert_eq!(
        tool_text(&a.call_tool("pid", json!({})).await),
        tool_text(&b.call_tool("pid", json!({})).await)
    );
}

#[tokio::test]
async fn process_servers_get_a_scrubbed_environment_plus_their_secrets() {
    let gw = Gateway::start_with(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.fixture]
runtime = "process"
command = "{fixture}"
secrets = { API_TOKEN = "env:PORTCULLIS_TEST_SECRET" }
"#,
        &[
            ("PORTCULLIS_TEST_SECRET", "s3cr3t-value-for-env-test"),
            ("GATEWAY_ONLY_CREDENTIAL", "must-not-leak"),
        ],
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    // The gateway's own environment (which may hold credentials) does not reach servers...
    assert_eq!(
        tool_text(
            &c.call_tool("env_get", json!({"name": "GATEWAY_ONLY_CREDENTIAL"}))
                .await
        ),
        "<unset>"
    );
    assert_eq!(
        tool_text(
            &c.call_tool("env_get", json!({"name": "PORTCULLIS_TEST_SECRET"}))
                .await
        ),
        "<unset>"
    );
    // ...only the secrets the policy maps to it, under the names it chose. The answer echoes
    // the value, so the gateway redacts it: the name in the redaction proves the server holds
    // exactly the policy's value.
    assert_eq!(
        tool_text(&c.call_tool("env_get", json!({"name": "API_TOKEN"})).await),
        "[REDACTED:API_TOKEN]"
    );
    assert!(
        !gw.stderr().contains("s3cr3t-value-for-env-test"),
        "secret in the gateway log"
    );
}

#[tokio::test]
async fn a_server_that_dies_during_the_handshake_is_reported_with_its_exit_status() {
    // It reads the gateway's first message and exits without answering: first the
    // `server/discover` probe, then (a server that died on the probe is not probed again)
    // `initialize`. The startup timeout is long on purpose: the reason must come from the
    // exit, not from the timeout.
    let gw = Gateway::spawn(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.dies]
runtime = "process"
command = "/bin/sh"
args = ["-c", "read line; exit 3"]
startup_timeout = "600s"
"#,
        &[],
    );
    let mut last = String::new();
    let found = wait_until(Duration::from_secs(60), || {
        last = common::http_get(&format!("{}/ready", gw.base))
            .map(|(_, body)| body)
            .unwrap_or_default();
        last.contains("exited with status 3 during the initialize handshake")
    });
    assert!(found, "/ready said: {last}\nstderr:\n{}", gw.stderr());
}
