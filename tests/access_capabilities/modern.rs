//! The access decision for 2026-07-28 (stateless) clients: every request that reaches a server
//! in that revision, sent by a client with no grant on the server, is refused, audited as
//! `denied`, and never reaches the server. The 2025-11-25 counterpart is
//! `every_forwarded_method_is_refused_without_a_grant` in the parent module, on the same policy.

use std::collections::BTreeSet;

use super::common::client::sse_events;
use super::common::client::Mcp;
use super::common::modern::{client, open_listen_for, read_for, request, shapes_server, text};
use super::common::{audit_records, audit_verify, token_hash, Gateway};
use super::{item_of, leaked, policy, ALICE, BOB, CAROL, PATIENCE};
use serde_json::{json, Value};

/// How the gateway must answer a 2026-07-28 request of a client with no grant on the server.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Want {
    /// Refused by the access decision: 403, -32013, a `denied` record naming the item.
    Refused,
    /// A handle or state made for another client: 400, -32602 (the seal binds it to alice).
    NotTheirs,
    /// `subscriptions/listen`: the stream opens, but no subscription on the server is
    /// acknowledged (each is refused and audited as `resources/subscribe`).
    NotAcknowledged,
    /// Answered from the catalog: the list (result key) shows nothing of `fx`.
    List(&'static str),
    /// Answered by the gateway itself.
    Gateway,
    /// Removed in 2026-07-28: not found (404, -32601).
    Removed,
}

/// Who sends a row: bob never had a grant on `fx` or `shapes`; carol had one, got a task handle
/// and a request state with it, and lost it to a reload before the rows are sent.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Who {
    Bob,
    Carol,
}

struct Row {
    who: Who,
    method: &'static str,
    params: Value,
    want: Want,
}

/// What clients got while they were granted, used by the rows.
struct Tokens {
    /// Task handles (`shapes__start_job`) of alice and carol.
    alice_task: String,
    carol_task: String,
    /// Carol's `fx__test_elicitation` call held for input: its state and the input's key.
    carol_state: String,
    input_key: String,
    /// Alice's state of the same kind.
    alice_state: String,
}

/// A multi round-trip retry of `fx__test_elicitation` answering its elicitation.
fn retry(state: &str, key: &str) -> Value {
    json!({
        "name": "fx__test_elicitation",
        "arguments": {"message": "who?"},
        "requestState": state,
        "inputResponses": { key: {"action": "accept", "content": {"name": "Ada"}} }
    })
}

/// Every client request of 2026-07-28, aimed at `fx` (or at `shapes` for tasks). The forwarded
/// ones are the router's [`portcullis::router::forwarded_methods`] that the revision keeps
/// (`resources/subscribe` and `unsubscribe` are gone; their decision is reached through
/// `subscriptions/listen`), plus what the revision adds: the listen filter, the three task
/// methods on a handle, and a multi round-trip retry.
fn rows(t: &Tokens) -> Vec<Row> {
    use Want::*;
    use Who::*;
    let row = |who, method, params, want| Row {
        who,
        method,
        params,
        want,
    };
    let task = |h: &str| json!({"taskId": h});
    let update = |h: &str| json!({"taskId": h, "inputResponses": {}});
    vec![
        row(Bob, "server/discover", json!({}), Gateway),
        row(Bob, "tools/list", json!({}), List("tools")),
        row(Bob, "prompts/list", json!({}), List("prompts")),
        row(Bob, "resources/list", json!({}), List("resources")),
        row(
            Bob,
            "resources/templates/list",
            json!({}),
            List("resourceTemplates"),
        ),
        row(
            Bob,
            "tools/call",
            json!({"name": "fx__echo", "arguments": {"text": "secret-arg"}}),
            Refused,
        ),
        row(
            Bob,
            "prompts/get",
            json!({"name": "fx__test_simple_prompt"}),
            Refused,
        ),
        row(
            Bob,
            "resources/read",
            json!({"uri": "test://static-text"}),
            Refused,
        ),
        row(
            Bob,
            "resources/read",
            json!({"uri": "test://template/7/data"}),
            Refused,
        ),
        row(
            Bob,
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "fx__test_prompt_with_arguments"}, "argument": {"name": "arg1", "value": "pa"}}),
            Refused,
        ),
        row(
            Bob,
            "completion/complete",
            json!({"ref": {"type": "ref/resource", "uri": "test://template/{id}/data"}, "argument": {"name": "id", "value": "1"}}),
            Refused,
        ),
        row(
            Bob,
            "subscriptions/listen",
            json!({"resourceSubscriptions": ["test://watched-resource", "test://static-text"]}),
            NotAcknowledged,
        ),
        row(Bob, "tasks/get", task(&t.alice_task), NotTheirs),
        row(Bob, "tasks/update", update(&t.alice_task), NotTheirs),
        row(Bob, "tasks/cancel", task(&t.alice_task), NotTheirs),
        row(Carol, "tasks/get", task(&t.carol_task), Refused),
        row(Carol, "tasks/update", update(&t.carol_task), Refused),
        row(Carol, "tasks/cancel", task(&t.carol_task), Refused),
        row(
            Bob,
            "tools/call",
            retry(&t.alice_state, &t.input_key),
            NotTheirs,
        ),
        row(
            Carol,
            "tools/call",
            retry(&t.carol_state, &t.input_key),
            Refused,
        ),
        row(Bob, "ping", json!({}), Removed),
        row(Bob, "logging/setLevel", json!({"level": "debug"}), Removed),
        row(
            Bob,
            "resources/subscribe",
            json!({"uri": "test://watched-resource"}),
            Removed,
        ),
        row(
            Bob,
            "resources/unsubscribe",
            json!({"uri": "test://watched-resource"}),
            Removed,
        ),
        row(Bob, "tasks/result", task(&t.alice_task), Removed),
    ]
}

const TASKS: &str = "io.modelcontextprotocol/tasks";

/// The client capabilities a row's request declares: tasks for task methods, elicitation for
/// retries (so that a refusal is the policy's, not a missing capability's).
fn caps(method: &str) -> Value {
    if method.starts_with("tasks/") {
        json!({"extensions": { TASKS: {} }})
    } else {
        json!({"elicitation": {}})
    }
}

/// Carol may use everything of `fx` and `shapes` (`granted`), or only `echo`.
fn carol_policy(granted: bool) -> String {
    let allow = if granted {
        r#""fx__*", "shapes__*""#
    } else {
        r#""echo__*""#
    };
    policy(&format!(
        "\n{}\n[clients.carol]\ntoken_sha256 = \"{}\"\nallow = [{allow}]\n",
        shapes_server(),
        token_hash(CAROL)
    ))
}

async fn start_job(c: &Mcp, id: u64) -> String {
    let r = request(
        c,
        id,
        "tools/call",
        json!({"name": "shapes__start_job", "arguments": {}}),
        json!({"extensions": { TASKS: {} }}),
    )
    .await
    .message();
    assert_eq!(r["result"]["resultType"], "task", "{r}");
    r["result"]["taskId"].as_str().unwrap().to_owned()
}

/// A held `fx__test_elicitation` call: its request state and the key of its input request.
async fn held(c: &Mcp, id: u64) -> (String, String) {
    let r = request(
        c,
        id,
        "tools/call",
        json!({"name": "fx__test_elicitation", "arguments": {"message": "who?"}}),
        json!({"elicitation": {}}),
    )
    .await
    .message();
    assert_eq!(r["result"]["resultType"], "input_required", "{r}");
    let key = r["result"]["inputRequests"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap();
    (
        r["result"]["requestState"].as_str().unwrap().to_owned(),
        key.clone(),
    )
}

/// How many tool calls reached the fixture, this one included.
async fn fixture_calls(alice: &Mcp) -> u64 {
    let r = request(
        alice,
        900,
        "tools/call",
        json!({"name": "fx__count_calls", "arguments": {}}),
        json!({}),
    )
    .await;
    text(&r.message()).parse().unwrap()
}

#[tokio::test]
async fn every_forwarded_2026_method_is_refused_without_a_grant() {
    let mut gw = Gateway::start(&carol_policy(true));
    let alice = client(&gw, Some(ALICE));
    let bob = client(&gw, Some(BOB));
    let carol = client(&gw, Some(CAROL));
    let (alice_state, input_key) = held(&alice, 1).await;
    let (carol_state, _) = held(&carol, 2).await;
    let t = Tokens {
        alice_task: start_job(&alice, 3).await,
        carol_task: start_job(&carol, 4).await,
        carol_state,
        input_key,
        alice_state,
    };
    // Carol's grant goes; the reload is in force once her tool list no longer shows `fx`.
    gw.write_policy(&carol_policy(false));
    gw.sighup();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let l = request(&carol, 5, "tools/list", json!({}), json!({})).await;
        if leaked(&l.message(), "tools").is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let table = rows(&t);
    // A method the router forwards must have a refused row here or be one the revision removed
    // (then a refused row reaches its decision another way: subscribe through listen).
    for m in portcullis::router::forwarded_methods() {
        let refused = table
            .iter()
            .any(|r| r.method == m && r.want == Want::Refused);
        let removed = table
            .iter()
            .any(|r| r.method == m && r.want == Want::Removed);
        assert!(
            refused || removed,
            "the router forwards `{m}` but this test has no row for it in 2026-07-28"
        );
    }
    let methods: BTreeSet<&str> = table.iter().map(|r| r.method).collect();
    // 2026-07-28 client requests: discover, 4 lists, 4 forwarded, listen, 3 task methods, and
    // 5 removed ones (`initialize` is answered before any of this: see modern_http).
    assert_eq!(methods.len(), 18, "{methods:?}");
    eprintln!("{:<26} {:<6} expected", "2026-07-28 method", "sender");
    for r in &table {
        eprintln!(
            "{:<26} {:<6} {:?}",
            r.method,
            format!("{:?}", r.who),
            r.want
        );
    }

    let before = fixture_calls(&alice).await;
    let mut failures = Vec::new();
    let mut streams = Vec::new();
    for (i, r) in table.iter().enumerate() {
        let id = 100 + i as u64;
        let who = if r.who == Who::Bob { &bob } else { &carol };
        if r.want == Want::NotAcknowledged {
            let mut s = open_listen_for(who, &gw.url, id, r.params.clone()).await;
            assert_eq!(
                s.status(),
                200,
                "listen opens (its filter is what is decided)"
            );
            let ack = read_for(&mut s, "acknowledged", PATIENCE).await;
            let acked = sse_events(&ack)
                .into_iter()
                .filter_map(|(_, d)| serde_json::from_str::<Value>(&d).ok())
                .find(|m| m["method"] == "notifications/subscriptions/acknowledged")
                .unwrap_or_else(|| panic!("no acknowledgement: {ack}"));
            let uris = &acked["params"]["notifications"]["resourceSubscriptions"];
            if uris.as_array().is_some_and(|u| !u.is_empty()) {
                failures.push(format!("listen acknowledged {uris} to {:?}", r.who));
            }
            streams.push(s);
            continue;
        }
        let raw = request(who, id, r.method, r.params.clone(), caps(r.method)).await;
        let code = raw.message()["error"]["code"].clone();
        let ok = match r.want {
            Want::Refused => raw.status == 403 && code == -32013,
            Want::NotTheirs => raw.status == 400 && code == -32602,
            Want::Removed => raw.status == 404 && code == -32601,
            Want::Gateway => raw.status == 200,
            Want::List(key) => {
                let shown = leaked(&raw.message(), key);
                shown.is_empty() && raw.status == 200
            }
            Want::NotAcknowledged => unreachable!("handled above"),
        };
        if !ok {
            failures.push(format!(
                "{:?} {} {}: HTTP {} {}",
                r.who, r.method, r.params, raw.status, raw.body
            ));
        }
    }
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));

    // Nothing reached the servers: the fixture ran no tool call but the counter's, holds no
    // subscription (an update has no subscriber), and `shapes` got no task request.
    assert_eq!(
        fixture_calls(&alice).await,
        before + 1,
        "a refused call ran"
    );
    let emit = request(
        &alice,
        901,
        "tools/call",
        json!({"name": "fx__emit_resource_updated", "arguments": {"uri": "test://watched-resource"}}),
        json!({}),
    )
    .await;
    assert_eq!(
        text(&emit.message()),
        "not-subscribed",
        "bob's listen subscribed"
    );
    let shapes_log = std::fs::read_to_string(gw.dir().join("shared/shapes.log")).unwrap();
    assert!(
        !shapes_log.contains("\"method\": \"tasks/"),
        "a task request reached shapes: {shapes_log}"
    );
    drop(streams);

    gw.terminate(PATIENCE);
    let dir = gw.dir().join("portcullis-audit");
    let records = audit_records(&dir);
    let of = |who: &str| -> Vec<&Value> { records.iter().filter(|r| r["client"] == who).collect() };
    let bobs = of("bob");
    assert!(
        !bobs.iter().any(|r| r["kind"] == "call"),
        "a request of bob's reached a server"
    );
    let denied = |recs: &[&Value], method: &str, server: &str, item: &str| {
        recs.iter()
            .filter(|r| {
                r["kind"] == "denied"
                    && r["method"] == method
                    && r["server"] == server
                    && (r["tool"] == item || r["item"] == item)
            })
            .count()
    };
    for r in table
        .iter()
        .filter(|r| r.who == Who::Bob && r.want == Want::Refused)
    {
        let item = item_of(&r.params);
        assert_eq!(
            denied(&bobs, r.method, "fx", &item),
            1,
            "denied {} {item}",
            r.method
        );
    }
    for uri in ["test://watched-resource", "test://static-text"] {
        assert_eq!(
            denied(&bobs, "resources/subscribe", "fx", uri),
            1,
            "listen {uri}"
        );
    }
    // A handle or state issued to another client is refused before the access decision, and
    // audited all the same: a client probing other clients' tokens shows in the log.
    let not_theirs = table
        .iter()
        .filter(|r| r.who == Who::Bob && r.want == Want::NotTheirs)
        .count();
    let token_refusals = bobs
        .iter()
        .filter(|r| {
            r["kind"] == "denied"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("issued to another client"))
        })
        .count();
    assert_eq!(token_refusals, not_theirs, "refused tokens audited");
    let carols = of("carol");
    for m in ["tasks/get", "tasks/update", "tasks/cancel"] {
        assert_eq!(denied(&carols, m, "shapes", "start_job"), 1, "carol {m}");
    }
    assert_eq!(
        denied(&carols, "tools/call", "fx", "test_elicitation"),
        1,
        "retry"
    );
    assert!(
        records
            .iter()
            .filter(|r| r["kind"] == "denied")
            .all(|r| r.get("args").is_none() && r.get("args_sha256").is_none()),
        "a refusal recorded arguments"
    );
    let (ok, out) = audit_verify(&dir);
    assert!(ok, "audit verify: {out}");
}
