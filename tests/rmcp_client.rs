//! The Rust MCP SDK (rmcp) as a real client of the gateway.

mod common;

use std::time::{Duration, Instant};

use common::lock::{rug_pull_policy, write_lock};
use common::{fixture_policy, peer, Gateway};
use rmcp::model::CallToolRequestParams;
use rmcp::service::ServiceError;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::ServiceExt;

fn args(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v.as_object().cloned().unwrap()
}

fn text_of(r: &rmcp::model::CallToolResult) -> String {
    let v = serde_json::to_value(r).unwrap();
    v["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn rmcp_lists_and_calls_tools_of_our_fixture() {
    let gw = Gateway::start(&fixture_policy());
    let client =
        ().serve(StreamableHttpClientTransport::from_uri(gw.url.as_str()))
            .await
            .expect("rmcp connects");
    let info = client.peer_info().expect("server info");
    let info = serde_json::to_value(&*info).unwrap();
    assert_eq!(info["serverInfo"]["name"], "portcullis", "{info}");
    let tools = client.list_all_tools().await.expect("tools/list");
    assert!(tools.iter().any(|t| t.name == "echo"));
    let r = client
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(args(serde_json::json!({"text": "from rmcp"}))),
        )
        .await
        .expect("tools/call");
    assert_eq!(text_of(&r), "from rmcp");
    client.cancel().await.ok();
}

#[tokio::test]
async fn rmcp_calls_mcp_server_time_behind_the_gateway() {
    let Some(time) = peer("venv/bin/mcp-server-time") else {
        return;
    };
    let gw = Gateway::start(&format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.time]
runtime = "process"
command = "{}"
args = ["--local-timezone", "UTC"]

[servers.fixture]
runtime = "process"
command = "{{fixture}}"
"#,
        time.display()
    ));
    let client =
        ().serve(StreamableHttpClientTransport::from_uri(gw.url.as_str()))
            .await
            .expect("rmcp connects");
    let tools = client.list_all_tools().await.expect("tools/list");
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    assert!(
        names.contains(&"time__get_current_time".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"fixture__echo".to_owned()), "{names:?}");
    let r = client
        .call_tool(
            CallToolRequestParams::new("time__get_current_time")
                .with_arguments(args(serde_json::json!({"timezone": "UTC"}))),
        )
        .await
        .expect("tools/call");
    let payload: serde_json::Value = serde_json::from_str(&text_of(&r)).expect("time returns JSON");
    assert_eq!(payload["timezone"], "UTC");
    client.cancel().await.ok();
}

/// Issue 18's rug pull as an rmcp client sees it, with the lock enforced: after one call
/// `rug_pull.py` rewrites `add`'s description and offers `exfiltrate`; neither is listed or
/// callable any more, while the unchanged `echo` keeps working.
#[tokio::test(flavor = "multi_thread")]
async fn rmcp_sees_a_changed_tool_withheld_by_the_enforced_lock() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("policy.toml.lock");
    let policy = rug_pull_policy(&lock, "enforce");
    write_lock(dir.path(), &policy);

    let gw = Gateway::start(&policy);
    let client =
        ().serve(StreamableHttpClientTransport::from_uri(gw.url.as_str()))
            .await
            .expect("rmcp connects");
    let call = |name: &str, a: serde_json::Value| {
        client.call_tool(CallToolRequestParams::new(name.to_owned()).with_arguments(args(a)))
    };
    let r = call("add", serde_json::json!({"a": 1, "b": 2}))
        .await
        .expect("add, as approved");
    assert_eq!(text_of(&r), "3");

    // The server has now changed `add`: once the gateway has relisted, it is withheld.
    let deadline = Instant::now() + Duration::from_secs(30);
    let names = loop {
        let tools = client.list_all_tools().await.expect("tools/list");
        let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        if !names.iter().any(|n| n == "add") {
            break names;
        }
        assert!(
            Instant::now() < deadline,
            "the changed `add` is still listed: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(names.iter().any(|n| n == "echo"), "{names:?}");
    assert!(!names.iter().any(|n| n == "exfiltrate"), "{names:?}");

    let refused = |name: &str, e: Result<rmcp::model::CallToolResult, ServiceError>| match e {
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.code.0, -32030, "{name}: {e:?}");
            e.message.into_owned()
        }
        other => panic!("{name} was not refused with a JSON-RPC error: {other:?}"),
    };
    let msg = refused(
        "add",
        call("add", serde_json::json!({"a": 1, "b": 1})).await,
    );
    assert!(
        msg.contains("`add`") && msg.contains("`rp`") && msg.contains("changed: description"),
        "{msg}"
    );
    assert!(msg.contains("tools lock --update"), "{msg}");
    let msg = refused(
        "exfiltrate",
        call("exfiltrate", serde_json::json!({"path": "/etc/passwd"})).await,
    );
    assert!(
        msg.contains("`exfiltrate`") && msg.contains("not in the approved definitions"),
        "{msg}"
    );

    let r = call("echo", serde_json::json!({"text": "still approved"}))
        .await
        .expect("the unchanged echo");
    assert_eq!(text_of(&r), "still approved");
    client.cancel().await.ok();
}
