//! Soak and fault test: mixed load for `SOAK_SECONDS` (30 in `make test`, 600 in `make soak`)
//! with sessions opening and closing, upstream servers killed with SIGKILL (processes and a
//! Docker container) and the policy reloaded by SIGHUP on a schedule. It asserts what an
//! operator cares about after a long run:
//! - every client request got an answer (a result or a JSON-RPC error, never a hang);
//! - every call answered with a result has its durable `result` record (no lost audit records),
//!   and `portcullis audit verify` accepts the log;
//! - no leaked file descriptors, child processes or containers;
//! - memory stays flat (start and end RSS are printed; a leak of a few KB per call fails).
//!
//! Loopback only: the gateway, its servers and the client all run on this machine.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::docker::{self, Scope, FIXTURE_IMAGE};
use common::Gateway;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Answers slower than this count as hangs. It is longer than the gateway's own limits in the
/// policy below (start-up 20 s, or 60 s in Docker, plus a request's 20 s), so that a call the
/// gateway ends with a timeout error counts as answered, and only a real hang as unanswered.
const ANSWER_LIMIT: Duration = Duration::from_secs(90);
const WORKERS: u64 = 8;

fn soak_seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
}

fn policy(audit: &Path, with_docker: bool, extra: bool) -> String {
    let mut p = format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
request_timeout = "20s"

# The workers are one (anonymous) client opening sessions back to back, far faster than the
# default session_rate allows.
[clients.anonymous]
session_rate = {{ quota = "1000/s", burst = 1000 }}

[audit]
enabled = true
dir = "{}"
fsync = "group"

[servers.shared]
runtime = "process"
command = "{{fixture}}"
startup_timeout = "20s"

[servers.session]
runtime = "process"
command = "{{fixture}}"
lifecycle = "per-session"
startup_timeout = "20s"
"#,
        audit.display()
    );
    if with_docker {
        p.push_str(&format!(
            r#"
[servers.boxed]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
startup_timeout = "60s"
limits = {{ memory = "64m", pids = 32 }}
"#
        ));
    }
    if extra {
        // Toggled by the reloads: a server that comes and goes under live sessions.
        p.push_str(
            r#"
[servers.extra]
runtime = "process"
command = "{fixture}"
startup_timeout = "20s"
"#,
        );
    }
    p
}

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    hangs: AtomicU64,
    sessions: AtomicU64,
}

/// One POST with the session headers; `Err` is a hang or a broken connection.
async fn post(
    http: &reqwest::Client,
    url: &str,
    sid: Option<&str>,
    body: &Value,
) -> Result<(reqwest::header::HeaderMap, Value), String> {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .timeout(ANSWER_LIMIT)
        .body(body.to_string());
    if let Some(s) = sid {
        req = req
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-06-18");
    }
    let resp = req.send().await.map_err(|e| e.to_string())?;
    let headers = resp.headers().clone();
    let status = resp.status();
    let text = resp.text().await.map_err(|e| e.to_string())?;
    if status == reqwest::StatusCode::ACCEPTED {
        return Ok((headers, Value::Null));
    }
    // SSE or JSON: the answer is the last `data:` line, or the body itself.
    let data = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .rfind(|d| !d.is_empty())
        .unwrap_or(text.trim())
        .to_owned();
    let value = serde_json::from_str(&data)
        .map_err(|e| format!("HTTP {status}, unparsable answer {data:?}: {e}"))?;
    Ok((headers, value))
}

/// Opens sessions one after another, makes a few calls in each and closes it, until `until`.
async fn worker(
    url: String,
    worker: u64,
    tools: Vec<&'static str>,
    until: Instant,
    tally: Arc<Tally>,
) -> Vec<String> {
    let http = reqwest::Client::new();
    let mut answered = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
            "protocolVersion":"2025-06-18","capabilities":{},
            "clientInfo":{"name":"soak","version":"0"}}});
        let sid = match post(&http, &url, None, &init).await {
            Ok((h, v)) if v.get("result").is_some() => h
                .get("mcp-session-id")
                .and_then(|s| s.to_str().ok())
                .map(str::to_owned),
            Ok((_, v)) => {
                tally.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: initialize refused: {v}");
                None
            }
            Err(e) => {
                tally.hangs.fetch_add(1, Ordering::Relaxed);
                eprintln!("soak: initialize unanswered: {e}");
                None
            }
        };
        let Some(sid) = sid else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tally.sessions.fetch_add(1, Ordering::Relaxed);
        let _ = post(
            &http,
            &url,
            Some(&sid),
            &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        )
        .await;
        let calls = 5 + (worker * 7 + n) % 40;
        for i in 0..calls {
            n += 1;
            let tool = tools[(n as usize + worker as usize) % tools.len()];
            let text = format!("w{worker}-{n}");
            let body = json!({"jsonrpc":"2.0","id":i + 1,"method":"tools/call",
                "params":{"name":tool,"arguments":{"text":text}}});
            tally.requests.fetch_add(1, Ordering::Relaxed);
            match post(&http, &url, Some(&sid), &body).await {
                Ok((_, v)) if v["result"]["content"][0]["text"] == text.as_str() => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    answered.push(text);
                }
                Ok((_, v)) if v.get("error").is_some() || v["result"]["isError"] == true => {
                    // An upstream killed mid-call: a clear error is an answer.
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                }
                Ok((_, v)) => panic!("soak: {tool} answered {v}, expected the echo of {text}"),
                Err(e) => {
                    tally.hangs.fetch_add(1, Ordering::Relaxed);
                    eprintln!("soak: {tool} call unanswered: {e}");
                }
            }
        }
        let _ = http
            .delete(&url)
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-06-18")
            .timeout(ANSWER_LIMIT)
            .send()
            .await;
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_with_kills_and_reloads_loses_nothing_and_leaks_nothing() {
    let secs = soak_seconds();
    let scope = Scope::new("soak");
    let with_docker = match docker::runtime(&scope.name).await {
        Some(rt) => docker::require_image(&rt, FIXTURE_IMAGE, "tests/docker/build-images.sh")
            .await
            .is_some(),
        None => false,
    };
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let mut gw = Gateway::start_with(
        &policy(&audit, with_docker, false),
        // SIGHUP is the only trigger, so that each reload is one audit record.
        &[
            ("PORTCULLIS_DOCKER_SCOPE", &scope.name),
            ("PORTCULLIS_NO_WATCH", "true"),
        ],
    );
    let pid = gw.child.id();
    let mut tools = vec!["shared__echo", "session__echo"];
    if with_docker {
        tools.push("boxed__echo");
    }

    // Warm up, then take the baseline with no session open.
    let tally = Arc::new(Tally::default());
    let warm = worker(
        gw.url.clone(),
        99,
        tools.clone(),
        Instant::now() + Duration::from_secs(2),
        tally.clone(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_start, fds_start) = (rss_kb(pid), open_fds(pid));

    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        tasks.push(tokio::spawn(worker(
            gw.url.clone(),
            w,
            tools.clone(),
            until,
            tally.clone(),
        )));
    }

    // Faults and reloads on a schedule scaled to the run: a reload every minute in a 10-minute
    // soak, at least three in a short one.
    let reload_every = Duration::from_secs((secs / 10).clamp(5, 60));
    let kill_every = Duration::from_secs((secs / 20).clamp(3, 30));
    let (mut reloads, mut kills, mut container_kills) = (0u32, 0u32, 0u32);
    let mut next_reload = Instant::now() + reload_every;
    let mut next_kill = Instant::now() + kill_every;
    let mut extra_on = false;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if Instant::now() >= next_kill {
            next_kill += kill_every;
            let victims = common::child_pids(pid);
            if let Some(v) = victims.get(kills as usize % victims.len().max(1)) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*v as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                kills += 1;
            }
            if with_docker && kills % 3 == 0 {
                let rt = docker::runtime(&scope.name).await.unwrap();
                for id in docker::containers_in(&rt, &scope.name).await.keys() {
                    let _ = rt
                        .api()
                        .kill_container(id, None::<bollard::query_parameters::KillContainerOptions>)
                        .await;
                    container_kills += 1;
                }
            }
        }
        if Instant::now() >= next_reload {
            next_reload += reload_every;
            extra_on = !extra_on;
            gw.write_policy(&policy(&audit, with_docker, extra_on));
            gw.sighup();
            reloads += 1;
        }
    }
    let mut answered: Vec<String> = warm;
    for t in tasks {
        answered.extend(t.await.unwrap());
    }
    assert!(
        gw.child.try_wait().unwrap().is_none(),
        "the gateway died during the soak:\n{}",
        gw.stderr()
    );

    // Let per-session servers and restarted ones settle, then compare with the baseline.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_end, fds_end) = (rss_kb(pid), open_fds(pid));
    let kids = common::child_pids(pid);
    let t = &tally;
    eprintln!(
        "soak: {secs} s, {} sessions, {} requests: {} ok, {} errors, {} unanswered; \
         {kills} server kills, {container_kills} container kills, {reloads} reloads; \
         RSS {rss_start} kB -> {rss_end} kB, fds {fds_start} -> {fds_end}, children now {}",
        t.sessions.load(Ordering::Relaxed),
        t.requests.load(Ordering::Relaxed),
        t.ok.load(Ordering::Relaxed),
        t.errors.load(Ordering::Relaxed),
        t.hangs.load(Ordering::Relaxed),
        kids.len()
    );
    assert_eq!(
        t.hangs.load(Ordering::Relaxed),
        0,
        "every request must be answered"
    );
    assert!(
        t.ok.load(Ordering::Relaxed) > 100 * secs.min(30),
        "too few calls succeeded to mean anything"
    );
    assert!(reloads >= 3 && kills >= 3, "the faults did not happen");
    // Shared servers (shared, extra when on) remain; every per-session one is gone.
    let expected_children = 1 + usize::from(extra_on);
    assert!(
        kids.len() <= expected_children,
        "leaked child processes: {kids:?} (expected at most {expected_children})"
    );
    assert!(
        fds_end <= fds_start + 8,
        "file descriptors leaked: {fds_start} before, {fds_end} after"
    );
    // Allocator caches make RSS noisy; a real per-call leak grows with the call count.
    assert!(
        rss_end <= rss_start * 2 + 32 * 1024,
        "memory grew from {rss_start} kB to {rss_end} kB"
    );

    gw.terminate(Duration::from_secs(60));
    if with_docker {
        let rt = docker::runtime(&scope.name).await.unwrap();
        let left = docker::containers_in(&rt, &scope.name).await;
        assert!(left.is_empty(), "containers left behind: {left:?}");
    }

    // No lost audit records, and the chain verifies.
    let (ok, out) = common::audit_verify(&audit);
    assert!(ok, "audit verify: {out}");
    let recs = common::audit_records(&audit);
    let results: HashSet<&str> = recs
        .iter()
        .filter(|r| r["kind"] == "result" && r["outcome"] == "ok")
        .filter_map(|r| r["args_sha256"].as_str())
        .collect();
    let mut lost = 0;
    for text in &answered {
        let h = hex::encode(Sha256::digest(json!({"text": text}).to_string().as_bytes()));
        if !results.contains(h.as_str()) {
            lost += 1;
        }
    }
    assert_eq!(lost, 0, "answered calls without a durable result record");
    let reload_records = recs
        .iter()
        .filter(|r| r["kind"].as_str().is_some_and(|k| k.contains("reload")))
        .count();
    assert_eq!(
        reload_records, reloads as usize,
        "one audit record per reload"
    );
}
