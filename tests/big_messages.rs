//! A hostile stdio server oversizes every kind of message it can send (issue 29): each is
//! skipped without being buffered, the request it concerned gets a clear error (or its timeout,
//! when its id cannot be read), and the process keeps serving. The same answers through the
//! official SDK clients are in tests/python/test_big_messages.py.

mod common;

use common::client::{tool_text, Mcp, LATEST};
use common::{peer, repo_root, Gateway};
use serde_json::{json, Value};

const LIMIT: u64 = 1 << 20;

fn policy() -> Option<String> {
    let python = peer("venv/bin/python")?;
    let script = repo_root().join("tests/python/servers/oversized_server.py");
    Some(format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.hostile]
runtime = "process"
command = "{}"
args = ["{}"]
max_message_bytes = "1m"
request_timeout = "3s"
"#,
        python.display(),
        script.display()
    ))
}

#[tokio::test]
async fn oversized_messages_of_every_kind_are_skipped_and_the_server_keeps_serving() {
    let Some(policy) = policy() else { return };
    let gw = Gateway::start(&policy);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let pid = tool_text(&c.call_tool("pid", json!({})).await);

    // An answer over the limit, its id first: the caller learns why, with the exact size.
    let size = 2 * LIMIT;
    let r = c.call_tool("huge", json!({ "bytes": size })).await;
    assert_eq!(r["error"]["code"], -32017, "{r}");
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("server `hostile`")
            && message.contains("`tools/call`")
            && message.contains(&format!("limit of {LIMIT} bytes")),
        "{message}"
    );
    let data = &r["error"]["data"];
    assert_eq!(data["limit"], LIMIT, "{r}");
    let seen = data["size"].as_u64().unwrap_or(0);
    assert!(seen > size && seen < size + 200, "{r}");

    // Just under the limit still arrives whole.
    let r = c.call_tool("huge", json!({ "bytes": LIMIT - 1000 })).await;
    assert_eq!(
        tool_text(&r).len() as u64,
        LIMIT - 1000,
        "{}",
        &r.to_string()[..200]
    );

    // The id after the payload cannot be read without buffering it: that call fails at its
    // timeout, and only that call.
    let r = c.call_tool("id_last", json!({ "bytes": size })).await;
    assert_eq!(r["error"]["code"], -32011, "{r}");

    // An oversized notification is dropped; the answer after it arrives.
    let r = c.call_tool("noisy", json!({ "bytes": size })).await;
    assert_eq!(tool_text(&r), "after the noise", "{r}");

    // An oversized request from the server is refused back to it, so it does not wait.
    let r = c.call_tool("asks_big", json!({ "bytes": size })).await;
    assert!(tool_text(&r).starts_with("sampling refused: -32017"), "{r}");

    assert_eq!(
        tool_text(&c.call_tool("pid", json!({})).await),
        pid,
        "the server process was replaced"
    );
    let log = gw.stderr.lock().unwrap().clone();
    let skipped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("skipped a message over max_message_bytes"))
        .collect();
    assert_eq!(
        skipped.len(),
        4,
        "one log line per oversized message:\n{log}"
    );
    assert!(
        skipped
            .iter()
            .all(|l| l.contains("size=") && l.contains(&format!("limit={LIMIT}"))),
        "{skipped:#?}"
    );
    let metrics: Value = json!(reqwest::get(format!("{}/metrics", gw.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap());
    assert!(
        metrics.as_str().unwrap_or_default().contains(
            r#"portcullis_calls_total{server="hostile",tool="huge",outcome="too_large"} 1"#
        ),
        "{metrics}"
    );
}
