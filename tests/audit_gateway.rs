//! The audit log as the running gateway writes it: every call and result, every refusal,
//! verifiable offline, free of secrets, durable across kill -9, and fail-closed.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::client::{tool_text, Mcp, LATEST};
use common::{audit_records as records, audit_verify as verify, audit_verify_with, Gateway};
use serde_json::{json, Value};

const SECRET: &str = "audit-test-secret-value-7Q9";

fn policy(audit_dir: &Path, extra: &str) -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[audit]
dir = "{}"
{extra}

[servers.fixture]
runtime = "process"
command = "{{fixture}}"
secrets = {{ API_KEY = "env:AUDIT_TEST_SECRET" }}
tool_rates = {{ pid = {{ quota = "1/hour", burst = 1 }} }}
"#,
        audit_dir.display()
    )
}

#[tokio::test]
async fn calls_results_and_refusals_are_recorded_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    {
        let gw = Gateway::start_with(
            &policy(&audit, "record_arguments = true"),
            &[("AUDIT_TEST_SECRET", SECRET)],
        );
        let mut c = Mcp::new(&gw.url);
        c.initialize(LATEST).await;
        assert_eq!(
            tool_text(&c.call_tool("echo", json!({"text": "hello audit"})).await),
            "hello audit"
        );
        // A secret passed as an argument must not reach the log.
        c.call_tool("echo", json!({"text": format!("token={SECRET}")}))
            .await;
        // The env_get answer carries the secret: results are not logged, only their size.
        c.call_tool("env_get", json!({"name": "API_KEY"})).await;
        c.call_tool("pid", json!({})).await;
        let limited = c.call_tool("pid", json!({})).await;
        assert_eq!(limited["error"]["code"], -32014, "{limited}");
        let err = c.call_tool("no_such_tool", json!({})).await;
        assert!(err.get("error").is_some());
        // Graceful stop writes gateway_stop and a final checkpoint.
        let pid = nix::unistd::Pid::from_raw(gw.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let mut gw = gw;
        let _ = gw.child.wait();
    }
    let (ok, out) = verify(&audit);
    assert!(ok, "audit verify failed: {out}");
    let recs = records(&audit);
    let kinds: Vec<&str> = recs.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    for k in [
        "gateway_start",
        "policy_load",
        "container_start",
        "call",
        "result",
        "denied",
        "gateway_stop",
        "checkpoint",
    ] {
        assert!(kinds.contains(&k), "no {k} record in {kinds:?}");
    }
    let echo_calls: Vec<&Value> = recs
        .iter()
        .filter(|r| r["kind"] == "call" && r["tool"] == "echo")
        .collect();
    assert_eq!(echo_calls.len(), 2);
    assert_eq!(echo_calls[0]["client"], "anonymous");
    assert_eq!(echo_calls[0]["server"], "fixture");
    assert!(echo_calls[0]["args_sha256"].as_str().unwrap().len() == 64);
    let results: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "result").collect();
    assert!(
        results.iter().all(|r| r.get("latency_us").is_some()),
        "{results:?}"
    );
    let denied: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "denied").collect();
    assert!(
        denied
            .iter()
            .any(|r| r["outcome"] == "rate_limited" && r["tool"] == "pid"),
        "{denied:?}"
    );
    let raw: String = std::fs::read_dir(&audit)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        raw.contains("hello audit"),
        "record_arguments keeps arguments"
    );
    assert!(
        !raw.contains(SECRET),
        "a secret value reached the audit log"
    );
    // Session ids are credentials; only a digest is kept.
    assert!(recs
        .iter()
        .filter_map(|r| r["session"].as_str())
        .all(|s| s.len() == 16));
}

#[tokio::test]
async fn unauthenticated_requests_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let p = policy(&audit, "").replace(
        "[servers.fixture]",
        "[clients.ci]\ntoken_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\n[servers.fixture]",
    );
    let gw = Gateway::start_with(&p, &[("AUDIT_TEST_SECRET", SECRET)]);
    let c = Mcp::new(&gw.url);
    let r = c.post(&json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":LATEST,"capabilities":{},"clientInfo":{"name":"t","version":"0"}}})).await;
    assert_eq!(r.status, 401);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if records(&audit)
            .iter()
            .any(|r| r["kind"] == "denied" && r["outcome"] == "denied_auth")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no denied_auth record"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn every_answered_call_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let mut answered: Vec<String> = Vec::new();
    for round in 0..4u64 {
        let gw = Gateway::start_with(&policy(&audit, ""), &[("AUDIT_TEST_SECRET", SECRET)]);
        let mut c = Mcp::new(&gw.url);
        c.initialize(LATEST).await;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // 16 callers, each calling until the gateway dies.
        let tasks = echo_callers(
            &gw.url,
            &c.session.clone().unwrap(),
            16,
            &format!("r{round}"),
            &done,
        );
        // Kill at a different moment each round, with calls in flight.
        let target = 100 + 37 * round as usize;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while done.load(std::sync::atomic::Ordering::Relaxed) < target
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let pid = nix::unistd::Pid::from_raw(gw.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        for t in tasks {
            answered.extend(t.await.unwrap());
        }
        drop(gw);
    }
    // The next start recovers any torn tail; then every answered call must be in the log.
    {
        let _gw = Gateway::start_with(&policy(&audit, ""), &[("AUDIT_TEST_SECRET", SECRET)]);
    }
    let (ok, out) = verify(&audit);
    assert!(ok, "verify after kill -9: {out}");
    let results: std::collections::HashSet<String> = records(&audit)
        .iter()
        .filter(|r| r["kind"] == "result" && r["outcome"] == "ok")
        .filter_map(|r| r["args_sha256"].as_str().map(str::to_owned))
        .collect();
    assert!(
        answered.len() > 100,
        "too few calls answered to mean anything: {}",
        answered.len()
    );
    for text in &answered {
        assert!(
            results.contains(&echo_digest(text)),
            "answered call {text} has no durable result record"
        );
    }
}

#[tokio::test]
async fn a_full_disk_refuses_calls_instead_of_running_them_unaudited() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=512k", "tmpfs"])
        .arg(&audit)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !mounted {
        common::skip_or_fail("cannot mount a tmpfs (needs root) for the full-disk test");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&audit);
    let gw = Gateway::start_with(&policy(&audit, ""), &[("AUDIT_TEST_SECRET", SECRET)]);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    assert_eq!(
        tool_text(&c.call_tool("echo", json!({"text": "before"})).await),
        "before"
    );
    // Fill the disk.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=1000"])
        .arg(format!("of={}", audit.join("filler").display()))
        .output();
    // Records fill the space the log wrote ahead of them (up to 1 MiB, less on a full disk);
    // then writes fail.
    let mut first_refusal = None;
    for i in 0..5000 {
        let r = c
            .call_tool("echo", json!({"text": format!("after-{i}")}))
            .await;
        if r.get("error").is_some() {
            first_refusal = Some(r);
            break;
        }
    }
    let refused = first_refusal.expect("a full audit disk never refused a call");
    assert_eq!(refused["error"]["code"], -32016, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("audit"),
        "{refused}"
    );
    // Fail-closed stays closed: later calls are refused before they reach the server.
    for _ in 0..3 {
        let again = c.call_tool("echo", json!({"text": "again"})).await;
        assert_eq!(again["error"]["code"], -32016, "{again}");
    }
}

/// The gateway as configured for evidence against root on its host: key epochs and a witness
/// directory. Calls over several epochs verify against the first public key and the witness.
#[tokio::test]
async fn a_gateway_with_key_epochs_and_a_witness_writes_evidence_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let witness = dir.path().join("witness");
    let extra = format!(
        "key_epoch = \"1s\"\ncheckpoint_interval = \"1s\"\n[[audit.witness]]\ntype = \"dir\"\npath = \"{}\"",
        witness.display()
    );
    let mut gw = Gateway::start_with(&policy(&audit, &extra), &[("AUDIT_TEST_SECRET", SECRET)]);
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    for i in 0..30 {
        let text = format!("epoch call {i}");
        assert_eq!(
            tool_text(&c.call_tool("echo", json!({"text": text})).await),
            text
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = gw.terminate(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    let rotations = records(&audit)
        .iter()
        .filter(|r| r["kind"] == "key_rotation")
        .count();
    assert!(rotations >= 2, "{rotations} rotations");
    let first = audit.join("signing.key.pub");
    let out = Command::new(common::gateway_bin())
        .args(["audit", "verify", "--pubkey"])
        .arg(&first)
        .arg("--witness")
        .arg(&witness)
        .arg(&audit)
        .output()
        .unwrap();
    let text = common::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("key rotation(s) followed") && text.contains("checkpoint(s) match"),
        "{text}"
    );
}

/// `workers` callers of the echo tool in session `sid`, each calling until the gateway stops
/// answering. Each returns the texts it saw echoed back: the calls it saw answered, every one
/// unique (`PREFIX-wWORKER-I`), so its arguments' digest finds its records.
fn echo_callers(
    url: &str,
    sid: &str,
    workers: u64,
    prefix: &str,
    done: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..workers)
        .map(|worker| {
            let (url, sid, done) = (url.to_owned(), sid.to_owned(), done.clone());
            let prefix = format!("{prefix}-w{worker}");
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut mine = Vec::new();
                for i in 0..1_000_000u64 {
                    let text = format!("{prefix}-{i}");
                    let body = json!({"jsonrpc":"2.0","id":i,"method":"tools/call","params":{"name":"echo","arguments":{"text":text}}});
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("accept", "application/json")
                        .header("mcp-session-id", &sid)
                        .body(body.to_string())
                        .send()
                        .await;
                    let Ok(r) = sent else { break };
                    match r.json::<Value>().await {
                        Ok(v) if v["result"]["content"][0]["text"] == text => {
                            mine.push(text);
                            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
                mine
            })
        })
        .collect()
}

/// The digest the audit log keeps of an echo call's arguments.
fn echo_digest(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(json!({"text": text}).to_string().as_bytes()))
}

/// The gateway under tool-call load with the checkpoint key rotating every 2 s, killed with
/// SIGKILL five times at random moments (so kills land before, during and after rotations):
/// every restart continues the log, it verifies each time against the auditor's copy of the
/// first public key, and every call a client saw answered has its call and result records.
#[tokio::test]
async fn kill_9_across_key_rotations_under_load_keeps_every_answered_call_and_the_first_key() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let p = policy(&audit, "key_epoch = \"2s\"\ncheckpoint_interval = \"1s\"");
    let env = [("AUDIT_TEST_SECRET", SECRET)];
    // The auditor's copy of the first public key, taken before any rotation can happen.
    let first = dir.path().join("auditor-copy.pub");
    let mut answered: Vec<String> = Vec::new();
    for round in 0..5u64 {
        let mut gw = Gateway::start_with(&p, &env);
        if round == 0 {
            std::fs::copy(audit.join("signing.key.pub"), &first).unwrap();
        }
        let mut c = Mcp::new(&gw.url);
        c.initialize(LATEST).await;
        let done = std::sync::Arc::new(AtomicUsize::new(0));
        // 8 callers, each calling until the gateway dies.
        let tasks = echo_callers(
            &gw.url,
            &c.session.clone().unwrap(),
            8,
            &format!("k{round}"),
            &done,
        );
        // Once calls are being answered, kill after 1-4 s: with 2 s epochs (which restarts do
        // not extend) some kills fall next to a rotation.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while done.load(Ordering::Relaxed) == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).unwrap();
        tokio::time::sleep(Duration::from_millis(1000 + u64::from_le_bytes(b) % 3000)).await;
        gw.kill9();
        let mut got = 0;
        for t in tasks {
            let mine = t.await.unwrap();
            got += mine.len();
            answered.extend(mine);
        }
        assert!(got > 0, "round {round}: no call was answered");
        drop(gw);
        // Restart on the same directory: recovery runs and the chain continues; a clean stop
        // seals it, and the auditor's first key verifies it, every round.
        let mut gw = Gateway::start_with(&p, &env);
        let status = gw.terminate(Duration::from_secs(20));
        assert!(status.success(), "round {round}: restart: {status}");
        let (ok, out) = audit_verify_with(&audit, &["--pubkey".as_ref(), first.as_os_str()]);
        assert!(ok, "round {round}: verify after kill -9 and restart: {out}");
        eprintln!("round {round}: {got} calls answered; {}", out.trim());
    }
    let recs = records(&audit);
    let rotations = recs.iter().filter(|r| r["kind"] == "key_rotation").count();
    assert!(rotations >= 2, "only {rotations} key rotations happened");
    assert!(
        answered.len() > 100,
        "too few calls answered to mean anything: {}",
        answered.len()
    );
    // No answered call without its record: the call and its ok result, matched by the digest
    // of the arguments (each call's text is unique).
    let digests = |kind: &str| -> std::collections::HashSet<String> {
        recs.iter()
            .filter(|r| r["kind"] == kind && r["tool"] == "echo")
            .filter(|r| kind == "call" || r["outcome"] == "ok")
            .filter_map(|r| r["args_sha256"].as_str().map(str::to_owned))
            .collect()
    };
    let (calls, results) = (digests("call"), digests("result"));
    for text in &answered {
        let h = echo_digest(text);
        assert!(
            calls.contains(&h),
            "answered call {text} has no call record"
        );
        assert!(
            results.contains(&h),
            "answered call {text} has no ok result record"
        );
    }
    eprintln!(
        "{} answered calls over 5 kills, {rotations} key rotations, all recorded",
        answered.len()
    );
}

/// A stop that comes the moment the gateway says it listens is a clean stop: exit 0 and a
/// `gateway_stop` record, every time (CI once saw a gateway stopped right after start die of
/// SIGTERM, before it watched for it).
#[tokio::test]
async fn a_sigterm_right_after_the_banner_is_a_clean_stop() {
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit");
        // `spawn` returns as soon as the banner is printed, without waiting for /ready.
        let mut gw = Gateway::spawn(&policy(&audit, ""), &[("AUDIT_TEST_SECRET", SECRET)]);
        let status = gw.terminate(Duration::from_secs(20));
        assert!(
            status.success(),
            "round {round}: {status}; stderr:\n{}",
            gw.stderr()
        );
        let stops = records(&audit)
            .iter()
            .filter(|r| r["kind"] == "gateway_stop")
            .count();
        assert_eq!(stops, 1, "round {round}: no gateway_stop record");
    }
}
