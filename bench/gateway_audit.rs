//! Calls per second through the real gateway, same run, against our fixture server (process
//! runtime): the audit log off (baseline), on with fsync = group (the default) and = always, and
//! access control on (bearer token + per-client tool rules + rate limits, audit off), and trace
//! export ([telemetry], audit off) to a collector that is down (a closed port) or that accepts
//! and never answers. The figures that matter are the ratios to the baseline: what each layer
//! costs per call.
//!
//! The trace rows are measured apart, interleaved: the baseline and the two collector cases run
//! side by side (three gateways up at once) in rounds, each round running every case once in a
//! rotating order, and each round's ratio is taken against the baseline of the same round. A
//! machine whose speed drifts (other builds starting and stopping) moves all three alike, so
//! the median of the per-round ratios is far steadier than one sequential run per case (which
//! gave 0.53 and 1.67 for the same row on a busy machine).
//!
//!   cargo bench --bench gateway_audit        (AUDIT_BENCH_CALLS=4000, AUDIT_BENCH_CONCURRENCY=32,
//!                                             TRACE_BENCH_ROUNDS=8, TRACE_BENCH_CALLS=1000 per round)

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::{env_num, Gateway};
use serde_json::json;

const TOKEN: &str = "pcs_bench-token-00000000000000000000000000000";

async fn run(gw: &Gateway, calls: usize, concurrency: usize, auth: bool) -> (f64, Vec<Duration>) {
    let mut c = Mcp::new(&gw.url);
    let bearer = if auth {
        format!("Bearer {TOKEN}")
    } else {
        String::new()
    };
    if auth {
        c.bearer = Some(TOKEN.to_owned());
    }
    c.initialize(LATEST).await;
    let sid = c.session.clone().unwrap_or_default();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (url, sid, next, bearer) = (gw.url.clone(), sid.clone(), next.clone(), bearer.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut lat = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                let t = Instant::now();
                let mut req = http.post(&url);
                if !bearer.is_empty() {
                    req = req.header("authorization", &bearer);
                }
                let ok = req
                    .header("content-type", "application/json")
                    .header("accept", "application/json")
                    .header("mcp-session-id", &sid)
                    .body(json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}).to_string())
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false);
                if ok {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort();
    (all.len() as f64 / secs, all)
}

fn q(v: &[Duration], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() {
    let calls = env_num("AUDIT_BENCH_CALLS", 4000);
    let conc = env_num("AUDIT_BENCH_CONCURRENCY", 32);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = |audit: &str, extra: &str| {
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[audit]\n{audit}\n\n[servers.fixture]\nruntime = \"process\"\ncommand = \"{{fixture}}\"\n{extra}"
        )
    };
    use sha2::Digest;
    let access = format!(
        "rate = {{ quota = \"1000000/s\", burst = 1000000 }}\n\n[clients.bench]\ntoken_sha256 = \"{}\"\nallow = [\"fixture__echo\", \"fixture__pid\"]\nrate = {{ quota = \"1000000/s\", burst = 1000000 }}\n",
        hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()))
    );
    let mut rows = Vec::new();
    let audit_at = |mode: &str| {
        format!(
            "dir = \"{}\"\nfsync = \"{mode}\"",
            dir.path().join(mode).display()
        )
    };
    let off = "enabled = false".to_owned();
    // A closed port, and a listener that accepts and never answers (kept open for the run).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let telemetry = |addr: std::net::SocketAddr| {
        format!("\n[telemetry]\nendpoint = \"http://{addr}\"\ntimeout = \"1s\"\n")
    };
    for (name, audit, extra, auth) in [
        ("audit off (baseline)", off.clone(), String::new(), false),
        (
            "audit on, fsync=group",
            audit_at("group"),
            String::new(),
            false,
        ),
        (
            "audit on, fsync=always",
            audit_at("always"),
            String::new(),
            false,
        ),
        ("auth+rules+limits", off.clone(), access.clone(), true),
    ] {
        let gw = Gateway::start(&policy(&audit, &extra));
        let _ = run(&gw, 200, conc, auth).await; // warm-up
        let (rate, lat) = run(&gw, calls, conc, auth).await;
        rows.push((name, rate, q(&lat, 0.5), q(&lat, 0.99)));
    }
    let base = rows[0].1;
    println!("\ncalls through the gateway, {calls} calls at concurrency {conc} (debug/release per the cargo profile)");
    println!(
        "{:<24} {:>10} {:>8} {:>9} {:>9}",
        "case", "calls/s", "ratio", "p50 ms", "p99 ms"
    );
    for (name, rate, p50, p99) in &rows {
        println!(
            "{name:<24} {rate:>10.0} {:>8.2} {p50:>9.2} {p99:>9.2}",
            rate / base
        );
    }
    let cases = [
        ("traces off (baseline)", String::new()),
        ("traces, dead collector", telemetry(dead)),
        ("traces, silent collector", telemetry(silent_addr)),
    ];
    traces_interleaved(&policy(&off, ""), &cases, conc).await;
}

/// The trace rows: every case's gateway up at once, run in rounds in a rotating order; per
/// case the median (and range) of its per-round ratio to the same round's baseline.
async fn traces_interleaved(base_policy: &str, cases: &[(&str, String)], conc: usize) {
    let rounds = env_num("TRACE_BENCH_ROUNDS", 8).max(1);
    let per_round = env_num("TRACE_BENCH_CALLS", 1000);
    let gateways: Vec<Gateway> = cases
        .iter()
        .map(|(_, extra)| Gateway::start(&format!("{base_policy}{extra}")))
        .collect();
    for gw in &gateways {
        let _ = run(gw, 200, conc, false).await; // warm-up
    }
    // rates[case][round]
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    let mut p50s = vec![Vec::new(); cases.len()];
    for round in 0..rounds {
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            let (rate, lat) = run(&gateways[i], per_round, conc, false).await;
            rates[i].push(rate);
            p50s[i].push(q(&lat, 0.5));
        }
    }
    println!(
        "
trace export, interleaved: {rounds} rounds of {per_round} calls per case at concurrency {conc}"
    );
    println!(
        "{:<26} {:>10} {:>13} {:>17} {:>11}",
        "case", "calls/s", "median ratio", "ratio min-max", "median p50"
    );
    for (i, (name, _)) in cases.iter().enumerate() {
        let mut ratios: Vec<f64> = (0..rounds).map(|r| rates[i][r] / rates[0][r]).collect();
        ratios.sort_by(f64::total_cmp);
        let mut r = rates[i].clone();
        r.sort_by(f64::total_cmp);
        let mut p = p50s[i].clone();
        p.sort_by(f64::total_cmp);
        println!(
            "{name:<26} {:>10.0} {:>13.2} {:>8.2}-{:<8.2} {:>11.2}",
            r[r.len() / 2],
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
            p[p.len() / 2]
        );
    }
}
