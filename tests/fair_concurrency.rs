//! A server's call slots (`max_in_flight`) are shared fairly: one client keeping its queue full
//! delays only itself. Queued calls are served round-robin by client, and each client's queue
//! has its own bound and timeout.
//!
//! Latency is compared as a ratio against the same client's quiet figure measured in the same
//! run, with a generous bound, so a loaded machine slows both alike.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::{http_get, token_hash, Gateway};
use serde_json::{json, Value};

const A: &str = "pcs_client-a-floods-the-queue-token-1111111111111";
const B: &str = "pcs_client-b-calls-one-by-one-token-22222222222222";
/// Calls client A keeps outstanding.
const A_CALLS: usize = 100;
/// B's sequential calls per phase.
const B_CALLS: usize = 20;
/// How long the fixture's tool sleeps per call.
const TOOL_MS: u64 = 50;
/// B's median under A's load may be at most this many times its quiet median. Served fairly, B
/// waits for about one of A's calls (about 2x); behind A's queue it would wait for all of it.
const MAX_SLOWDOWN: f64 = 5.0;

fn policy() -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"

[servers.fx]
runtime = "process"
command = "{{fixture}}"
max_in_flight = 2
queue_timeout = "5s"

[clients.a]
token_sha256 = "{}"

[clients.b]
token_sha256 = "{}"
"#,
        token_hash(A),
        token_hash(B)
    )
}

async fn session(gw: &Gateway, token: &str) -> Mcp {
    let mut c = Mcp::new(&gw.url);
    c.bearer = Some(token.to_owned());
    c.initialize(LATEST).await;
    c
}

/// One call of the sleeping tool as plain JSON: the answer and how long it took.
async fn slow_call(c: &mut Mcp) -> (Value, Duration) {
    let id = c.next_id();
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "slow", "arguments": {"ms": TOOL_MS}}});
    let started = Instant::now();
    let r = c
        .post_with(
            &body.to_string(),
            &[
                ("mcp-protocol-version", LATEST),
                ("accept", "application/json"),
            ],
        )
        .await;
    (r.json(), started.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// B's sequential calls; every one must be served.
async fn b_phase(b: &mut Mcp) -> Duration {
    let mut took = Vec::new();
    for _ in 0..B_CALLS {
        let (r, t) = slow_call(b).await;
        assert!(
            r["result"]["content"][0]["text"] == "done",
            "client B's call was not served while A kept its queue full: {r}"
        );
        took.push(t);
    }
    median(took)
}

#[tokio::test]
async fn a_client_keeping_the_queue_full_delays_only_itself() {
    let gw = Gateway::start(&policy());
    let mut b = session(&gw, B).await;
    // Warm-up, then B's quiet figure.
    slow_call(&mut b).await;
    let quiet = b_phase(&mut b).await;

    let a = session(&gw, A).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (served, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let refusal = Arc::new(Mutex::new(String::new()));
    let mut tasks = Vec::new();
    for _ in 0..A_CALLS {
        let mut c = Mcp::new(&gw.url);
        c.bearer = a.bearer.clone();
        c.session = a.session.clone();
        let (stop, served, refused) = (stop.clone(), served.clone(), refused.clone());
        let refusal = refusal.clone();
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (r, _) = slow_call(&mut c).await;
                if r["result"]["content"][0]["text"] == "done" {
                    served.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Anything else must be the queue error (full, or no slot within the timeout).
                assert_eq!(r["error"]["code"], -32015, "client A got {r}");
                let m = r["error"]["message"].as_str().unwrap_or_default();
                *refusal.lock().unwrap() = m.to_owned();
                refused.fetch_add(1, Ordering::Relaxed);
                // Back off a little so that the refusals do not load the machine more than the
                // calls do; 100 callers still keep A's queue full.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    // Let A's queue fill.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, metrics) = http_get(&format!("{}/metrics", gw.base)).unwrap();
    let loaded = b_phase(&mut b).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let ratio = loaded.as_secs_f64() / quiet.as_secs_f64();
    eprintln!(
        "fair share: B median quiet {quiet:?}, under A's load {loaded:?} (x{ratio:.2}); A served {}, refused {}",
        served.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );
    assert!(
        ratio <= MAX_SLOWDOWN,
        "B's median went from {quiet:?} to {loaded:?} (x{ratio:.2}) while A kept its queue full"
    );
    assert!(served.load(Ordering::Relaxed) > 0, "A was starved");
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "A's queue was never full"
    );
    let m = refusal.lock().unwrap().clone();
    assert!(
        m.contains("client `a`"),
        "the queue error names the client: {m}"
    );
    let queued = metrics
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_calls_queued{server=\"fx\",client=\"a\"}"))
        .map(|v| v.trim().parse::<i64>().unwrap());
    assert!(
        queued.is_some_and(|n| n >= 1),
        "A's queue is not shown: {metrics}"
    );
}
