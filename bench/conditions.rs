//! Gateway CPU per tool call with three `when` rules against none, same run, through the real
//! gateway and our fixture server (process runtime, audit off): the gateway process's user +
//! system CPU time (`/proc/PID/stat`) over N calls, divided by N. Rows alternate (none, rules,
//! none, rules) so that a busy machine weighs on both alike; the best of each pair is reported.
//!
//! Then the access decision alone, in process (no HTTP, no server): nanoseconds per decision
//! with the same three rules, on the bench's small arguments and on large ones (a 64 KiB text
//! and a 1000-entry list the conditions do not look at), which the tick-resolution CPU figure
//! above cannot resolve; beside each, the same rules made to read the arguments whole, which
//! is what converting only the selected fields saves.
//!
//!   cargo bench --bench conditions        (COND_BENCH_CALLS=4000, COND_BENCH_CONCURRENCY=16)

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use common::client::{Mcp, LATEST};
use common::{env_num, Gateway};
use portcullis::access::{Decision, Question, Rules, Target};
use serde_json::{json, Value};

/// Three conditions that each look at the arguments, all true for the bench's call.
const RULES: &str = "[clients.anonymous]\n\n[[clients.anonymous.rules]]\nallow = [\"fixture__*\"]\nwhen = 'args.text.startsWith(\"ls \") && size(args.text) < 4096'\n\n[[clients.anonymous.rules]]\ndeny = [\"fixture__echo\"]\nwhen = 'args.branch in [\"main\", \"release\"]'\n\n[[clients.anonymous.rules]]\ndeny = [\"fixture__*\"]\nwhen = 'has(args.n) && args.n > 100'\n";

/// Nanoseconds per access decision of `echo` with `args` under `rules` ([`RULES`] or
/// [`whole_args`]).
fn decision_ns(rules: &str, args: &Value, n: usize) -> f64 {
    let src = format!("[servers.fixture]\nruntime = \"process\"\ncommand = \"x\"\n{rules}");
    let policy = portcullis::policy::parse(&src, "bench.toml").expect("the bench policy");
    let rules = Rules::for_client(&policy.clients["anonymous"]);
    let target = Target::Tool {
        server: "fixture",
        name: "echo",
    };
    let mut allowed = 0usize;
    let start = Instant::now();
    for _ in 0..n {
        let q = Question::new(target, "tools/call", Some(args));
        if matches!(
            std::hint::black_box(rules.decide("anonymous", None, &q)),
            Decision::Allow(_)
        ) {
            allowed += 1;
        }
    }
    let ns = start.elapsed().as_secs_f64() * 1e9 / n as f64;
    assert_eq!(allowed, n, "the bench's call must be allowed");
    ns
}

/// The gateway's CPU time so far (user + system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the stat line: 12 and 13 after the command.
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

/// `calls` tool calls at `concurrency`; calls per second and how many succeeded.
async fn run(gw: &Gateway, calls: usize, concurrency: usize) -> (f64, usize) {
    let mut c = Mcp::new(&gw.url);
    c.initialize(LATEST).await;
    let sid = c.session.clone().unwrap_or_default();
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (url, sid, next, ok) = (gw.url.clone(), sid.clone(), next.clone(), ok.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while next.fetch_add(1, Ordering::Relaxed) < calls {
                let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"ls -l /workspace/docs", "branch": "feature", "n": 3}}});
                let r = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("accept", "application/json")
                    .header("mcp-session-id", &sid)
                    .body(body.to_string())
                    .send()
                    .await;
                if r.is_ok_and(|r| r.status().is_success()) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (
        calls as f64 / start.elapsed().as_secs_f64(),
        ok.load(Ordering::Relaxed),
    )
}

#[tokio::main]
async fn main() {
    let calls = env_num("COND_BENCH_CALLS", 4000);
    let conc = env_num("COND_BENCH_CONCURRENCY", 16);
    if calls == 0 {
        decisions();
        return;
    }
    let base = "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nenabled = false\n\n[servers.fixture]\nruntime = \"process\"\ncommand = \"{fixture}\"\n";
    let rules = format!("{base}\n{RULES}");
    let mut best = [f64::MAX; 2];
    let mut rates = [0f64; 2];
    println!("\ngateway CPU per tools/call, {calls} calls at concurrency {conc}, audit off");
    println!(
        "{:<28} {:>10} {:>14} {:>6}",
        "case", "calls/s", "CPU µs/call", "ok"
    );
    for round in 0..2 {
        for (i, (name, policy)) in [
            ("no rules", base.to_owned()),
            ("three `when` rules", rules.clone()),
        ]
        .into_iter()
        .enumerate()
        {
            let gw = Gateway::start(&policy);
            let _ = run(&gw, 300, conc).await; // warm-up
            let before = cpu_seconds(gw.pid());
            let (rate, ok) = run(&gw, calls, conc).await;
            let us = (cpu_seconds(gw.pid()) - before) * 1e6 / calls as f64;
            println!(
                "{:<28} {rate:>10.0} {us:>14.1} {ok:>6}  (round {round})",
                name
            );
            if ok != calls {
                eprintln!(
                    "warning: {} of {calls} calls failed in `{name}`",
                    calls - ok
                );
            }
            if us < best[i] {
                best[i] = us;
                rates[i] = rate;
            }
        }
    }
    println!(
        "\nbest of two: no rules {:.1} µs/call ({:.0}/s), three `when` rules {:.1} µs/call ({:.0}/s): {:+.1} µs per call",
        best[0],
        rates[0],
        best[1],
        rates[1],
        best[1] - best[0]
    );
    decisions();
}

/// [`RULES`] with each condition also reading `args` whole (`size(args) >= 0`, always true): a
/// decision then converts all of the arguments, as every decision did before conditions
/// converted only the fields they select. The difference to [`RULES`] is that conversion.
fn whole_args() -> String {
    RULES.replace("'\n", " && size(args) >= 0'\n")
}

/// The decision rows (alone with `COND_BENCH_CALLS=0`).
fn decisions() {
    let n = env_num("COND_BENCH_DECISIONS", 200_000);
    let small = json!({"text": "ls -l /workspace/docs", "branch": "feature", "n": 3});
    let mut large = small.clone();
    large["content"] = json!("x".repeat(64 * 1024));
    large["paths"] = json!((0..1000)
        .map(|i| format!("/workspace/f{i}"))
        .collect::<Vec<_>>());
    println!("\nthe access decision alone, three `when` rules, {n} decisions");
    let whole = whole_args();
    assert_eq!(whole.matches("size(args) >= 0").count(), 3, "{whole}");
    println!(
        "{:<28} {:>14} {:>22}",
        "arguments", "fields read", "whole arguments read"
    );
    for (name, args) in [
        ("bench arguments", &small),
        ("+64 KiB text, 1000 paths", &large),
    ] {
        let runs = if name.starts_with('+') { n / 20 } else { n };
        // Interleaved, so that a machine's drift weighs on both alike.
        let (mut fields, mut all) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            fields = fields.min(decision_ns(RULES, args, runs.max(1)));
            all = all.min(decision_ns(&whole, args, runs.max(1)));
        }
        println!("{name:<28} {fields:>11.0} ns {all:>19.0} ns   (best of 3, ns/decision)");
    }
}
