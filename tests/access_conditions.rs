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

fn policy(audit: &std::path::Path) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
naming = "prefix"

[audit]
dir = "{}"

[servers.fx]
runtime = "process"
command = "{{fixture}}"

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
        audit.display()
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
