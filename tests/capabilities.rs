//! Which client capabilities the gateway declares to a server, and what a server that asks for
//! roots gets when no client session can answer: tested against the reference
//! `@modelcontextprotocol/server-everything`, which adapts its tools to the client's
//! capabilities and asks for roots as soon as it starts.

mod common;

use common::client::{tool_text, Mcp, LATEST};
use common::Gateway;
use serde_json::{json, Value};

fn everything(extra: &str) -> Option<String> {
    let js =
        common::peer("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js")?;
    Some(format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.ev]
runtime = "process"
command = "node"
args = ["{}", "stdio"]
{extra}
"#,
        js.display()
    ))
}

fn tool_names(list: &Value) -> Vec<String> {
    list["result"]["tools"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn roots_come_from_the_policy_when_no_client_can_answer() {
    let Some(policy) = everything(r#"roots = ["file:///workspace", "file:///srv/data"]"#) else {
        return;
    };
    let gw = Gateway::start(&policy);
    // A client that declares no roots: the server's question is answered by the gateway.
    let mut c = Mcp::new(&gw.url);
    c.initialize_with(LATEST, json!({})).await;
    let out = tool_text(&c.call_tool("get-roots-list", json!({})).await);
    assert!(
        out.contains("file:///workspace") && out.contains("file:///srv/data"),
        "{out}"
    );
    // The server's own start-up question (no session at all) was answered too.
    let log = gw.stderr();
    assert!(!log.contains("no client session is waiting"), "{log}");
    assert!(!log.contains("Failed to request roots"), "{log}");
}

#[tokio::test]
async fn capabilities_left_out_of_the_declaration_hide_the_tools_that_need_them() {
    let Some(all) = everything("") else {
        return;
    };
    let Some(roots_only) = everything(r#"client_capabilities = ["roots"]"#) else {
        return;
    };
    let names = |policy: String| async move {
        let gw = Gateway::start(&policy);
        let mut c = Mcp::new(&gw.url);
        c.initialize(LATEST).await;
        tool_names(&c.request("tools/list", json!({})).await)
    };
    let declared = names(all).await;
    assert!(
        declared.iter().any(|n| n == "trigger-sampling-request"),
        "{declared:?}"
    );
    let narrow = names(roots_only).await;
    assert!(
        !narrow
            .iter()
            .any(|n| n.starts_with("trigger-sampling") || n.starts_with("trigger-elicitation")),
        "{narrow:?}"
    );
    assert!(narrow.iter().any(|n| n == "get-roots-list"), "{narrow:?}");
}
