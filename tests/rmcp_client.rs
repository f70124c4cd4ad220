//! The Rust MCP SDK (rmcp) as a real client of the gateway.

mod common;

use common::{fixture_policy, peer, Gateway};
use rmcp::model::CallToolRequestParams;
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
