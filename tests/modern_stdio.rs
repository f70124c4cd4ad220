//! Stdio servers and MCP 2026-07-28: every instance is probed with `server/discover` before
//! anything else. The Python SDK 2.3's stdio server (dual-era) is then spoken to in 2026-07-28,
//! a 2025-era server that ignores requests before `initialize` gets the handshake once the probe
//! goes unanswered, and a 2025-era server pinned to 2026-07-28 does not start and says why. (A
//! server that dies on the probe is tested in `lifecycles.rs`; the SDK's stdio server with
//! clients of every era in `tests/python/test_modern_server.py`.)

mod common;

use common::client::{tool_text, LATEST};
use common::modern::client;
use common::Gateway;
use serde_json::json;

/// A 2025-era stdio server that ignores everything before `initialize`, as some do.
const SILENT_BEFORE_INITIALIZE: &str = r#"
import json, sys
for _ in range(10000):
    line = sys.stdin.readline()
    if not line:
        break
    msg = json.loads(line)
    if "id" not in msg:
        continue
    m = msg.get("method")
    if m == "initialize":
        r = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "silent", "version": "1"}}
    elif m == "tools/list":
        r = {"tools": [{"name": "hi", "inputSchema": {"type": "object"}}]}
    elif m == "tools/call":
        r = {"content": [{"type": "text", "text": "hi from 2025"}]}
    else:
        continue
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": r}) + "\n")
    sys.stdout.flush()
"#;

#[tokio::test]
async fn stdio_servers_are_probed_and_fall_back_or_fail_as_pinned() {
    let Some(python) = common::peer("venv/bin/python") else {
        return;
    };
    let script = common::repo_root().join("tests/python/servers/modern_server.py");
    let policy = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.sdk]
runtime = "process"
command = "{python}"
args = ["{script}", "stdio", "0", "{{shared}}/sdk.log"]
mounts = [{{ source = "{{shared}}", target = "{{shared}}", read_only = false }}]

[servers.silent]
runtime = "process"
command = "python3"
args = ["-c", {silent}]

[servers.pinned]
runtime = "process"
command = "{{fixture}}"
protocol = "2026-07-28"
"#,
        python = python.display(),
        script = script.display(),
        silent = serde_json::to_string(SILENT_BEFORE_INITIALIZE).unwrap(),
    );
    let gw = Gateway::spawn(&policy, &[]);
    // A 2025-era server pinned to 2026-07-28 does not start, and says why.
    let ready = gw.ready_says("does not speak 2026-07-28");
    assert!(ready.contains("\"pinned\":{\"ready\":false"), "{ready}");
    gw.ready_says("\"silent\":{\"ready\":true");
    let mut c = client(&gw, None);
    c.initialize(LATEST).await;
    // The SDK's dual-era stdio server is spoken to in 2026-07-28; the silent one got the
    // handshake once the probe went unanswered.
    assert_eq!(
        tool_text(&c.call_tool("sdk__era", json!({})).await),
        "2026-07-28"
    );
    assert_eq!(
        tool_text(&c.call_tool("silent__hi", json!({})).await),
        "hi from 2025"
    );
    let log = gw.stderr();
    assert!(
        log.contains("no answer to server/discover within 5s"),
        "the fallback says why: {log}"
    );
}

/// The script server of tests/python/servers/stateless_shapes.py (alone: its tools are not
/// prefixed) as a 2026-07-28 server
/// offering the tasks extension, logging what it gets to `{shared}/shapes.log`.
fn modern_shapes_policy(timeout: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
request_timeout = "{timeout}"

[servers.shapes]
runtime = "process"
command = "{{peers}}/venv/bin/python"
args = ["{}"]
protocol = "2026-07-28"
env = {{ SHAPES_MODERN = "1", SHAPES_LOG = "{{shared}}/shapes.log" }}
mounts = [{{ source = "{{shared}}", target = "{{shared}}", read_only = false }}]
"#,
        common::repo_root()
            .join("tests/python/servers/stateless_shapes.py")
            .display()
    )
}

/// The requests the server logged, for `method`.
fn logged(gw: &Gateway, method: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(gw.dir().join("shared/shapes.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["method"] == method)
        .collect()
}

/// A 2025-era client cannot follow a task of the 2026-07-28 tasks extension: the gateway
/// declares the extension for it, follows the task the server makes of its call (polling
/// `tasks/get`), and answers the call with the task's outcome: its result, its error, or, when
/// the call's time is up, a timeout, after which the task is cancelled at the server.
#[tokio::test]
async fn a_2025_client_gets_the_outcome_of_a_2026_servers_task() {
    if common::peer("venv/bin/python").is_none() {
        return;
    }
    let gw = Gateway::start(&modern_shapes_policy("3s"));
    let mut c = common::client::Mcp::new(&gw.url);
    c.initialize(LATEST).await;

    let r = c.call_tool("start_job", json!({})).await;
    assert_eq!(tool_text(&r), "job done", "{r}");
    assert!(
        r["result"].get("resultType").is_none() && r["result"].get("taskId").is_none(),
        "a task shape reached a 2025-era client: {r}"
    );
    let calls = logged(&gw, "tools/call");
    assert!(
        calls.iter().all(
            |m| m["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]["extensions"]
                .get("io.modelcontextprotocol/tasks")
                .is_some()
        ),
        "the extension was not declared for the 2025-era caller: {calls:?}"
    );
    assert!(!logged(&gw, "tasks/get").is_empty());

    let r = c.call_tool("failing", json!({})).await;
    assert_eq!(r["error"]["message"], "the job broke", "{r}");
    assert_eq!(r["error"]["code"], -32603, "{r}");

    // A task that never ends: the call times out and the task is cancelled at the server.
    let r = c.call_tool("forever", json!({})).await;
    let e = r["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(e.contains("timed out") || e.contains("3s"), "{r}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let cancels = logged(&gw, "tasks/cancel");
        if cancels.iter().any(|m| {
            m["params"]["taskId"]
                .as_str()
                .unwrap_or("")
                .starts_with("forever-")
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned task was never cancelled"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // And the gateway still serves the client.
    let r = c.call_tool("start_job", json!({})).await;
    assert_eq!(tool_text(&r), "job done", "{r}");
}
