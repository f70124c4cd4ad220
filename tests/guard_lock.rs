//! The lock file in `warn` mode, and a lock that cannot be read.
//!
//! (`enforce` mode, `tools diff` and `--update` are driven through the official Python SDK in
//! `tests/python/test_tool_lock.py`, and through rmcp in `tests/rmcp_client.rs`; images in
//! `tests/docker_pinning.rs`.)

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::client::{tool_text, Mcp, LATEST};
use common::lock::{rug_pull_policy, write_lock};
use common::{audit_records, gateway_bin, http_get, Gateway};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn warn_mode_serves_the_change_and_audits_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("policy.toml.lock");
    write_lock(dir.path(), &rug_pull_policy(&lock, "warn"));
    let gw = Gateway::start(&rug_pull_policy(&lock, "warn"));
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let r = c.call_tool("add", json!({"a": 1, "b": 2})).await;
    assert_eq!(tool_text(&r), "3");
    // The server now describes `add` differently and offers `exfiltrate`: both are served.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tools = c.request("tools/list", json!({})).await;
        let list = tools["result"]["tools"].as_array().unwrap().clone();
        let add = list.iter().find(|t| t["name"] == "add").unwrap();
        if add["description"].as_str().unwrap().contains("IMPORTANT") {
            assert!(list.iter().any(|t| t["name"] == "exfiltrate"), "{tools}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change never showed: {tools}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = c.call_tool("add", json!({"a": 2, "b": 2})).await;
    assert_eq!(tool_text(&r), "4");
    for _ in 0..3 {
        c.request("tools/list", json!({})).await;
    }
    let records = audit_records(&gw.dir().join("portcullis-audit"));
    let mismatches: Vec<Value> = records
        .iter()
        .filter(|r| r["kind"] == "lock_mismatch")
        .cloned()
        .collect();
    assert_eq!(
        mismatches.len(),
        2,
        "add (changed) and exfiltrate (added), once each: {mismatches:?}"
    );
    for m in &mismatches {
        let d: Value = serde_json::from_str(m["detail"].as_str().unwrap()).unwrap();
        assert_eq!(
            (d["mode"].as_str(), d["action"].as_str()),
            (Some("warn"), Some("allowed"))
        );
    }
    let (_, metrics) = http_get(&format!("{}/metrics", gw.base)).unwrap();
    assert!(
        metrics.contains(
            "portcullis_lock_mismatch_total{server=\"rp\",list=\"tools\",change=\"added\"} 1"
        ),
        "{metrics}"
    );
    assert!(gw.stderr().contains("differs from the approved definition"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_lock_stops_the_gateway_and_rejects_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("policy.toml.lock");
    let path = dir.path().join("policy.toml");
    std::fs::write(&path, rug_pull_policy(&lock, "enforce")).unwrap();
    let mut child = Command::new(gateway_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--policy"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the gateway runs without its lock file");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("cannot read the lock file") && err.contains("tools lock --policy"),
        "{err}"
    );

    // With a lock in force, a reload whose lock cannot be read is rejected: the lock stays.
    write_lock(dir.path(), &rug_pull_policy(&lock, "enforce"));
    let gw = Gateway::start(&rug_pull_policy(&lock, "enforce"));
    std::fs::write(&lock, "{ not a lock").unwrap();
    gw.sighup();
    gw.wait_for_log("policy reload rejected", 1, Duration::from_secs(30));
    assert!(
        gw.stderr().contains("is not a Portcullis lock file"),
        "{}",
        gw.stderr()
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let r = c.call_tool("add", json!({"a": 1, "b": 1})).await;
    assert_eq!(tool_text(&r), "2");
}
