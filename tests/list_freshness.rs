//! Lists whose freshness runs out: a server that announces no list changes but says how long
//! its list stays fresh (`ttlMs`, as 2026-07-28 servers do) is asked again once that passes, so
//! a tool it added without notice reaches clients without anyone restarting anything.

mod common;

use std::time::{Duration, Instant};

use common::client::{tool_text, Mcp, LATEST};
use common::Gateway;
use serde_json::json;

#[tokio::test]
async fn a_list_is_read_again_when_its_freshness_runs_out() {
    if common::peer("venv/bin/python").is_none() {
        return;
    }
    let policy = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[servers.shapes]\nruntime = \"process\"\ncommand = \"{{peers}}/venv/bin/python\"\nargs = [\"{}\"]\nenv = {{ SHAPES_TTL_MS = \"1000\", SHAPES_LOG = \"{{shared}}/shapes.log\" }}\nmounts = [{{ source = \"{{shared}}\", target = \"{{shared}}\", read_only = false }}]\n",
        common::repo_root()
            .join("tests/python/servers/stateless_shapes.py")
            .display()
    );
    let gw = Gateway::start(&policy);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let names = |v: &serde_json::Value| v["result"]["tools"].to_string();
    let first = c.request("tools/list", json!({})).await;
    assert!(!names(&first).contains("\"grown\""), "{first}");
    assert_eq!(tool_text(&c.call_tool("grow", json!({})).await), "grown");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = c.request("tools/list", json!({})).await;
        if names(&list).contains("\"grown\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silently added tool never appeared: {list}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let reads = std::fs::read_to_string(gw.dir().join("shared/shapes.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"tools/list\""))
        .count();
    assert!(reads >= 2, "the gateway read the list {reads} time(s)");
}
