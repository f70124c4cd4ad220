//! Streamable HTTP behaviour of the gateway, asserted on the wire, with our fixture server behind it.

mod common;

use common::client::{sse_events, tool_text, Mcp, LATEST};
use common::{fixture_policy, Gateway};
use serde_json::{json, Value};

#[tokio::test]
async fn initialize_creates_a_random_session_and_negotiates() {
    let gw = Gateway::start(&fixture_policy());
    let mut a = Mcp::new(&gw.url);
    let init = a.initialize(LATEST).await;
    assert_eq!(init["result"]["protocolVersion"], LATEST);
    assert_eq!(init["result"]["serverInfo"]["name"], "portcullis");
    assert!(init["result"]["capabilities"]["tools"]["listChanged"]
        .as_bool()
        .unwrap());
    let sid = a.session.clone().unwrap();
    assert_eq!(sid.len(), 64);
    assert!(sid.bytes().all(|b| b.is_ascii_hexdigit()));

    let mut b = Mcp::new(&gw.url);
    b.initialize("2025-06-18").await;
    assert_ne!(a.session, b.session);
    assert_eq!(b.protocol, "2025-06-18");

    let mut c = Mcp::new(&gw.url);
    c.initialize("2031-01-01").await;
    assert_eq!(
        c.protocol, LATEST,
        "unknown versions fall back to the latest"
    );
}

#[tokio::test]
async fn lists_and_calls_tools_as_json_and_as_sse() {
    let gw = Gateway::start(&fixture_policy());
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let tools = c.request("tools/list", json!({})).await;
    let names: Vec<&str> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"echo") && names.contains(&"test_simple_text"),
        "{names:?}"
    );

    // JSON only.
    let r = c
        .post_with(
            &json!({"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}).to_string(),
            &[("accept", "application/json"), ("mcp-protocol-version", LATEST)],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.content_type().starts_with("application/json"));
    assert_eq!(tool_text(&r.json()), "hi");
    assert_eq!(r.json()["id"], 10);

    // SSE: priming event (id, empty data) first, then the response.
    let r = c
        .post(&json!({"jsonrpc":"2.0","id":"s-1","method":"tools/call","params":{"name":"echo","arguments":{"text":"streamed"}}}))
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.content_type().starts_with("text/event-stream"),
        "{}",
        r.content_type()
    );
    let events = sse_events(&r.body);
    assert!(
        events[0].0.is_some() && events[0].1.trim().is_empty(),
        "priming: {events:?}"
    );
    let msg = r.message();
    assert_eq!(msg["id"], "s-1");
    assert_eq!(tool_text(&msg), "streamed");
}

#[tokio::test]
async fn session_errors_have_the_spec_statuses() {
    let gw = Gateway::start(&fixture_policy());
    let anon = Mcp::new(&gw.url);
    let r = anon
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 400, "missing session: {}", r.body);
    assert!(r.body.contains("Mcp-Session-Id"));

    let mut ghost = Mcp::new(&gw.url);
    ghost.session = Some("0".repeat(64));
    let r = ghost
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 404, "unknown session: {}", r.body);

    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let del = c
        .http
        .delete(&gw.url)
        .header("mcp-session-id", c.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let r = c
        .post(&json!({"jsonrpc":"2.0","id":2,"method":"tools/list"}))
        .await;
    assert_eq!(r.status, 404, "deleted session must be gone");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_daemon_keeps_serving() {
    let gw = Gateway::start(&fixture_policy().replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_body_bytes = 2048",
    ));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;

    let r = c
        .post_with("{\"jsonrpc\":\"2.0\",", &[("mcp-protocol-version", LATEST)])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32700, "{}", r.body);

    let r = c
        .post_with(
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            &[("content-type", "text/plain")],
        )
        .await;
    assert_eq!(r.status, 415, "{}", r.body);

    let big = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x".repeat(5000)}}});
    let r = c.post(&big).await;
    assert_eq!(r.status, 413, "{}", r.body);

    let r = c
        .post_with(
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            &[("mcp-protocol-version", "1999-01-01")],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("1999-01-01"), "{}", r.body);

    let r = c
        .post_with(
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            &[("mcp-protocol-version", "2025-06-18")],
        )
        .await;
    assert_eq!(
        r.status, 200,
        "another supported version than the negotiated one is accepted: {}",
        r.body
    );

    let r = c
        .post_with(r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, &[])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32600);

    let r = c
        .post_with(
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            &[("accept", "text/html")],
        )
        .await;
    assert_eq!(r.status, 406);

    let unknown = c
        .request("tools/call", json!({"name": "no_such_tool"}))
        .await;
    assert_eq!(unknown["error"]["code"], -32602);
    assert!(unknown["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no_such_tool"));

    let m = c.request("no/such/method", json!({})).await;
    assert_eq!(m["error"]["code"], -32601);

    // Still serving.
    assert_eq!(
        tool_text(&c.call_tool("echo", json!({"text": "alive"})).await),
        "alive"
    );
    assert_eq!(
        common::http_get(&format!("{}/health", gw.base)).unwrap().0,
        200
    );
}

#[tokio::test]
async fn host_and_origin_are_checked_against_dns_rebinding() {
    let gw = Gateway::start(&fixture_policy());
    let c = Mcp::new(&gw.url);
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":LATEST,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}}).to_string();
    let r = c
        .post_with(&init, &[("origin", "http://evil.example")])
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("evil.example"));
    let r = c.post_with(&init, &[("host", "evil.example:8811")]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let r = c
        .post_with(&init, &[("origin", "http://localhost:5173")])
        .await;
    assert_eq!(r.status, 200, "loopback origin: {}", r.body);
}

#[tokio::test]
async fn discover_without_its_envelope_gets_a_modern_error() {
    // 2026-07-28 is served (tests/modern_http.rs): a discover probe without the per-request
    // envelope is told what is wrong with a 2026-era error, not sent to the handshake.
    let gw = Gateway::start(&fixture_policy());
    let c = Mcp::new(&gw.url);
    let r = c
        .post_with(
            &json!({"jsonrpc":"2.0","id":1,"method":"server/discover","params":{}}).to_string(),
            &[("mcp-protocol-version", "2026-07-28")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], -32602);
    assert_eq!(r.json()["id"], 1);
}

#[tokio::test]
async fn batches_only_on_2025_03_26() {
    let gw = Gateway::start(&fixture_policy());
    let mut old = Mcp::new(&gw.url);
    old.initialize("2025-03-26").await;
    let r = old
        .post_with(
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"b"}}},{"oops":1}]"#,
            &[("mcp-protocol-version", "2025-03-26")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let arr = r.json();
    let arr = arr.as_array().unwrap();
    assert_eq!(arr.len(), 3, "two answers and one error: {arr:?}");
    assert!(arr.iter().any(|m| m["id"] == 2 && tool_text(m) == "b"));
    assert!(arr.iter().any(|m| m["error"]["code"] == -32600));

    let mut new = Mcp::new(&gw.url);
    new.initialize(LATEST).await;
    let r = new
        .post_with(
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            &[("mcp-protocol-version", LATEST)],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("batch"), "{}", r.body);
}

#[tokio::test]
async fn auxiliary_endpoints() {
    let gw = Gateway::start(&fixture_policy());
    let (s, body) = common::http_get(&format!(
        "{}/.well-known/oauth-authorization-server",
        gw.base
    ))
    .unwrap();
    assert_eq!(s, 404, "{body}");
    let (s, _) = common::http_get(&format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        gw.base
    ))
    .unwrap();
    assert_eq!(s, 404);
    let (s, body) = common::http_get(&format!("{}/ready", gw.base)).unwrap();
    assert_eq!(s, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["servers"]["fixture"]["ready"], true);
    let (s, _) = common::http_get(&format!("{}/health", gw.base)).unwrap();
    assert_eq!(s, 200);
}

#[tokio::test]
async fn standalone_get_stream_opens_once() {
    let gw = Gateway::start(&fixture_policy());
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let sid = c.session.clone().unwrap();
    let first = c
        .http
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let second = c
        .http
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 409);
    // A list change reaches the open stream.
    let mut stream = first;
    let r = c.call_tool("emit_list_changed", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.contains("notifications/tools/list_changed") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("no list_changed on the standalone stream")
            .unwrap()
            .expect("stream ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let tools = c.request("tools/list", json!({})).await;
    assert!(
        tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "extra_0"),
        "the refreshed catalog has the new tool: {tools}"
    );
}

#[tokio::test]
async fn upstream_crash_gives_an_error_then_the_server_comes_back() {
    let gw = Gateway::start(&fixture_policy());
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let pid1 = tool_text(&c.call_tool("pid", json!({})).await);
    let crash = c.call_tool("crash", json!({})).await;
    assert_eq!(crash["error"]["code"], -32010, "{crash}");
    assert!(
        crash["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fixture"),
        "{crash}"
    );
    gw.wait_ready(std::time::Duration::from_secs(30));
    let pid2 = tool_text(&c.call_tool("pid", json!({})).await);
    assert_ne!(pid1, pid2, "a new process serves after the restart");
}

#[tokio::test]
async fn slow_upstream_times_out_with_a_clear_error() {
    let gw = Gateway::start(&fixture_policy().replace(
        "runtime = \"process\"",
        "runtime = \"process\"\nrequest_timeout = \"1s\"",
    ));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let r = c.call_tool("slow", json!({"ms": 10000})).await;
    assert_eq!(r["error"]["code"], -32011, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{r}"
    );
    // The server was told to stop and is still usable.
    assert_eq!(
        tool_text(&c.call_tool("echo", json!({"text": "after"})).await),
        "after"
    );
}

#[tokio::test]
async fn progress_tokens_are_mapped_back() {
    let gw = Gateway::start(&fixture_policy());
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let r = c
        .post(
            &json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{
            "name":"test_tool_with_progress","arguments":{},"_meta":{"progressToken":"my-token"}}}),
        )
        .await;
    let msgs = r.sse_messages();
    let progress: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert!(!progress.is_empty(), "no progress relayed: {msgs:?}");
    assert!(
        progress
            .iter()
            .all(|p| p["params"]["progressToken"] == "my-token"),
        "{progress:?}"
    );
    assert_eq!(msgs.last().unwrap()["id"], 5, "the response comes last");
}

#[tokio::test]
async fn cancellation_reaches_the_pending_call() {
    let gw = Gateway::start(&fixture_policy());
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let sid = c.session.clone().unwrap();
    let http = c.http.clone();
    let url = gw.url.clone();
    let call = tokio::spawn(async move {
        http.post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .header("mcp-session-id", sid)
            .header("mcp-protocol-version", LATEST)
            .body(json!({"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"slow","arguments":{"ms":30000}}}).to_string())
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let n = c
        .post(&json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":77,"reason":"user"}}))
        .await;
    assert_eq!(n.status, 202);
    let body = tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .expect("cancelled call still pending")
        .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], -32800, "{v}");
}

#[tokio::test]
async fn a_dropped_stream_resumes_with_last_event_id() {
    let gw = Gateway::start(&fixture_policy());
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let sid = c.session.clone().unwrap();
    let mut resp = c
        .http
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", LATEST)
        .body(json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"slow","arguments":{"ms":1500}}}).to_string())
        .send()
        .await
        .unwrap();
    let first = String::from_utf8(resp.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let (id, data) = sse_events(&first)
        .into_iter()
        .next()
        .expect("priming event");
    assert!(data.trim().is_empty());
    let id = id.expect("priming event has an id");
    drop(resp);
    let resumed = c
        .http
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", LATEST)
        .header("last-event-id", &id)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let body = tokio::time::timeout(std::time::Duration::from_secs(20), resumed.text())
        .await
        .unwrap()
        .unwrap();
    let msg = sse_events(&body)
        .into_iter()
        .filter(|(_, d)| !d.trim().is_empty())
        .map(|(_, d)| serde_json::from_str::<Value>(&d).unwrap())
        .find(|m| m["id"] == 9)
        .unwrap_or_else(|| panic!("response not replayed: {body}"));
    assert_eq!(tool_text(&msg), "done");
}

#[tokio::test]
async fn several_servers_get_prefixed_names_and_separate_processes() {
    let gw = Gateway::start(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.alpha]
runtime = "process"
command = "{fixture}"

[servers.beta]
runtime = "process"
command = "{fixture}"
tools = { deny = ["crash"] }
"#,
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let tools = c.request("tools/list", json!({})).await;
    let names: Vec<String> = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        names.contains(&"alpha__echo".to_owned()) && names.contains(&"beta__echo".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"alpha__crash".to_owned()));
    assert!(
        !names.contains(&"beta__crash".to_owned()),
        "policy deny hides the tool"
    );
    assert!(names.iter().all(|n| n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')));
    let a = tool_text(&c.call_tool("alpha__pid", json!({})).await);
    let b = tool_text(&c.call_tool("beta__pid", json!({})).await);
    assert_ne!(a, b);
    let denied = c.call_tool("beta__crash", json!({})).await;
    assert_eq!(denied["error"]["code"], -32602, "{denied}");
    // Prompts are prefixed too.
    let prompts = c.request("prompts/list", json!({})).await;
    assert!(
        prompts["result"]["prompts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "alpha__test_simple_prompt"),
        "{prompts}"
    );
    let got = c
        .request("prompts/get", json!({"name": "beta__test_simple_prompt"}))
        .await;
    assert!(got.get("result").is_some(), "{got}");
}

#[tokio::test]
async fn sse_polling_closes_long_calls_and_the_client_resumes() {
    let gw = Gateway::start(&fixture_policy().replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nsse_poll_interval = \"300ms\"",
    ));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    // The POST stream ends before the 1 s call does: only the priming event arrives.
    let r = c
        .post(&json!({"jsonrpc":"2.0","id":31,"method":"tools/call","params":{"name":"slow","arguments":{"ms":1000}}}))
        .await;
    let events = sse_events(&r.body);
    assert_eq!(events.len(), 1, "only the priming event: {events:?}");
    assert!(
        r.body.contains("retry: "),
        "tells the client when to reconnect: {}",
        r.body
    );
    let last = events[0].0.clone().expect("event id");
    let resumed = c
        .http
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", c.session.clone().unwrap())
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        resumed.contains("\"id\":31") && resumed.contains("done"),
        "{resumed}"
    );
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0)
}

#[tokio::test]
async fn metrics_move_with_calls() {
    let gw = Gateway::start(&fixture_policy());
    let scrape = || common::http_get(&format!("{}/metrics", gw.base)).unwrap();
    let (status, before) = scrape();
    assert_eq!(status, 200);
    assert!(
        before.contains("# TYPE portcullis_calls_total counter"),
        "{before}"
    );
    let echo = "portcullis_calls_total{server=\"fixture\",tool=\"echo\",outcome=\"ok\"}";
    let sessions = "portcullis_sessions_open";
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    for _ in 0..3 {
        c.call_tool("echo", json!({"text": "m"})).await;
    }
    let (_, after) = scrape();
    assert_eq!(metric(&after, echo) - metric(&before, echo), 3, "{after}");
    assert_eq!(metric(&after, sessions), metric(&before, sessions) + 1);
    assert!(
        metric(
            &after,
            "portcullis_upstream_starts_total{server=\"fixture\"}"
        ) >= 1
    );
    assert!(after.contains("portcullis_call_duration_seconds_count{server=\"fixture\"}"));
}

#[tokio::test]
async fn unknown_tools_name_only_the_relevant_server_that_is_down_and_suggest_a_prefix() {
    let gw = Gateway::spawn(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.alpha]
runtime = "process"
command = "{fixture}"

[servers.broken]
runtime = "process"
command = "/nonexistent/portcullis-missing-server"
"#,
        &[],
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let err = |r: &Value| {
        r["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    // The prefix names a healthy server: the broken one is not the reason.
    let m = err(&c.call_tool("alpha__nope", json!({})).await);
    assert!(m.starts_with("unknown tool `alpha__nope`"), "{m}");
    assert!(!m.contains("broken"), "{m}");
    // The prefix names the broken server: say why it is missing.
    let m = err(&c.call_tool("broken__anything", json!({})).await);
    assert!(
        m.contains("servers not ready") && m.contains("`broken`"),
        "{m}"
    );
    // An unprefixed name that matches exactly one prefixed tool.
    let m = err(&c.call_tool("pid", json!({})).await);
    assert!(m.contains("did you mean `alpha__pid`?"), "{m}");
}

#[tokio::test]
async fn sessions_used_only_to_list_expire_sooner_than_sessions_in_use() {
    let gw = Gateway::start(
        r#"
[gateway]
listen = "127.0.0.1:0"
unused_session_timeout = "2s"

[servers.fixture]
runtime = "process"
command = "{fixture}"
"#,
    );
    // What `claude mcp list` or the Inspector's CLI does: initialize, list, leave.
    let mut checked = Mcp::new(&gw.url);
    checked.initialize(LATEST).await;
    checked.request("tools/list", json!({})).await;
    // A session that calls a tool, and one that listens on its stream.
    let mut caller = Mcp::new(&gw.url);
    caller.initialize(LATEST).await;
    caller.call_tool("echo", json!({"text": "hi"})).await;
    let mut listener = Mcp::new(&gw.url);
    listener.initialize(LATEST).await;
    let stream = listener
        .http
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", listener.session.clone().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);

    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let gone = checked
        .post(&json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}))
        .await;
    assert_eq!(gone.status, 404, "{}", gone.body);
    let r = caller
        .call_tool("echo", json!({"text": "still here"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = listener.request("tools/list", json!({})).await;
    assert!(r.get("result").is_some(), "{r}");
    let (_, metrics) = common::http_get(&format!("{}/metrics", gw.base)).unwrap();
    assert!(
        metrics.contains("portcullis_sessions_expired_total{reason=\"unused\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("portcullis_sessions_open 2"), "{metrics}");
    drop(stream);
}
