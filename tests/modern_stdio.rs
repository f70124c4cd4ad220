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
