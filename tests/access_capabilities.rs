//! The access decision for every capability, as a hostile client meets it: whatever method it
//! uses, a client reaches, sees and hears of only what its rules grant, and every refusal is in
//! the audit log with the method and the item, never the arguments.

mod common;
// The same decisions for 2026-07-28 clients (a file of its own for size; the crate root's
// `mod` would look beside this file, hence the path).
#[path = "access_capabilities/modern.rs"]
mod modern;

use std::collections::BTreeSet;
use std::time::Duration;

use common::client::{sse_events, Mcp, LATEST};
use common::{audit_records, audit_verify, bench_echo_bin, token_hash, Gateway};
use serde_json::{json, Value};

const ALICE: &str = "pcs_alice-unrestricted-token-0000000000000000";
const BOB: &str = "pcs_bob-echo-only-token-1111111111111111111111";
const CAROL: &str = "pcs_carol-some-resources-token-22222222222222";
const PATIENCE: Duration = Duration::from_secs(20);

/// `fx`: the fixture server (every capability); `echo`: tools only. Alice may use everything,
/// bob only `echo`; `extra` adds clients.
fn policy(extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.fx]
runtime = "process"
command = "{{fixture}}"

[servers.echo]
runtime = "process"
command = "{}"
args = ["--stdio", "--tools", "2"]

[clients.alice]
token_sha256 = "{}"

[clients.bob]
token_sha256 = "{}"
allow = ["echo__*"]
{extra}
"#,
        bench_echo_bin().display(),
        token_hash(ALICE),
        token_hash(BOB),
    )
}

async fn session(gw: &Gateway, token: &str, version: &str) -> Mcp {
    let mut c = Mcp::new(&gw.url);
    c.bearer = Some(token.to_owned());
    c.initialize(version).await;
    c
}

/// How the gateway must answer a client with no grant on `fx`.
#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// Forwarded to a server: refused with 403 and a `denied` record.
    Refused,
    /// Answered from the catalog: the list (result key) shows nothing of `fx`.
    List(&'static str),
    /// Answered by the gateway itself.
    Gateway,
    /// Not served (2025-11-25 tasks): method not found.
    Unsupported,
}

/// Every client request of protocol 2025-11-25 (schema `ClientRequest`), aimed at `fx`, with
/// valid params: the unrestricted client gets each refused one through.
fn requests() -> Vec<(&'static str, Value, Expect)> {
    use Expect::*;
    vec![
        (
            "initialize",
            json!({"protocolVersion": LATEST, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}),
            Gateway,
        ),
        ("ping", json!({}), Gateway),
        ("logging/setLevel", json!({"level": "debug"}), Gateway),
        ("tools/list", json!({}), List("tools")),
        ("prompts/list", json!({}), List("prompts")),
        ("resources/list", json!({}), List("resources")),
        (
            "resources/templates/list",
            json!({}),
            List("resourceTemplates"),
        ),
        (
            "tools/call",
            json!({"name": "fx__echo", "arguments": {"text": "secret-arg"}}),
            Refused,
        ),
        (
            "prompts/get",
            json!({"name": "fx__test_simple_prompt"}),
            Refused,
        ),
        (
            "resources/read",
            json!({"uri": "test://static-text"}),
            Refused,
        ),
        (
            "resources/read",
            json!({"uri": "test://template/7/data"}),
            Refused,
        ),
        (
            "resources/subscribe",
            json!({"uri": "test://watched-resource"}),
            Refused,
        ),
        (
            "resources/unsubscribe",
            json!({"uri": "test://watched-resource"}),
            Refused,
        ),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/prompt", "name": "fx__test_prompt_with_arguments"}, "argument": {"name": "arg1", "value": "pa"}}),
            Refused,
        ),
        (
            "completion/complete",
            json!({"ref": {"type": "ref/resource", "uri": "test://template/{id}/data"}, "argument": {"name": "id", "value": "1"}}),
            Refused,
        ),
        ("tasks/get", json!({"taskId": "t-1"}), Unsupported),
        ("tasks/result", json!({"taskId": "t-1"}), Unsupported),
        ("tasks/list", json!({}), Unsupported),
        ("tasks/cancel", json!({"taskId": "t-1"}), Unsupported),
    ]
}

/// The entries of a list reply (under `key`) that are not bob's `echo` server's.
fn leaked(reply: &Value, key: &str) -> Vec<Value> {
    let entries = reply["result"][key].as_array().cloned().unwrap_or_default();
    entries
        .into_iter()
        .filter(|e| !e["name"].as_str().is_some_and(|n| n.starts_with("echo__")))
        .collect()
}

/// The item a refusal of `params` names in the audit log.
fn item_of(params: &Value) -> String {
    ["/name", "/uri", "/ref/name", "/ref/uri"]
        .iter()
        .find_map(|p| params.pointer(p).and_then(Value::as_str))
        .map(|s| s.strip_prefix("fx__").unwrap_or(s).to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn every_forwarded_method_is_refused_without_a_grant() {
    let table = requests();
    // A method the router forwards must have a row here, or this test cannot vouch for it.
    let spec: BTreeSet<&str> = table.iter().map(|(m, _, _)| *m).collect();
    for m in portcullis::router::forwarded_methods() {
        assert!(
            table
                .iter()
                .any(|(t, _, e)| *t == m && *e == Expect::Refused),
            "the router forwards `{m}` but this test has no refused row for it"
        );
    }
    assert_eq!(spec.len(), 17, "the 17 client requests of 2025-11-25");

    let mut gw = Gateway::start(&policy(""));
    let mut bob = session(&gw, BOB, LATEST).await;
    let mut alice = session(&gw, ALICE, LATEST).await;
    let mut failures = Vec::new();
    for (method, params, expect) in &table {
        let id = bob.next_id();
        let r = bob
            .post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        let body = r.body.clone();
        match expect {
            Expect::Refused => {
                if r.status != 403 || r.message()["error"]["code"] != -32013 {
                    failures.push(format!("{method} {params}: HTTP {} {body}", r.status));
                }
                let ok = alice.request(method, params.clone()).await;
                assert!(ok.get("result").is_some(), "alice {method} {params}: {ok}");
            }
            Expect::List(key) => {
                let leaked = leaked(&r.message(), key);
                if !leaked.is_empty() {
                    failures.push(format!("{method} shows bob {leaked:?}"));
                }
                let theirs = alice.request(method, params.clone()).await;
                assert!(
                    !theirs["result"][key].as_array().unwrap().is_empty(),
                    "alice's {method} shows fx: {theirs}"
                );
            }
            Expect::Gateway => assert!(r.status == 200 || r.status == 400, "{method}: {body}"),
            Expect::Unsupported => assert_eq!(r.message()["error"]["code"], -32601, "{body}"),
        }
    }

    // JSON-RPC batches (2025-03-26) are authorized one by one, after the transport.
    let old = session(&gw, BOB, "2025-03-26").await;
    let refused: Vec<&(&str, Value, Expect)> = table
        .iter()
        .filter(|(_, _, e)| *e == Expect::Refused)
        .collect();
    let batch: Vec<Value> = refused
        .iter()
        .enumerate()
        .map(|(i, (m, p, _))| json!({"jsonrpc": "2.0", "id": 500 + i, "method": m, "params": p}))
        .collect();
    let r = old.post(&Value::Array(batch)).await;
    for answer in r.json().as_array().unwrap() {
        if answer["error"]["code"] != -32013 {
            failures.push(format!("in a batch: {answer}"));
        }
    }
    assert!(failures.is_empty(), "not refused:\n{}", failures.join("\n"));

    gw.terminate(PATIENCE);
    let dir = gw.dir().join("portcullis-audit");
    let records = audit_records(&dir);
    let bobs: Vec<&Value> = records.iter().filter(|r| r["client"] == "bob").collect();
    assert!(
        !bobs.iter().any(|r| r["kind"] == "call"),
        "a request of bob's reached a server"
    );
    for (method, params, _) in refused {
        let item = item_of(params);
        let denied = bobs.iter().filter(|r| {
            r["kind"] == "denied"
                && r["method"] == *method
                && r["server"] == "fx"
                && (r["tool"] == item.as_str() || r["item"] == item.as_str())
        });
        assert_eq!(
            denied.count(),
            2,
            "denied records of {method} {item} (one per transport)"
        );
    }
    assert!(
        bobs.iter()
            .all(|r| r.get("args").is_none() && r.get("args_sha256").is_none()),
        "a refusal recorded arguments"
    );
    let (ok, out) = audit_verify(&dir);
    assert!(ok, "audit verify: {out}");
}

fn listed(reply: &Value, key: &str, field: &str) -> Vec<String> {
    reply["result"][key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {reply}"))
        .iter()
        .map(|e| e[field].as_str().unwrap().to_owned())
        .collect()
}

fn refused(reply: &Value) -> bool {
    reply["error"]["code"] == -32013
}

#[tokio::test]
async fn uri_patterns_grant_exactly_their_resources() {
    let carol = format!(
        "\n[clients.carol]\ntoken_sha256 = \"{}\"\nallow = [\"fx__test://static-text\", \"fx__test://template/*\", \"fx__test_simple_prompt\"]\n\n[clients.dave]\ntoken_sha256 = \"{}\"\nallow = [\"fx__*\"]\ndeny = [\"fx__test://static-*\", \"fx__*_with_*\"]\n",
        token_hash(CAROL),
        token_hash("pcs_dave")
    );
    let gw = Gateway::start(&policy(&carol));
    let mut c = session(&gw, CAROL, LATEST).await;
    let resources = c.request("resources/list", json!({})).await;
    assert_eq!(
        listed(&resources, "resources", "uri"),
        ["test://static-text"]
    );
    let templates = c.request("resources/templates/list", json!({})).await;
    assert_eq!(
        listed(&templates, "resourceTemplates", "uriTemplate"),
        ["test://template/{id}/data"]
    );
    let prompts = c.request("prompts/list", json!({})).await;
    assert_eq!(
        listed(&prompts, "prompts", "name"),
        ["fx__test_simple_prompt"]
    );
    assert!(listed(&c.request("tools/list", json!({})).await, "tools", "name").is_empty());

    let read = |uri: &str| json!({"uri": uri});
    let static_text = c
        .request("resources/read", read("test://static-text"))
        .await;
    assert!(
        static_text["result"]["contents"][0]["text"].is_string(),
        "{static_text}"
    );
    let templated = c
        .request("resources/read", read("test://template/7/data"))
        .await;
    assert!(
        templated.get("result").is_some(),
        "through the template: {templated}"
    );
    for uri in ["test://static-binary", "test://watched-resource"] {
        assert!(
            refused(&c.request("resources/read", read(uri)).await),
            "{uri}"
        );
    }
    // A pattern sees text; a server may resolve dot segments. They are refused to clients with
    // rules, also percent-encoded.
    for uri in ["test://template/../data", "test://template/%2e%2e/data"] {
        let r = c.request("resources/read", read(uri)).await;
        assert!(
            refused(&r) && r.to_string().contains("segments"),
            "{uri}: {r}"
        );
    }
    let complete = |r: Value, arg: &str| json!({"ref": r, "argument": {"name": arg, "value": ""}});
    let by_template = c
        .request(
            "completion/complete",
            complete(
                json!({"type": "ref/resource", "uri": "test://template/{id}/data"}),
                "id",
            ),
        )
        .await;
    assert_eq!(
        by_template["result"]["completion"]["values"][0], "1",
        "{by_template}"
    );
    let other_prompt = json!({"type": "ref/prompt", "name": "fx__test_prompt_with_arguments"});
    assert!(refused(
        &c.request("completion/complete", complete(other_prompt, "arg1"))
            .await
    ));
    let get = |n: &str| json!({"name": n});
    let simple = c
        .request("prompts/get", get("fx__test_simple_prompt"))
        .await;
    assert!(simple.get("result").is_some(), "{simple}");
    assert!(refused(
        &c.request("prompts/get", get("fx__test_prompt_with_arguments"))
            .await
    ));

    // Deny wins, for every kind.
    let mut d = session(&gw, "pcs_dave", LATEST).await;
    let uris = listed(
        &d.request("resources/list", json!({})).await,
        "resources",
        "uri",
    );
    assert_eq!(uris, ["test://watched-resource"], "static ones denied");
    assert!(refused(
        &d.request("resources/read", read("test://static-text"))
            .await
    ));
    let prompts = listed(
        &d.request("prompts/list", json!({})).await,
        "prompts",
        "name",
    );
    assert!(
        prompts.contains(&"fx__test_simple_prompt".to_owned())
            && !prompts.iter().any(|p| p.contains("_with_")),
        "{prompts:?}"
    );
}

/// A session's standalone stream, read in order.
struct Stream {
    response: reqwest::Response,
    pending: String,
}

impl Stream {
    async fn open(c: &Mcp, token: &str) -> Stream {
        let response = c
            .http
            .get(&c.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", c.session.clone().unwrap())
            .header("mcp-protocol-version", c.protocol.clone())
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        Stream {
            response,
            pending: String::new(),
        }
    }

    /// The methods of the messages that arrive up to and including one with `method`.
    async fn until(&mut self, method: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                for (_, data) in sse_events(&block) {
                    let Ok(msg) = serde_json::from_str::<Value>(&data) else {
                        continue;
                    };
                    let m = msg["method"].as_str().unwrap_or_default().to_owned();
                    seen.push(m.clone());
                    if m == method {
                        return seen;
                    }
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no {method} within {PATIENCE:?}; seen {seen:?}"))
                .expect("stream error")
                .unwrap_or_else(|| panic!("stream ended before {method}; seen {seen:?}"));
            self.pending.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

#[tokio::test]
async fn updates_and_lists_follow_a_grant_that_a_reload_takes_away() {
    let watched = "test://watched-resource";
    let carol = |allow: &str| {
        policy(&format!(
            "\n[clients.carol]\ntoken_sha256 = \"{}\"\nallow = [{allow}]\n",
            token_hash(CAROL)
        ))
    };
    let granted = carol("\"fx__test://watched-resource\"");
    let gw = Gateway::start_with(&granted, &[("PORTCULLIS_NO_WATCH", "true")]);
    let mut alice = session(&gw, ALICE, LATEST).await;
    let mut c = session(&gw, CAROL, LATEST).await;
    let mut alice_stream = Stream::open(&alice, ALICE).await;
    let mut carol_stream = Stream::open(&c, CAROL).await;
    for s in [&mut alice, &mut c] {
        let r = s
            .request("resources/subscribe", json!({"uri": watched}))
            .await;
        assert!(r.get("result").is_some(), "{r}");
    }
    let emit = json!({"uri": watched});
    let fired = alice
        .call_tool("fx__emit_resource_updated", emit.clone())
        .await;
    assert!(fired.to_string().contains("subscribed"), "{fired}");
    alice_stream.until("notifications/resources/updated").await;
    carol_stream.until("notifications/resources/updated").await;

    // The grant goes: carol's resource list changes (she is told), her subscription stays
    // but its updates stop at once, and a new read or subscription is refused.
    gw.write_policy(&carol("\"fx__test_simple_prompt\""));
    gw.sighup();
    carol_stream
        .until("notifications/resources/list_changed")
        .await;
    assert!(refused(
        &c.request("resources/read", json!({"uri": watched})).await
    ));
    assert!(refused(
        &c.request("resources/subscribe", json!({"uri": watched}))
            .await
    ));
    alice.call_tool("fx__emit_resource_updated", emit).await;
    alice_stream.until("notifications/resources/updated").await;
    // A change carol does see marks a point before which the update would have arrived.
    gw.write_policy(&carol(
        "\"fx__test_simple_prompt\", \"fx__test://static-*\"",
    ));
    gw.sighup();
    let before_marker = carol_stream
        .until("notifications/resources/list_changed")
        .await;
    assert!(
        !before_marker.contains(&"notifications/resources/updated".to_owned()),
        "carol heard of a resource she may no longer read: {before_marker:?}"
    );
    let uris = listed(
        &c.request("resources/list", json!({})).await,
        "resources",
        "uri",
    );
    assert_eq!(uris, ["test://static-text", "test://static-binary"]);
}
