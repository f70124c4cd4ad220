//! What egress enforcement costs in each mode, through the real gateway binary, a real dockerd
//! and the tests' fake outside world (`tests/common/hostlab.rs`: nothing real is reached):
//!
//!   first ever   from the gateway's start to a shared server's first answer: the gateway starts
//!                every server at boot, and in sidecar mode a server with rules first waits for
//!                its agent container to start and verify its table
//!   first call   a per-call server with egress rules and no pool: every call starts an instance
//!                (in sidecar mode the server's agent is already running by then)
//!   per call     a shared server with egress rules: one call once the server runs
//!
//! The baseline, in the same run: the same two servers without egress rules (no network at
//! all), through the same gateway. Host and sidecar mode take turns, one gateway at a time (they
//! would share the lab's address pool), over `EGRESS_BENCH_ROUNDS` rounds (default 3), the
//! order swapped each round. Prints a table of medians and p99s with ratios to the baseline and
//! writes `bench/results/egress_modes.md` with the machine's load.
//!
//!   cargo bench --bench egress_modes      (root: nft, netns; dockerd; skips loudly otherwise)

#[path = "../tests/common/mod.rs"]
mod common;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::docker::Scope;
use common::hostlab::{build_agent_image, policy, setup, sidecar_policy, HostLab, Setup};
use common::{env_num, Gateway};
use serde_json::{json, Value};

const SERVERS: [&str; 4] = ["cold", "shared", "plaincold", "plainshared"];

fn servers() -> String {
    let fixture = common::docker::FIXTURE_IMAGE;
    let rules = "egress.allow = [\"api.example.test:443\"]\n";
    let mut s = String::new();
    for (name, lifecycle, egress) in [
        ("cold", "per-call", rules),
        ("shared", "shared", rules),
        ("plaincold", "per-call", ""),
        ("plainshared", "shared", ""),
    ] {
        let _ = write!(
            s,
            "\n[servers.{name}]\nruntime = \"docker\"\nimage = \"{fixture}\"\nlifecycle = \"{lifecycle}\"\npool = 0\nstartup_timeout = \"120s\"\nlimits = {{ memory = \"64m\", pids = 32 }}\n{egress}"
        );
    }
    s
}

async fn call(c: &Mcp, server: &str, i: usize) -> Result<Duration, String> {
    let text = format!("b{i}");
    let body = json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
        "params": {"name": format!("{server}__echo"), "arguments": {"text": text}}});
    let t0 = Instant::now();
    let r = c.post(&body).await;
    let took = t0.elapsed();
    let m: Value = r.message();
    if r.status == 200 && m["result"]["content"][0]["text"].as_str() == Some(text.as_str()) {
        Ok(took)
    } else {
        Err(format!("HTTP {}: {}", r.status, r.body))
    }
}

/// The case of a server's very first call.
fn first_ever(server: &'static str) -> &'static str {
    match server {
        "cold" => "cold first ever",
        "shared" => "shared first ever",
        "plaincold" => "plaincold first ever",
        _ => "plainshared first ever",
    }
}

#[derive(Default)]
struct Samples {
    /// (mode, server) -> latencies
    by: std::collections::BTreeMap<(&'static str, &'static str), Vec<Duration>>,
    failures: usize,
}

fn quantile(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// One gateway in `mode`, `n_cold` first calls and `n_calls` per-call calls per server.
async fn round(
    lab: &HostLab,
    audit: &std::path::Path,
    mode: &'static str,
    n_cold: usize,
    n_calls: usize,
    out: &mut Samples,
) {
    let scope = Scope::new(&format!("bench{mode}"));
    let text = match mode {
        "sidecar" => sidecar_policy(lab, audit, &servers()),
        _ => policy(lab, audit, &servers()),
    };
    let started = Instant::now();
    // Not waiting for `/ready`, which waits for every server: each server's first answer is
    // timed on its own.
    let mut gw = Gateway::spawn(
        &text,
        &[
            ("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str()),
            ("PORTCULLIS_INSTANCE", scope.name.as_str()),
            ("RUST_LOG", "warn"),
        ],
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    // From the gateway's start until each server first answers, all four polled at once: the
    // gateway starts every server at boot to read its catalog (in sidecar mode a server with
    // rules waits for its agent's verified table first).
    let firsts = futures_util::future::join_all(SERVERS.map(|server| {
        let c = &c;
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while call(c, server, 0).await.is_err() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (server, started.elapsed())
        }
    }))
    .await;
    for (server, d) in firsts {
        out.by
            .entry((mode, first_ever(server)))
            .or_default()
            .push(d);
    }
    for server in SERVERS {
        // Warm-up: the image is in the page cache.
        for i in 0..2 {
            if let Err(e) = call(&c, server, i).await {
                eprintln!("[bench] {mode} {server}: warm-up call failed: {e}");
            }
        }
        let n = if server.ends_with("cold") {
            n_cold
        } else {
            n_calls
        };
        for i in 0..n {
            match call(&c, server, i).await {
                Ok(d) => out.by.entry((mode, server)).or_default().push(d),
                Err(e) => {
                    out.failures += 1;
                    eprintln!("[bench] {mode} {server}: {e}");
                }
            }
        }
    }
    let status = gw.terminate(Duration::from_secs(60));
    if !status.success() {
        eprintln!("[bench] {mode} gateway exit: {status}");
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("egress_modes bench: skipped outside `cargo bench --bench egress_modes`");
        return;
    }
    let Some(Setup {
        _turn,
        scope: _,
        rt: _,
        lab,
        zone: _,
        _audit_dir,
        audit,
        tag: _,
    }) = setup("benchmodes").await
    else {
        eprintln!("egress_modes bench skipped: it needs root, nft and dockerd (message above)");
        return;
    };
    build_agent_image();
    let rounds = env_num("EGRESS_BENCH_ROUNDS", 3);
    let n_cold = env_num("EGRESS_BENCH_COLD", 15);
    let n_calls = env_num("EGRESS_BENCH_CALLS", 300);
    let load_before = load();
    let mut s = Samples::default();
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            ["host", "sidecar"]
        } else {
            ["sidecar", "host"]
        };
        for mode in order {
            eprintln!("[bench] round {} of {rounds}: {mode} mode", r + 1);
            round(&lab, &audit, mode, n_cold, n_calls, &mut s).await;
        }
    }
    let load_after = load();

    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Egress modes: first call and per-call cost\n\n`cargo bench --bench egress_modes`: {rounds} rounds, {n_cold} first calls and {n_calls} calls per server, mode and round; load average before {load_before}, after {load_after}.\nBaseline: the same server without egress rules, through the same gateway, same round.\n\n| mode | case | n | median ms | p99 ms | median x baseline | p99 x baseline |\n|---|---|---|---|---|---|---|"
    );
    for mode in ["host", "sidecar"] {
        for (case, server, base) in [
            (
                "gateway start to the server's first answer",
                "shared first ever",
                "plainshared first ever",
            ),
            ("first call of a per-call instance", "cold", "plaincold"),
            ("per call", "shared", "plainshared"),
        ] {
            let v = s.by.get(&(mode, server)).cloned().unwrap_or_default();
            let b = s.by.get(&(mode, base)).cloned().unwrap_or_default();
            let (m, p) = (quantile(&v, 0.5), quantile(&v, 0.99));
            let (bm, bp) = (quantile(&b, 0.5), quantile(&b, 0.99));
            let ratio = |x: Duration, y: Duration| {
                if y.is_zero() {
                    0.0
                } else {
                    x.as_secs_f64() / y.as_secs_f64()
                }
            };
            let _ = writeln!(
                md,
                "| {mode} | {case} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                v.len(),
                ms(m),
                ms(p),
                ratio(m, bm),
                ratio(p, bp)
            );
        }
    }
    for mode in ["host", "sidecar"] {
        for server in ["plaincold", "plainshared"] {
            let v = s.by.get(&(mode, server)).cloned().unwrap_or_default();
            let _ = writeln!(
                md,
                "| {mode} | baseline {server} | {} | {:.2} | {:.2} | 1.00 | 1.00 |",
                v.len(),
                ms(quantile(&v, 0.5)),
                ms(quantile(&v, 0.99))
            );
        }
    }
    let _ = writeln!(md, "\nFailed calls: {}.", s.failures);
    println!("{md}");
    let path = common::repo_root().join("bench/results/egress_modes.md");
    match std::fs::write(&path, &md) {
        Ok(()) => eprintln!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
