//! Quotas and caps count every request that reaches a server, not only tool calls: a client's
//! `rate`, a server's `rate`, the concurrency cap; a tool's `tool_rates` entry counts that tool
//! alone. A refused request gets 429 with `Retry-After` and a `denied` record.

mod common;

use std::time::Duration;

use common::client::{Mcp, LATEST};
use common::{audit_records, audit_verify, token_hash, Gateway};
use serde_json::{json, Value};

const BOB: &str = "pcs_bob-rate-limited-token-333333333333333333";
const PATIENCE: Duration = Duration::from_secs(20);

fn policy(server_extra: &str, client_extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.fx]
runtime = "process"
command = "{{fixture}}"
{server_extra}

[clients.bob]
token_sha256 = "{}"
{client_extra}
"#,
        token_hash(BOB)
    )
}

async fn bob(gw: &Gateway) -> Mcp {
    let mut c = Mcp::new(&gw.url);
    c.bearer = Some(BOB.to_owned());
    c.initialize(LATEST).await;
    c
}

/// Sends one request as plain JSON; returns the HTTP status, `Retry-After` and the message.
async fn send(c: &mut Mcp, method: &str, params: Value) -> (u16, Option<u64>, Value) {
    let id = c.next_id();
    let r = c
        .post_with(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string(),
            &[
                ("mcp-protocol-version", LATEST),
                ("accept", "application/json"),
            ],
        )
        .await;
    let retry = r
        .headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (r.status, retry, r.json())
}

#[tokio::test]
async fn a_client_rate_counts_resource_reads() {
    let mut gw = Gateway::start(&policy("", "rate = \"3/min\""));
    let mut c = bob(&gw).await;
    let uri = json!({"uri": "test://static-text"});
    let mut ok = 0;
    for _ in 0..10 {
        let (status, retry, msg) = send(&mut c, "resources/read", uri.clone()).await;
        if status == 200 && msg.get("result").is_some() {
            ok += 1;
            continue;
        }
        assert_eq!(status, 429, "{msg}");
        assert_eq!(msg["error"]["code"], -32014, "{msg}");
        assert!(retry.is_some_and(|s| (1..=60).contains(&s)), "{retry:?}");
    }
    assert_eq!(ok, 3, "10 reads under 3/min");
    let (status, _, _) = send(&mut c, "prompts/get", json!({"name": "test_simple_prompt"})).await;
    assert_eq!(status, 429, "the same quota counts prompts");

    gw.terminate(PATIENCE);
    let dir = gw.dir().join("portcullis-audit");
    let records = audit_records(&dir);
    let limited: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "denied" && r["outcome"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 8, "one record per refusal");
    assert_eq!(
        limited
            .iter()
            .filter(|r| r["method"] == "resources/read" && r["item"] == "test://static-text")
            .count(),
        7
    );
    assert!(limited.iter().all(|r| r["client"] == "bob"
        && r["detail"].as_str().unwrap().contains("client `bob` quota")
        && r.get("args_sha256").is_none()));
    let (ok, out) = audit_verify(&dir);
    assert!(ok, "audit verify: {out}");
}

#[tokio::test]
async fn a_server_rate_counts_every_method_and_a_tool_rate_only_its_tool() {
    let gw = Gateway::start(&policy(
        "rate = \"4/min\"\ntool_rates = { echo = \"1/min\" }",
        "",
    ));
    let mut c = bob(&gw).await;
    let echo = json!({"name": "echo", "arguments": {"text": "x"}});
    assert_eq!(send(&mut c, "tools/call", echo.clone()).await.0, 200);
    let (status, _, msg) = send(&mut c, "tools/call", echo).await;
    assert_eq!(status, 429);
    assert!(
        msg["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tool `fx__echo`"),
        "{msg}"
    );
    // The tool's quota does not hold up other methods; the server's counts them with the call.
    let prompt = json!({"name": "test_simple_prompt"});
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(send(&mut c, "prompts/get", prompt.clone()).await.0);
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let (_, _, msg) = send(&mut c, "completion/complete", json!({"ref": {"type": "ref/prompt", "name": "test_prompt_with_arguments"}, "argument": {"name": "arg1", "value": ""}})).await;
    assert!(
        msg["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server `fx` quota"),
        "{msg}"
    );
}

#[tokio::test]
async fn the_concurrency_cap_holds_every_method() {
    let gw = Gateway::start(&policy("max_in_flight = 1\nqueue_timeout = \"200ms\"", ""));
    let c = bob(&gw).await;
    let (url, sid) = (gw.url.clone(), c.session.clone());
    let long = tokio::spawn(async move {
        let mut c = Mcp::new(&url);
        c.bearer = Some(BOB.to_owned());
        c.session = sid;
        c.call_tool("slow", json!({"ms": 1500})).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = c;
    let busy = c
        .request("resources/read", json!({"uri": "test://static-text"}))
        .await;
    assert_eq!(busy["error"]["code"], -32015, "{busy}");
    assert!(long.await.unwrap().get("result").is_some());
    let after = c
        .request("resources/read", json!({"uri": "test://static-text"}))
        .await;
    assert!(after.get("result").is_some(), "{after}");
}
