//! MCP 2026-07-28 toward servers: the gateway probes each remote server with `server/discover`,
//! speaks 2026-07-28 to those that answer as modern servers and the initialize handshake to the
//! rest, and serves clients of both eras either way. The servers are the Python SDK 2.3's, run
//! by the test on 127.0.0.1 (`tests/python/servers/modern_server.py`): one that speaks only
//! 2026-07-28, a dual-era one, and one that predates 2026-07-28. Everything is asserted on the
//! wire, from the server's own log of what it received. The interactive flows (elicitation,
//! sampling, roots, progress, logs, listen) with real SDK clients of both eras are in
//! `tests/python/test_modern_server.py`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::client::{tool_text, Mcp, LATEST};
use common::modern::{body, client, headers, request, send, sha, text, MODERN};
use common::remote::Remote;
use common::{audit_records, Gateway};
use serde_json::{json, Value};

const ALICE: &str = "alice-upstream-token";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const BOB: &str = "bob-upstream-token";

/// The remote server `modern` (with `extra` keys) beside the fixture server, so that tool names
/// are prefixed; alice may use only some of `modern`'s tools, bob everything.
fn policy(remote: &Remote, audit: &Path, extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
request_timeout = "20s"

[audit]
dir = "{audit}"

[servers.modern]
runtime = "remote"
url = "http://127.0.0.1:{port}/mcp"
startup_timeout = "10s"
egress = {{ allow = ["127.0.0.1/32:{port}"] }}
{extra}

[servers.fixture]
runtime = "process"
command = "{{fixture}}"

[clients.alice]
token_sha256 = "{alice}"
allow = ["modern__echo", "modern__ask_name", "modern__query", "modern__greet"]

[clients.bob]
token_sha256 = "{bob}"
"#,
        audit = audit.display(),
        port = remote.port,
        alice = sha(ALICE),
        bob = sha(BOB),
    )
}

/// The HTTP requests the server received, in order (its log also holds its replies).
fn requests(remote: &Remote) -> Vec<Value> {
    remote
        .requests()
        .into_iter()
        .filter(|r| r.get("headers").is_some())
        .collect()
}

/// The requests the server received for `method`.
fn received(remote: &Remote, method: &str) -> Vec<Value> {
    requests(remote)
        .into_iter()
        .filter(|r| r["body"]["method"] == method)
        .collect()
}

/// The server's log entries for calls of its tool `tool`.
fn calls_of(remote: &Remote, tool: &str) -> Vec<Value> {
    received(remote, "tools/call")
        .into_iter()
        .filter(|r| r["body"]["params"]["name"] == tool)
        .collect()
}

/// The `requestState` the server put in its (first) `InputRequiredResult`, from its replies.
fn server_state(remote: &Remote) -> String {
    for r in remote.requests() {
        let Some(reply) = r["reply"].as_str() else {
            continue;
        };
        let bodies = reply
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::to_owned)
            .chain([reply.to_owned()]);
        for b in bodies {
            if let Ok(v) = serde_json::from_str::<Value>(b.trim()) {
                if let Some(s) = v["result"]["requestState"].as_str() {
                    return s.to_owned();
                }
            }
        }
    }
    panic!("the server never answered with a requestState")
}

async fn legacy_client(gw: &Gateway, token: &str) -> Mcp {
    let mut c = client(gw, Some(token));
    c.initialize(LATEST).await;
    c
}

#[tokio::test]
async fn clients_of_both_eras_use_a_modern_only_server_over_2026_07_28() {
    let Some(remote) = Remote::modern("modern") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let gw = Gateway::start(&policy(&remote, &audit, ""));

    // A 2025-era client: tools, prompts and resources of the modern server, renamed.
    let mut legacy = legacy_client(&gw, BOB).await;
    let tools = legacy.request("tools/list", json!({})).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(
        names.contains(&"modern__query") && names.contains(&"fixture__echo"),
        "{tools}"
    );
    let r = legacy
        .call_tool(
            "modern__query",
            json!({"region": "eu-west", "sql": "select 1"}),
        )
        .await;
    assert_eq!(tool_text(&r), "eu-west: select 1", "{r}");
    let p = legacy
        .request(
            "prompts/get",
            json!({"name": "modern__greet", "arguments": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(
        p["result"]["messages"][0]["content"]["text"], "Say hello to Ada.",
        "{p}"
    );
    let read = legacy
        .request("resources/read", json!({"uri": "test://modern/static"}))
        .await;
    assert_eq!(
        read["result"]["contents"][0]["text"], "static text of a modern server",
        "{read}"
    );

    // A 2026-07-28 client: the same call, statelessly (mirroring the region as the tool's
    // schema says); the gateway answers as itself.
    let bob = client(&gw, Some(BOB));
    let mut h = headers("tools/call", Some("modern__query"));
    h.push(("mcp-param-region".into(), "ap-south".into()));
    let b = body(
        7,
        "tools/call",
        json!({"name": "modern__query", "arguments": {"region": "ap-south", "sql": "select 2"},
               "_meta": {"traceparent": TRACEPARENT, "tracestate": "vendor=a1"}}),
        json!({}),
    );
    let r = send(&bob, &b, &h).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = r.message();
    assert_eq!(text(&m), "ap-south: select 2");
    assert_eq!(m["result"]["resultType"], "complete");
    assert_eq!(
        m["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "portcullis",
        "the gateway's identity, not the server's: {m}"
    );

    // What the server got: 2026-07-28 only, probed first, no session, no GET stream, and the
    // request metadata headers written from the renamed body.
    let log = requests(&remote);
    assert_eq!(log[0]["body"]["method"], "server/discover", "{}", log[0]);
    for r in &log {
        assert_eq!(r["method"], "POST", "{r}");
        assert_eq!(r["headers"]["mcp-protocol-version"], MODERN, "{r}");
        assert!(r["headers"].get("mcp-session-id").is_none(), "{r}");
        assert_ne!(r["body"]["method"], "initialize", "{r}");
        assert_eq!(r["headers"]["mcp-method"], r["body"]["method"], "{r}");
        let meta = &r["body"]["params"]["_meta"];
        assert_eq!(
            meta["io.modelcontextprotocol/protocolVersion"], MODERN,
            "{r}"
        );
        assert_eq!(
            meta["io.modelcontextprotocol/clientInfo"]["name"], "portcullis",
            "{r}"
        );
    }
    let queries = calls_of(&remote, "query");
    assert!(
        queries
            .iter()
            .all(|q| q["body"]["params"]["arguments"]["sql"].is_string()),
        "{queries:?}"
    );
    assert_eq!(queries.len(), 2, "{queries:?}");
    for (q, region) in queries.iter().zip(["eu-west", "ap-south"]) {
        assert_eq!(
            q["headers"]["mcp-name"], "query",
            "the upstream's name: {q}"
        );
        assert_eq!(q["headers"]["mcp-param-region"], region, "{q}");
    }
    let meta = &queries[1]["body"]["params"]["_meta"];
    assert_eq!(
        meta["traceparent"], TRACEPARENT,
        "trace context passes unchanged: {meta}"
    );
    assert_eq!(meta["tracestate"], "vendor=a1");
    assert!(
        !Value::Array(log.clone())
            .to_string()
            .contains("modern-test"),
        "the client's self-reported clientInfo is not forwarded as the gateway's"
    );
    assert!(
        received(&remote, "subscriptions/listen")
            .iter()
            .any(|l| l["body"]["params"]["notifications"]["toolsListChanged"] == true),
        "the gateway listens for the server's list changes"
    );

    // The era is recorded when the server starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        audit_records(&audit)
            .iter()
            .any(|r| r["kind"] == "container_start"
                && r["server"] == "modern"
                && r["detail"] == "protocol 2026-07-28"),
        "no container_start record naming the era"
    );
}

#[tokio::test]
async fn input_requests_pass_through_to_a_2026_client_with_the_state_sealed() {
    let Some(remote) = Remote::modern("modern") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&policy(&remote, &dir.path().join("audit"), ""));
    let alice = client(&gw, Some(ALICE));
    let bob = client(&gw, Some(BOB));
    let caps = json!({"elicitation": {}});
    let call = json!({"name": "modern__ask_name", "arguments": {}});
    let first = request(&alice, 1, "tools/call", call.clone(), caps.clone())
        .await
        .message();
    let r = &first["result"];
    assert_eq!(r["resultType"], "input_required", "{first}");
    assert_eq!(
        r["inputRequests"]["who"]["method"], "elicitation/create",
        "{first}"
    );
    let state = r["requestState"].as_str().unwrap().to_owned();
    assert_ne!(
        state, "asked-once",
        "the server's own state never reaches the client"
    );

    // Someone else's retry with alice's state, and a tampered state: refused at the gateway.
    let answers = json!({"who": {"action": "accept", "content": {"name": "Ada"}}});
    let mut retry = call.clone();
    retry["inputResponses"] = answers.clone();
    retry["requestState"] = json!(state);
    let stolen = request(&bob, 2, "tools/call", retry.clone(), caps.clone()).await;
    assert_eq!(stolen.json()["error"]["code"], -32602, "{}", stolen.body);
    let mut tampered = retry.clone();
    tampered["requestState"] = json!(format!("{state}x"));
    let t = request(&alice, 3, "tools/call", tampered, caps.clone()).await;
    assert_eq!(t.json()["error"]["code"], -32602, "{}", t.body);
    assert_eq!(
        calls_of(&remote, "ask_name").len(),
        1,
        "refused retries never reached the server"
    );

    // The real retry: the server gets its own state back, and the client's answers.
    let done = request(&alice, 4, "tools/call", retry, caps)
        .await
        .message();
    assert_eq!(text(&done), "hello Ada", "{done}");
    let asked = calls_of(&remote, "ask_name");
    assert_eq!(asked.len(), 2);
    let own = server_state(&remote);
    assert_ne!(
        own, state,
        "the client saw a token of the gateway's, not the server's state"
    );
    assert_eq!(
        asked[1]["body"]["params"]["requestState"], own,
        "the server got back exactly the state it gave"
    );
    assert_eq!(asked[1]["body"]["params"]["inputResponses"], answers);
    assert_eq!(
        asked[0]["body"]["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"],
        json!({"elicitation": {}}),
        "the server learns what the client can answer"
    );
}

#[tokio::test]
async fn a_server_that_predates_2026_gets_the_initialize_handshake() {
    let Some(remote) = Remote::modern("legacy") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&policy(&remote, &dir.path().join("audit"), ""));
    let mut legacy = legacy_client(&gw, BOB).await;
    let r = legacy
        .call_tool("modern__echo", json!({"text": "old"}))
        .await;
    assert_eq!(tool_text(&r), "echo: old", "{r}");
    let bob = client(&gw, Some(BOB));
    let r = request(
        &bob,
        2,
        "tools/call",
        json!({"name": "modern__echo", "arguments": {"text": "new"},
               "_meta": {"traceparent": TRACEPARENT}}),
        json!({}),
    )
    .await;
    assert_eq!(text(&r.message()), "echo: new");
    let echoes = calls_of(&remote, "echo");
    let meta = &echoes[1]["body"]["params"]["_meta"];
    assert_eq!(meta["traceparent"], TRACEPARENT, "{meta}");
    assert!(
        meta.get("io.modelcontextprotocol/protocolVersion")
            .is_none(),
        "a 2025-era server gets no 2026-07-28 envelope: {meta}"
    );

    let log = requests(&remote);
    assert_eq!(
        log[0]["body"]["method"], "server/discover",
        "probed first: {}",
        log[0]
    );
    assert_eq!(
        log[1]["body"]["method"], "initialize",
        "then the handshake: {}",
        log[1]
    );
    assert_eq!(received(&remote, "server/discover").len(), 1, "probed once");
    for c in calls_of(&remote, "echo") {
        assert!(c["headers"]["mcp-session-id"].is_string(), "{c}");
        assert_ne!(c["headers"]["mcp-protocol-version"], MODERN, "{c}");
    }
}

#[tokio::test]
async fn a_restarted_server_is_probed_again() {
    let Some(mut remote) = Remote::modern("modern") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&policy(&remote, &dir.path().join("audit"), ""));
    let mut c = legacy_client(&gw, BOB).await;
    assert_eq!(
        tool_text(&c.call_tool("modern__echo", json!({"text": "1"})).await),
        "echo: 1"
    );
    remote.stop();
    gw.ready_says("\"modern\":{\"ready\":false");
    remote.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = c.call_tool("modern__echo", json!({"text": "2"})).await;
        if r["result"]["content"][0]["text"] == "echo: 2" {
            break;
        }
        assert!(Instant::now() < deadline, "never recovered: {r}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        received(&remote, "server/discover").len(),
        2,
        "one probe per start"
    );
}

#[tokio::test]
async fn a_pinned_protocol_is_kept_or_the_server_fails_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    // A modern-only server pinned to the handshake: its refusal names the revision it speaks.
    if let Some(remote) = Remote::modern("modern") {
        let gw = Gateway::spawn(&policy(&remote, &audit, "protocol = \"legacy\""), &[]);
        gw.ready_says("2026-07-28");
        assert!(
            received(&remote, "server/discover").is_empty(),
            "no probe when pinned"
        );
    }
    // A server that predates 2026-07-28, required to speak it.
    if let Some(remote) = Remote::modern("legacy") {
        let gw = Gateway::spawn(&policy(&remote, &audit, "protocol = \"2026-07-28\""), &[]);
        let body = gw.ready_says("does not speak 2026-07-28");
        assert!(body.contains("protocol = "), "says which setting: {body}");
        assert!(
            received(&remote, "initialize").is_empty(),
            "no fallback when pinned"
        );
    }
    // A dual-era server pinned to the handshake: sessions, as before 2026-07-28.
    if let Some(remote) = Remote::modern("dual") {
        let gw = Gateway::start(&policy(&remote, &audit, "protocol = \"legacy\""));
        let mut c = legacy_client(&gw, BOB).await;
        assert_eq!(
            tool_text(&c.call_tool("modern__echo", json!({"text": "x"})).await),
            "echo: x"
        );
        assert!(calls_of(&remote, "echo")[0]["headers"]["mcp-session-id"].is_string());
    }
}

/// What a hostile 2026-07-28 client tries against a modern server: every way to reach what it
/// was not granted, and headers and `_meta` that are oversized or malformed. None of it may
/// reach the server, and the gateway keeps serving.
#[tokio::test]
async fn a_hostile_2026_client_reaches_nothing_it_was_not_granted() {
    let Some(remote) = Remote::modern("modern") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let gw = Gateway::start(&policy(&remote, &audit, ""));
    let alice = client(&gw, Some(ALICE));
    let denied_call = |id| {
        body(
            id,
            "tools/call",
            json!({"name": "modern__slow", "arguments": {"seconds": 0}}),
            json!({}),
        )
    };
    // The denied tool, with honest headers: 403.
    let r = send(
        &alice,
        &denied_call(1),
        &headers("tools/call", Some("modern__slow")),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Headers naming an allowed tool over a body that calls the denied one, and the reverse.
    let r = send(
        &alice,
        &denied_call(2),
        &headers("tools/call", Some("modern__echo")),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!(-32020)),
        "{}",
        r.body
    );
    let allowed = body(
        3,
        "tools/call",
        json!({"name": "modern__echo", "arguments": {"text": "x"}}),
        json!({}),
    );
    let r = send(
        &alice,
        &allowed,
        &headers("tools/call", Some("modern__slow")),
    )
    .await;
    assert_eq!(r.json()["error"]["code"], -32020, "{}", r.body);
    // A mirrored argument whose header disagrees with the body (the server would route on it).
    let q = body(
        4,
        "tools/call",
        json!({"name": "modern__query", "arguments": {"region": "eu", "sql": "s"}}),
        json!({}),
    );
    let mut h = headers("tools/call", Some("modern__query"));
    h.push(("mcp-param-region".into(), "us".into()));
    let r = send(&alice, &q, &h).await;
    assert_eq!(r.json()["error"]["code"], -32020, "{}", r.body);
    // Tools it may not see, through every other door: listing hides them, a task handle or a
    // request state it did not get is refused.
    let list = request(&alice, 5, "tools/list", json!({}), json!({}))
        .await
        .message();
    let listed = list["result"]["tools"].to_string();
    assert!(
        listed.contains("modern__echo") && !listed.contains("modern__slow"),
        "{list}"
    );
    let forged = request(
        &alice,
        6,
        "tasks/get",
        json!({"taskId": "job-42"}),
        json!({"extensions": {"io.modelcontextprotocol/tasks": {}}}),
    )
    .await;
    assert_eq!(forged.json()["error"]["code"], -32602, "{}", forged.body);
    let state = request(
        &alice,
        7,
        "tools/call",
        json!({"name": "modern__ask_name", "arguments": {}, "requestState": "asked-once",
               "inputResponses": {"who": {"action": "accept", "content": {"name": "Eve"}}}}),
        json!({"elicitation": {}}),
    )
    .await;
    assert_eq!(
        state.json()["error"]["code"],
        -32602,
        "the server's own state, replayed: {}",
        state.body
    );

    // Oversized and malformed headers and `_meta`.
    let huge = "a".repeat(64 * 1024);
    let r = send(&alice, &allowed, &headers("tools/call", Some(&huge))).await;
    assert!(
        r.status >= 400 && r.status < 500,
        "an oversized Mcp-Name: {}",
        r.status
    );
    let r = send(
        &alice,
        &allowed,
        &headers("tools/call", Some("=?base64?!!!?=")),
    )
    .await;
    assert_eq!(
        r.json()["error"]["code"],
        -32020,
        "a broken base64 Mcp-Name: {}",
        r.body
    );
    for meta in [
        json!("not an object"),
        json!({"io.modelcontextprotocol/protocolVersion": 20260728}),
        json!({"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": []}),
        json!({"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/logLevel": "loudest"}),
        json!({"io.modelcontextprotocol/protocolVersion": MODERN, "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": huge.clone()}),
    ] {
        let b = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                       "params": {"name": "modern__echo", "arguments": {"text": "x"}, "_meta": meta}})
        .to_string();
        let r = send(&alice, &b, &headers("tools/call", Some("modern__echo"))).await;
        let shown: String = meta.to_string().chars().take(120).collect();
        assert!(
            r.status >= 400 && r.status < 500,
            "_meta {shown}: {} {}",
            r.status,
            r.body
        );
        assert!(
            r.json()["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{}",
            r.body
        );
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let b = format!(
        r#"{{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{{"name":"modern__echo","arguments":{{"text":"x"}},"_meta":{deep}}}}}"#
    );
    let r = send(&alice, &b, &headers("tools/call", Some("modern__echo"))).await;
    assert!(
        r.status >= 400 && r.status < 500,
        "deeply nested _meta: {}",
        r.status
    );

    // Nothing refused reached the server; the gateway still serves; refusals are audited.
    assert!(calls_of(&remote, "slow").is_empty(), "a denied tool ran");
    assert!(
        calls_of(&remote, "ask_name").is_empty(),
        "a refused retry reached the server"
    );
    assert!(
        calls_of(&remote, "echo").is_empty(),
        "a refused echo reached the server"
    );
    assert!(
        calls_of(&remote, "query").is_empty(),
        "a call whose header disagreed reached the server"
    );
    let ok = send(
        &alice,
        &allowed,
        &headers("tools/call", Some("modern__echo")),
    )
    .await;
    assert_eq!(text(&ok.message()), "echo: x");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let records = audit_records(&audit);
    let denied = |tool: &str, code: i64| {
        records
            .iter()
            .filter(|r| r["kind"] == "denied" && r["tool"] == tool && r["error_code"] == code)
            .count()
    };
    assert!(denied("slow", -32013) >= 1, "the 403 is audited");
    assert!(
        denied("slow", -32020) >= 1,
        "the mismatch names the body's tool"
    );
    assert!(
        denied("query", -32020) >= 1,
        "the mirrored-argument mismatch is audited"
    );
}
