//! Calls/s through HAProxy in front of 1, 2 and 3 replicas, shared quotas (Redis) off and on,
//! in one run; and per-call latency p50/p99 of each row, whose difference between store on and
//! off at one replica is the added cost of the Redis step. Stateless 2026-07-28 tools/call
//! requests (no session), round robin; audit off; the quota is far above the load so that every
//! call takes the Redis step and none is refused.
//!
//!   cargo bench --bench fleet      (FLEET_BENCH_CALLS=2000, FLEET_BENCH_CONCURRENCY=16)
//!
//! On 2 shared cores the replicas, HAProxy, Redis, the fixture servers and this load generator
//! all compete for the same CPUs: more replicas cannot add throughput here, the rows show the
//! cost of the extra hop and of the store, not scale-out.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fleet::{free_port, haproxy, redis, tool};
use common::{env_num, Gateway};
use serde_json::json;

fn policy(store: Option<u16>) -> String {
    let limits = store
        .map(|p| format!("[limits]\nstore = \"redis://127.0.0.1:{p}/0\"\nreplicas = 3\n\n"))
        .unwrap_or_default();
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n{limits}[audit]\nenabled = false\n\n[servers.fixture]\nruntime = \"process\"\ncommand = \"{{fixture}}\"\nrate = {{ quota = \"10000000/min\", burst = 1000000 }}\n"
    )
}

/// `calls` stateless calls at `concurrency` to `url`: calls/s, successes, p50 and p99 (µs).
async fn run(url: &str, calls: usize, concurrency: usize) -> (f64, usize, u128, u128) {
    let body = common::modern::body(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "x"}}),
        json!({}),
    );
    let headers = common::modern::headers("tools/call", Some("echo"));
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(calls)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (url, body, headers) = (url.to_owned(), body.clone(), headers.clone());
        let (next, ok, lat) = (next.clone(), ok.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                let mut req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream");
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                let t = Instant::now();
                let r = req.body(body.clone()).send().await;
                let good = match r {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                lat.lock().unwrap().push(t.elapsed().as_micros());
                if good {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let rate = calls as f64 / start.elapsed().as_secs_f64();
    let mut l = lat.lock().unwrap().clone();
    l.sort_unstable();
    let pick = |q: f64| l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)));
    (
        rate,
        ok.load(Ordering::Relaxed),
        pick(0.5).copied().unwrap_or(0),
        pick(0.99).copied().unwrap_or(0),
    )
}

#[tokio::main]
async fn main() {
    let (Some(haproxy_bin), Some(redis_bin)) = (tool("haproxy"), tool("redis-server")) else {
        return;
    };
    let calls = env_num("FLEET_BENCH_CALLS", 2000);
    let conc = env_num("FLEET_BENCH_CONCURRENCY", 16);
    let tmp = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let _redis = redis(&redis_bin, redis_port, tmp.path());
    println!(
        "\nstateless tools/call through HAProxy, {calls} calls at concurrency {conc}, audit off"
    );
    println!(
        "{:<10} {:<7} {:>10} {:>9} {:>9} {:>6}",
        "replicas", "store", "calls/s", "p50 µs", "p99 µs", "ok"
    );
    let mut one = [(0u128, 0u128); 2];
    for n in 1..=3 {
        for (s, store) in [None, Some(redis_port)].into_iter().enumerate() {
            let p = policy(store);
            let gws: Vec<Gateway> = (1..=n)
                .map(|i| Gateway::start_with(&p, &[("PORTCULLIS_REPLICA", &format!("gw-{i}"))]))
                .collect();
            let lb_port = free_port();
            let ports: Vec<u16> = gws.iter().map(Gateway::port).collect();
            let dir = tmp.path().join(format!("lb-{n}-{s}"));
            std::fs::create_dir_all(&dir).unwrap();
            let _lb = haproxy(&haproxy_bin, lb_port, &ports, &dir);
            // HAProxy's first checks mark the servers up.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let url = format!("http://127.0.0.1:{lb_port}/mcp");
            let _ = run(&url, 200, conc).await; // warm-up
            let (rate, ok, p50, p99) = run(&url, calls, conc).await;
            let label = if store.is_some() { "redis" } else { "off" };
            println!("{n:<10} {label:<7} {rate:>10.0} {p50:>9} {p99:>9} {ok:>6}");
            if n == 1 {
                one[s] = (p50, p99);
            }
        }
    }
    println!(
        "\nRedis step at one replica (store on - off): p50 {:+} µs, p99 {:+} µs per call",
        one[1].0 as i128 - one[0].0 as i128,
        one[1].1 as i128 - one[0].1 as i128
    );
}
