//! `when` conditions and `confirm` approvals as a hostile client meets them, through the real
//! gateway and the fixture server: every method that reaches an item is judged on its
//! arguments (2025-11-25 sessions and 2026-07-28 stateless requests alike), a refusal names the
//! rule in the error and the `denied` record, and a multi round-trip retry cannot change the
//! arguments of the call it continues (after an approval, or any input). The Python SDK side
//! (real servers, real elicitation callbacks) is `tests/python/test_access_conditions.py`.

mod common;

use std::time::Duration;

use common::client::{Mcp, LATEST};
use common::modern::{client, request, text};
use common::{audit_records, audit_verify, Gateway};
use serde_json::{json, Value};

/// The gateway, its audit log in `audit`, and the fixture server `fx`.
fn with_fixture(audit: &std::path::Path) -> String {
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nnaming = \"prefix\"\n\n[audit]\ndir = \"{}\"\n\n[servers.fx]\nruntime = \"process\"\ncommand = \"{{fixture}}\"\n",
        audit.display()
    )
}

fn policy(audit: &std::path::Path) -> String {
    format!(
        r#"{}
[clients.anonymous]
allow = ["fx__test_simple_text", "fx__test://*", "fx__test_simple_prompt"]
confirm_timeout = "5s"

[[clients.anonymous.rules]]
allow = ["fx__echo", "fx__test_elicitation"]
when = 'has(args.text) ? !args.text.contains("rm -rf") : args.message == "who?"'

[[clients.anonymous.rules]]
allow = ["fx__test_prompt_with_arguments"]
when = 'args.arg1 != "secret"'

[[clients.anonymous.rules]]
deny = ["fx__test://*"]
when = 'uri.contains("binary") || method == "resources/subscribe"'

[[clients.anonymous.rules]]
confirm = ["fx__echo"]
when = 'args.text.startsWith("danger")'
"#,
        with_fixture(audit)
    )
}

fn refused_by(msg: &Value, rule: &str) -> bool {
    let m = msg["error"]["message"].as_str().unwrap_or_default();
    m.contains(rule)
}

/// Waits for the `denied` records the gateway writes without waiting.
fn denied_records(audit: &std::path::Path, at_least: usize) -> Vec<Value> {
    for _ in 0..50 {
        let d: Vec<Value> = audit_records(audit)
            .into_iter()
            .filter(|r| r["kind"] == "denied")
            .collect();
        if d.len() >= at_least {
            return d;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("fewer than {at_least} denied records");
}

#[tokio::test]
async fn every_method_is_judged_on_its_arguments_in_both_eras() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let gw = Gateway::start(&policy(&audit));

    // 2025-11-25 session.
    let mut c = Mcp::new(&gw.url);
    c.initialize_with(LATEST, json!({})).await;
    let ok = c.call_tool("fx__echo", json!({"text": "ls"})).await;
    assert_eq!(ok["result"]["content"][0]["text"], "ls", "{ok}");
    let no = c.call_tool("fx__echo", json!({"text": "rm -rf /"})).await;
    assert!(refused_by(&no, "rules[0]"), "{no}");
    // A missing or mistyped argument is a run-time error: refused, with the reason.
    let no = c.call_tool("fx__echo", json!({"text": 5})).await;
    assert!(refused_by(&no, "could not be evaluated"), "{no}");
    let no = c.call_tool("fx__echo", json!({})).await;
    assert!(refused_by(&no, "rules[0]"), "{no}");
    // Prompts, completions, reads and subscriptions go through the same decision.
    let p = c
        .request(
            "prompts/get",
            json!({"name": "fx__test_prompt_with_arguments", "arguments": {"arg1": "a", "arg2": "b"}}),
        )
        .await;
    assert!(p.get("result").is_some(), "{p}");
    let p = c
        .request(
            "prompts/get",
            json!({"name": "fx__test_prompt_with_arguments", "arguments": {"arg1": "secret", "arg2": "b"}}),
        )
        .await;
    assert!(refused_by(&p, "rules[1]"), "{p}");
    let complete = json!({
        "ref": {"type": "ref/prompt", "name": "fx__test_prompt_with_arguments"},
        "argument": {"name": "arg1", "value": "secret"},
    });
    let p = c.request("completion/complete", complete).await;
    assert!(
        refused_by(&p, "rules[1]"),
        "completing the forbidden value: {p}"
    );
    let r = c
        .request("resources/read", json!({"uri": "test://static-text"}))
        .await;
    assert!(r.get("result").is_some(), "{r}");
    let r = c
        .request("resources/read", json!({"uri": "test://static-binary"}))
        .await;
    assert!(refused_by(&r, "rules[2]"), "{r}");
    let r = c
        .request("resources/subscribe", json!({"uri": "test://static-text"}))
        .await;
    assert!(refused_by(&r, "rules[2]"), "{r}");

    // 2026-07-28 stateless requests: the same answers.
    let m = client(&gw, None);
    let caps = json!({});
    let ok = request(
        &m,
        1,
        "tools/call",
        json!({"name": "fx__echo", "arguments": {"text": "ls"}}),
        caps.clone(),
    )
    .await;
    assert_eq!(text(&ok.message()), "ls");
    let no = request(
        &m,
        2,
        "tools/call",
        json!({"name": "fx__echo", "arguments": {"text": "rm -rf ~"}}),
        caps.clone(),
    )
    .await;
    assert_eq!(no.status, 403, "{}", no.body);
    assert!(refused_by(&no.message(), "rules[0]"), "{}", no.body);
    let no = request(
        &m,
        3,
        "resources/read",
        json!({"uri": "test://static-binary"}),
        caps,
    )
    .await;
    assert_eq!(no.status, 403, "{}", no.body);

    let denied = denied_records(&audit, 8);
    let by_rule0: Vec<&Value> = denied
        .iter()
        .filter(|r| {
            r["rule"]
                .as_str()
                .is_some_and(|s| s.starts_with("rules[0] (allow = [\"fx__echo\""))
        })
        .collect();
    assert!(by_rule0.len() >= 3, "{denied:#?}");
    assert!(by_rule0
        .iter()
        .all(|r| r["rule_condition"] == true && r["tool"] == "echo"));
    assert!(
        denied
            .iter()
            .all(|r| !r.to_string().contains("rm -rf /") && !r.to_string().contains("rm -rf ~")),
        "denied records never carry the arguments (the rule's own text may)"
    );
    assert!(audit_verify(&audit).0);
}

#[tokio::test]
async fn a_retry_cannot_change_what_was_decided_or_approved() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let gw = Gateway::start(&policy(&audit));
    let m = client(&gw, None);
    let caps = json!({"elicitation": {}});

    // A call held for the server's own question (fx asks through elicitation).
    let call = json!({"name": "fx__test_elicitation", "arguments": {"message": "who?"}});
    let first = request(&m, 1, "tools/call", call.clone(), caps.clone())
        .await
        .message();
    let r = &first["result"];
    assert_eq!(r["resultType"], "input_required", "{first}");
    let key = r["inputRequests"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let state = r["requestState"].as_str().unwrap().to_owned();
    let mut changed = call.clone();
    changed["arguments"] = json!({"message": "who?", "extra": "sneaked in"});
    changed["requestState"] = json!(state);
    changed["inputResponses"] = json!({ &key: {"action": "accept", "content": {"name": "Ada"}} });
    let r = request(&m, 2, "tools/call", changed, caps.clone()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("differ from the call's"), "{}", r.body);

    // A call held for the gateway's approval question: the retry approves, but asks for
    // another text than the one the person saw.
    let danger = json!({"name": "fx__echo", "arguments": {"text": "danger: drop table"}});
    let first = request(&m, 3, "tools/call", danger.clone(), caps.clone())
        .await
        .message();
    let r = &first["result"];
    assert_eq!(r["resultType"], "input_required", "{first}");
    let (key, question) = r["inputRequests"]
        .as_object()
        .unwrap()
        .iter()
        .next()
        .unwrap();
    assert_eq!(question["method"], "elicitation/create");
    let message = question["params"]["message"].as_str().unwrap();
    assert!(
        message.contains("danger: drop table") && message.contains("rules[3]"),
        "{message}"
    );
    let state = r["requestState"].as_str().unwrap().to_owned();
    let accept = json!({ key: {"action": "accept", "content": {}} });
    let mut swapped = json!({"name": "fx__echo", "arguments": {"text": "danger: rm -rf /"}});
    swapped["requestState"] = json!(state);
    swapped["inputResponses"] = accept.clone();
    let r = request(&m, 4, "tools/call", swapped, caps.clone()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    // The genuine retry runs what was approved.
    let mut retry = danger.clone();
    retry["requestState"] = json!(state);
    retry["inputResponses"] = accept;
    let done = request(&m, 5, "tools/call", retry, caps.clone())
        .await
        .message();
    assert_eq!(text(&done), "danger: drop table", "{done}");

    // Without the elicitation capability: refused with the reason, at once.
    let r = request(&m, 6, "tools/call", danger, json!({})).await;
    assert!(r.body.contains("approval"), "{}", r.body);
    let approvals: Vec<Value> = audit_records(&audit)
        .into_iter()
        .filter(|r| r["kind"] == "approval")
        .collect();
    assert!(
        approvals.iter().any(|r| r["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("answer: accept")),
        "{approvals:#?}"
    );
}

/// More than the gateway holds in all: without a per-client share, this flood alone would fill
/// every question slot.
const FLOOD: usize = 1024 + 16;

/// One hostile client floods `confirm` calls and never answers; another client's question is
/// still asked. The flood's calls past its share (`max_waiting_approvals`, default 16) are
/// refused at once with a clear error, and audited.
#[tokio::test]
async fn one_client_flooding_approvals_does_not_lock_out_another() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let gw = Gateway::start(&format!(
        r#"{}
[clients.mallory]
token_sha256 = "{}"
allow = ["fx__echo"]
confirm_timeout = "60s"

[[clients.mallory.rules]]
confirm = ["fx__echo"]

[clients.ada]
token_sha256 = "{}"
allow = ["fx__echo"]
confirm_timeout = "1s"
max_waiting_approvals = 2

[[clients.ada.rules]]
confirm = ["fx__echo"]
"#,
        with_fixture(&audit),
        common::token_hash("mallory-token"),
        common::token_hash("ada-token"),
    ));
    let mut mallory = Mcp::new(&gw.url);
    mallory.bearer = Some("mallory-token".into());
    mallory
        .initialize_with(LATEST, json!({"elicitation": {}}))
        .await;
    let mallory = std::sync::Arc::new(mallory);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = Vec::new();
    for i in 0..FLOOD {
        let (m, done) = (mallory.clone(), done.clone());
        flood.push(tokio::spawn(async move {
            let body = json!({"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call",
                "params": {"name": "fx__echo", "arguments": {"text": format!("flood {i}")}}});
            let r = m.post(&body).await;
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            r
        }));
    }
    // A refused call answers at once; an asked one waits for its 60 s timeout. Once
    // FLOOD - 1024 have answered, a gateway without per-client shares would be full.
    let answered = || done.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while answered() < FLOOD - 1024 {
        assert!(tokio::time::Instant::now() < deadline, "the flood is stuck");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Ada is still asked (and, unanswered, refused after her 1 s).
    let mut ada = Mcp::new(&gw.url);
    ada.bearer = Some("ada-token".into());
    ada.initialize_with(LATEST, json!({"elicitation": {}}))
        .await;
    let r = ada
        .post(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "fx__echo", "arguments": {"text": "ada's call"}}}))
        .await;
    let messages = r.sse_messages();
    assert!(
        messages.iter().any(|m| m["method"] == "elicitation/create"
            && m["params"]["message"]
                .as_str()
                .is_some_and(|t| t.contains("ada's call"))),
        "ada was not asked: {}",
        r.body
    );
    assert!(r.message()["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("no answer within 1s")));

    // The flood's calls past its share were refused with the reason.
    while answered() < FLOOD - 16 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of the flood's calls were answered: more than 16 questions were asked",
            answered()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(answered(), FLOOD - 16, "16 questions wait for mallory");
    let mut refused = 0;
    for h in flood {
        if !h.is_finished() {
            h.abort();
            continue;
        }
        let msg = h.await.unwrap().message();
        let e = &msg["error"];
        assert_eq!(e["code"], -32012, "{msg}");
        assert!(
            e["message"].as_str().is_some_and(|m| m
                .contains("client `mallory` already has 16 approval questions waiting")
                && m.contains("clients.mallory.max_waiting_approvals")),
            "{msg}"
        );
        refused += 1;
    }
    assert_eq!(refused, FLOOD - 16);
    let full: Vec<Value> = (0..50)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            audit_records(&audit)
                .into_iter()
                .filter(|r| {
                    r["kind"] == "approval"
                        && r["client"] == "mallory"
                        && r["detail"]
                            .as_str()
                            .is_some_and(|d| d.contains("already has 16 questions waiting"))
                })
                .collect::<Vec<Value>>()
        })
        .find(|v| v.len() == FLOOD - 16)
        .expect("every refused question is audited");
    assert!(
        full.iter()
            .all(|r| r["outcome"] == "error" && r["error_code"] == -32012),
        "{:#}",
        full[0]
    );
}

const TASKS: &str = "io.modelcontextprotocol/tasks";

/// Carol may start jobs on one queue only (`when` on the call's arguments); bob may use all of
/// `shapes`.
fn task_policy(audit: &std::path::Path, queue: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
naming = "prefix"

[audit]
dir = "{}"

{}
[clients.carol]
token_sha256 = "{}"

[[clients.carol.rules]]
allow = ["shapes__start_job"]
when = 'args.queue == "{queue}"'

[clients.bob]
token_sha256 = "{}"
allow = ["shapes__*"]
"#,
        audit.display(),
        common::modern::shapes_server(),
        common::token_hash("carol-token"),
        common::token_hash("bob-token"),
    )
}

/// A task request is decided as the call that made the task, arguments included: a client
/// allowed a tool under a condition follows its own task, another client cannot use its handle,
/// and once the policy would refuse the call, the task is refused too, naming the rule.
#[tokio::test]
async fn task_requests_are_judged_on_the_call_that_made_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let gw = Gateway::start(&task_policy(&audit, "docs"));
    let carol = client(&gw, Some("carol-token"));
    let bob = client(&gw, Some("bob-token"));
    let caps = json!({"extensions": { TASKS: {} }});
    let start = |queue: &str| json!({"name": "shapes__start_job", "arguments": {"queue": queue}});

    let r = request(&carol, 1, "tools/call", start("docs"), caps.clone())
        .await
        .message();
    assert_eq!(r["result"]["resultType"], "task", "{r}");
    let handle = r["result"]["taskId"].as_str().unwrap().to_owned();
    let no = request(&carol, 2, "tools/call", start("prod"), caps.clone()).await;
    assert_eq!(no.status, 403, "{}", no.body);

    // Carol follows her own task: decided on `queue = "docs"`, which her rule allows.
    let get = json!({"taskId": handle});
    let r = request(&carol, 3, "tasks/get", get.clone(), caps.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = r.message();
    assert_eq!(m["result"]["status"], "completed", "{m}");
    assert_eq!(m["result"]["taskId"], handle.as_str(), "{m}");
    assert_eq!(text(&json!({"result": m["result"]["result"]})), "job done");

    // Bob may use every tool of the server, but not carol's task.
    let r = request(&bob, 4, "tasks/get", get.clone(), caps.clone()).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("issued to another client"), "{}", r.body);

    // Carol's rule now allows another queue: her call would be refused, so is its task.
    gw.write_policy(&task_policy(&audit, "reports"));
    gw.sighup();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let r = request(&carol, 5, "tasks/get", get.clone(), caps.clone()).await;
        if r.status == 403 {
            break r;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(tokio::time::Instant::now() < deadline, "reload not applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let msg = refused.message();
    let reason = msg["error"]["message"].as_str().unwrap_or_default();
    assert!(
        reason.contains("rules[0]")
            && reason.contains("condition is false")
            && reason.contains("the task was made by that tool"),
        "{reason}"
    );
    let r = request(&carol, 6, "tasks/cancel", get, caps).await;
    assert_eq!(r.status, 403, "{}", r.body);
    let denied = denied_records(&audit, 3);
    assert!(
        denied.iter().any(|d| d["method"] == "tasks/get"
            && d["tool"] == "start_job"
            && d["rule"]
                .as_str()
                .is_some_and(|r| r.starts_with("rules[0]"))
            && d["rule_condition"] == true),
        "{denied:#?}"
    );
    assert!(audit_verify(&audit).0);
}
