//! `cargo bench --bench big_answers`: the gateway's peak memory while it relays large answers.
//!
//! For each upstream transport (stdio process, remote Streamable HTTP) the bench echo server's
//! `big` tool answers with BENCH_BIG_MIB MiB (default 60). One row makes a single call (the
//! baseline), the next BENCH_BIG_CALLS (default 32) concurrent calls, each from its own session.
//! A fresh gateway serves each row; its peak resident memory (VmHWM) is compared with its
//! resident memory just before the calls, and the difference is expressed in copies of one
//! answer per call in flight: the figure README.md states a bound for.
//!
//! The clients read each answer as it streams and keep only its length, so that what is
//! measured is the gateway alone. Writes bench/results/big_answers.md.

#[path = "../tests/common/mod.rs"]
mod common;
// Shared with the load bench, which uses all of it.
#[allow(dead_code)]
#[path = "load/procs.rs"]
mod procs;

use std::time::{Duration, Instant};

use serde_json::json;

const MIB: u64 = 1 << 20;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `VmRSS` or `VmHWM` of `pid`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Row {
    label: String,
    calls: u64,
    answer: u64,
    wall: Duration,
    idle_kib: u64,
    peak_kib: u64,
}

impl Row {
    /// Memory above idle, in answers per call in flight.
    fn copies(&self) -> f64 {
        let extra = self.peak_kib.saturating_sub(self.idle_kib) as f64 * 1024.0;
        extra / (self.calls as f64 * self.answer as f64)
    }

    fn line(&self) -> String {
        format!(
            "| {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.2} |",
            self.label,
            self.calls,
            self.answer / MIB,
            self.wall.as_secs_f64(),
            self.idle_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0,
            self.copies()
        )
    }
}

/// One client session: initialize, then one `big` call whose answer is read as it streams.
async fn session(url: &str) -> Result<(reqwest::Client, String), String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"bench","version":"1"}}});
    let r = http
        .post(url)
        .header("accept", "application/json")
        .json(&init)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let sid = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .ok_or("no session id")?
        .to_owned();
    let _ = r.bytes().await;
    let note = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    let _ = http
        .post(url)
        .header("accept", "application/json")
        .header("mcp-session-id", &sid)
        .json(&note)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok((http, sid))
}

async fn big_call(
    http: reqwest::Client,
    url: String,
    sid: String,
    bytes: u64,
) -> Result<u64, String> {
    let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
        "params":{"name":"big","arguments":{"bytes":bytes}}});
    let mut r = http
        .post(&url)
        .header("accept", "application/json")
        .header("mcp-session-id", &sid)
        .timeout(Duration::from_secs(600))
        .json(&call)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let mut total = 0u64;
    let mut head = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        if head.len() < 64 {
            head.extend_from_slice(&chunk[..chunk.len().min(64)]);
        }
        total += chunk.len() as u64;
    }
    if total < bytes || !head.starts_with(br#"{"jsonrpc":"2.0","id":1,"result""#) {
        return Err(format!(
            "not the answer: {total} bytes starting {}",
            String::from_utf8_lossy(&head)
        ));
    }
    Ok(total)
}

async fn row(label: &str, policy: &str, calls: u64, answer: u64) -> Result<Row, String> {
    let gw = common::Gateway::start_with(policy, &[("RUST_LOG", "warn")]);
    let pid = gw.child.id();
    let mut sessions = Vec::new();
    for _ in 0..calls {
        sessions.push(session(&gw.url).await?);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kib = status_kib(pid, "VmRSS:");
    let started = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|(http, sid)| tokio::spawn(big_call(http, gw.url.clone(), sid, answer)))
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    let wall = started.elapsed();
    let peak_kib = status_kib(pid, "VmHWM:");
    let r = Row {
        label: label.to_owned(),
        calls,
        answer,
        wall,
        idle_kib,
        peak_kib,
    };
    eprintln!("[bench] {}", r.line());
    Ok(r)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo test --all-targets` runs bench binaries without `--bench`: prove it builds only.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("big_answers bench: skipped outside `cargo bench --bench big_answers`");
        return;
    }
    if let Err(e) = run().await {
        eprintln!("\n[bench] FAILED: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let answer = env_num("BENCH_BIG_MIB", 60) * MIB;
    let calls = env_num("BENCH_BIG_CALLS", 32);
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = procs::free_port();
    let mut cmd = std::process::Command::new(procs::echo_bin());
    cmd.args(["--http", &format!("127.0.0.1:{port}"), "--big"]);
    let mut echo = procs::Proc::spawn("echo upstream", cmd, &dir.path().join("echo.log"))?;
    procs::wait_port(&mut echo, port, Duration::from_secs(10))?;
    let url = format!("http://127.0.0.1:{port}/mcp");
    let base = "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nenabled = false\n";
    let stdio = format!(
        "{base}\n[servers.echo]\nruntime = \"process\"\ncommand = \"{}\"\nargs = [\"--stdio\", \"--big\"]\n",
        procs::echo_bin().display()
    );
    let remote = format!(
        "{base}\n[servers.echo]\nruntime = \"remote\"\nurl = \"{}\"\negress = {{ allow = [\"127.0.0.1/32:{port}\"] }}\n",
        url
    );
    let mut rows = Vec::new();
    for (name, policy) in [("stdio process", &stdio), ("remote HTTP", &remote)] {
        rows.push(row(name, policy, 1, answer).await?);
        rows.push(row(name, policy, calls, answer).await?);
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut md = format!(
        "Peak memory of the gateway relaying large answers (`cargo bench --bench big_answers`). \
         Load average before / after: {} / {}.\n\n\
         | upstream | calls at once | answer MiB | wall s | RSS before MiB | peak RSS MiB | copies per call in flight |\n\
         |---|--:|--:|--:|--:|--:|--:|\n",
        load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        load_after.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    );
    for r in &rows {
        md.push_str(&r.line());
        md.push('\n');
    }
    md.push_str(
        "\n`copies per call in flight` = (peak RSS - RSS before) / (calls x answer size); \
         the single-call rows are the baseline of the same run.\n",
    );
    let out = common::repo_root().join("bench/results/big_answers.md");
    std::fs::write(&out, &md).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("{md}");
    Ok(())
}
