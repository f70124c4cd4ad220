//! Latency of a tools/call per lifecycle, through the real gateway binary and a real dockerd:
//!
//!   shared     one long-lived container serves every call (the baseline)
//!   warm       per-call, warm pool of 4 pre-started, pre-initialized containers
//!   cold       per-call, no pool: every call creates, starts and initializes a container
//!
//! All three servers run behind one gateway in the same run. Each case is measured sequentially
//! and at concurrency 8; the warm case also "paced" (a pause between calls lets the pool refill,
//! which is what the pool is for: hiding start-up from calls that do not arrive faster than it
//! refills). Prints a table and writes bench/results/lifecycle.json.
//!
//!   cargo bench --bench lifecycle            (LIFECYCLE_BENCH_N=200 calls per measurement)
//!
//! Skips with a message when Docker is not usable (see tests/common/docker.rs).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::client::{Mcp, LATEST};
use common::docker::{containers_in, runtime, Scope, FIXTURE_IMAGE};
use common::Gateway;
use serde_json::{json, Value};

const CONCURRENCY: usize = 8;
const POOL: usize = 4;
const WARMUP: usize = 3;

struct Row {
    case: &'static str,
    mode: String,
    latencies: Vec<Duration>,
    failures: usize,
    wall: Duration,
}

impl Row {
    fn quantile(&self, q: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort();
        if v.is_empty() {
            return Duration::ZERO;
        }
        // Nearest rank.
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    }
    fn median(&self) -> Duration {
        self.quantile(0.5)
    }
    fn p99(&self) -> Duration {
        self.quantile(0.99)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn policy() -> String {
    format!(
        r#"
[gateway]
listen = "127.0.0.1:0"
naming = "prefix"
request_timeout = "300s"

[servers.shared]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
lifecycle = "shared"
limits = {{ memory = "64m", pids = 32 }}

[servers.warm]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
lifecycle = "per-call"
pool = {POOL}
startup_timeout = "120s"
limits = {{ memory = "64m", pids = 32 }}

[servers.cold]
runtime = "docker"
image = "{FIXTURE_IMAGE}"
lifecycle = "per-call"
pool = 0
startup_timeout = "120s"
limits = {{ memory = "64m", pids = 32 }}
"#
    )
}

/// One timed tools/call; `Ok(latency)` when it returned a non-error result.
async fn call(c: &Mcp, server: &str, i: usize) -> Result<Duration, String> {
    let text = format!("b{i}");
    let body = json!({"jsonrpc":"2.0","id":i + 1,"method":"tools/call",
        "params":{"name": format!("{server}__echo"), "arguments":{"text": text}}});
    let t0 = Instant::now();
    let r = c.post(&body).await;
    let took = t0.elapsed();
    if r.status != 200 {
        return Err(format!("HTTP {}: {}", r.status, r.body));
    }
    let m: Value = r.message();
    if m["result"]["content"][0]["text"].as_str() == Some(text.as_str()) {
        Ok(took)
    } else {
        Err(m.to_string())
    }
}

async fn measure(
    session: &Mcp,
    case: &'static str,
    n: usize,
    concurrency: usize,
    pause: Duration,
) -> Row {
    let mode = match (concurrency, pause.is_zero()) {
        (1, true) => "sequential".to_owned(),
        (1, false) => format!("paced {} ms", pause.as_millis()),
        (c, _) => format!("concurrency {c}"),
    };
    eprintln!("[bench] {case}: {n} calls, {mode}");
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(n);
    let mut failures = 0;
    let mut first_failure = None;
    if concurrency == 1 {
        for i in 0..n {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            match call(session, case, i).await {
                Ok(d) => latencies.push(d),
                Err(e) => {
                    failures += 1;
                    first_failure.get_or_insert(e);
                }
            }
        }
    } else {
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let permits = permits.clone();
            let mut c = Mcp::new(&session.url);
            c.http = session.http.clone();
            c.session = session.session.clone();
            c.protocol = session.protocol.clone();
            set.spawn(async move {
                let _p = permits.acquire_owned().await;
                call(&c, case, i).await
            });
        }
        while let Some(r) = set.join_next().await {
            match r.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(d) => latencies.push(d),
                Err(e) => {
                    failures += 1;
                    first_failure.get_or_insert(e);
                }
            }
        }
    }
    if let Some(e) = first_failure {
        eprintln!("[bench] {case} {mode}: {failures} failed calls, first: {e}");
    }
    Row {
        case,
        mode,
        latencies,
        failures,
        wall: start.elapsed(),
    }
}

/// Waits until the warm server's pool has `POOL` containers and they had time to initialize.
async fn wait_for_pool(rt: &portcullis::sandbox::docker::DockerRuntime, scope: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = containers_in(rt, scope)
            .await
            .values()
            .filter(|l| {
                l.get("io.portcullis.server").map(String::as_str) == Some("warm")
                    && l.get("io.portcullis.purpose").map(String::as_str) == Some("pool")
            })
            .count();
        if n >= POOL || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() {
    // `cargo test --all-targets` (make test, CI) runs bench binaries without `--bench`: there
    // this one only proves it builds (it took CI one to two minutes, and overwrote the
    // committed figures with a loaded machine's).
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("lifecycle bench: skipped outside `cargo bench --bench lifecycle`");
        return;
    }
    let n: usize = std::env::var("LIFECYCLE_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let scope = Scope::new("bench");
    let Some(rt) = runtime(&scope.name).await else {
        eprintln!("lifecycle benchmark skipped: Docker is not usable (see the message above)");
        return;
    };
    let mut gw = Gateway::start_with(
        &policy(),
        &[
            ("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str()),
            ("RUST_LOG", "warn"),
        ],
    );
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    for case in ["shared", "warm", "cold"] {
        for i in 0..WARMUP {
            if let Err(e) = call(&c, case, i).await {
                eprintln!("[bench] warm-up call to {case} failed: {e}");
            }
        }
    }
    wait_for_pool(&rt, &scope.name).await;

    let mut rows = Vec::new();
    rows.push(measure(&c, "shared", n, 1, Duration::ZERO).await);
    rows.push(measure(&c, "cold", n, 1, Duration::ZERO).await);
    let cold_median = rows[1].median();
    wait_for_pool(&rt, &scope.name).await;
    rows.push(measure(&c, "warm", n, 1, Duration::ZERO).await);
    // Paced: one call per (cold start x 2), slower than the pool refills.
    let pause = (cold_median * 2).max(Duration::from_millis(100));
    wait_for_pool(&rt, &scope.name).await;
    rows.push(measure(&c, "warm", (n / 4).max(10), 1, pause).await);
    rows.push(measure(&c, "shared", n, CONCURRENCY, Duration::ZERO).await);
    rows.push(measure(&c, "cold", n, CONCURRENCY, Duration::ZERO).await);
    wait_for_pool(&rt, &scope.name).await;
    rows.push(measure(&c, "warm", n, CONCURRENCY, Duration::ZERO).await);

    let status = gw.terminate(Duration::from_secs(120));
    let left = containers_in(&rt, &scope.name).await.len();

    let base = |mode_conc: bool| {
        rows.iter()
            .find(|r| r.case == "shared" && r.mode.starts_with("concurrency") == mode_conc)
            .map(|r| (r.median(), r.p99()))
            .unwrap_or_default()
    };
    println!();
    println!(
        "{:<8} {:<18} {:>5} {:>6} {:>11} {:>11} {:>9} {:>9} {:>9}",
        "case", "mode", "n", "fail", "median ms", "p99 ms", "med x(a)", "p99 x(a)", "calls/s"
    );
    let mut out = Vec::new();
    for r in &rows {
        let (bm, bp) = base(r.mode.starts_with("concurrency"));
        let rm = ms(r.median()) / ms(bm).max(f64::EPSILON);
        let rp = ms(r.p99()) / ms(bp).max(f64::EPSILON);
        let rate = r.latencies.len() as f64 / r.wall.as_secs_f64().max(f64::EPSILON);
        println!(
            "{:<8} {:<18} {:>5} {:>6} {:>11.2} {:>11.2} {:>9.1} {:>9.1} {:>9.1}",
            r.case,
            r.mode,
            r.latencies.len() + r.failures,
            r.failures,
            ms(r.median()),
            ms(r.p99()),
            rm,
            rp,
            rate
        );
        out.push(json!({
            "case": r.case,
            "mode": r.mode,
            "calls": r.latencies.len() + r.failures,
            "failures": r.failures,
            "median_ms": ms(r.median()),
            "p99_ms": ms(r.p99()),
            "median_ratio_to_shared": rm,
            "p99_ratio_to_shared": rp,
            "calls_per_second": rate,
        }));
    }
    println!("\ngateway exit after SIGTERM: {status}; containers left in the scope: {left}");
    let engine = rt.engine().await.map(|e| e.version).unwrap_or_default();
    let report = json!({
        "benchmark": "lifecycle",
        "calls_per_measurement": n,
        "concurrency": CONCURRENCY,
        "pool": POOL,
        "engine": engine,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "baseline": "shared, same mode (sequential or concurrent)",
        "results": out,
        "containers_left_after_sigterm": left,
    });
    let dir = common::repo_root().join("bench/results");
    let path = dir.join("lifecycle.json");
    let written = std::fs::create_dir_all(&dir).and_then(|_| {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&report).unwrap_or_default() + "\n",
        )
    });
    match written {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("could not write {}: {e}", path.display()),
    }
}
