//! The stderr flood scenario shared by the process and the Docker tests: a server floods its
//! stderr while a neighbour answers calls; what reached the gateway's log, /metrics, the
//! gateway's RSS and the neighbour's latency are measured in the same run.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::client::{tool_text, Mcp, LATEST};
use crate::common::{http_get, repo_root, Gateway};

/// The budget the scenario's policies set: `{ quota = "50/s", burst = 100 }`.
pub const RATE: u64 = 50;
pub const BURST: u64 = 100;
pub const LOG_RATE: &str = r#"{ quota = "50/s", burst = 100 }"#;

pub fn noisy_script() -> PathBuf {
    repo_root().join("tests/servers/noisy_stderr.py")
}

/// `portcullis_server_stderr_lines_total` of `server` by outcome: (forwarded, suppressed).
pub fn stderr_counters(gw: &Gateway, server: &str) -> (u64, u64) {
    let (status, body) = http_get(&format!("{}/metrics", gw.base)).expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    let value = |outcome: &str| {
        let series = format!(
            "portcullis_server_stderr_lines_total{{server=\"{server}\",outcome=\"{outcome}\"}} "
        );
        body.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |v| v.trim().parse().expect("a count"))
    };
    (value("forwarded"), value("suppressed"))
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn neighbour_calls(client: &mut Mcp, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let text = format!("ping {i}");
        let t = Instant::now();
        let r = client
            .call_tool("quiet__echo", json!({ "text": text }))
            .await;
        out.push(t.elapsed());
        assert_eq!(tool_text(&r), text, "{r}");
    }
    out
}

/// The numbers of one flood, for the assertions and the report.
#[derive(Debug)]
pub struct Flood {
    pub lines: u64,
    pub seconds: f64,
    pub forwarded: u64,
    pub suppressed: u64,
    pub logged: u64,
    pub summaries: Vec<u64>,
    pub rss_before_kib: u64,
    pub rss_max_kib: u64,
    pub quiet_p50: Duration,
    pub flood_p50: Duration,
}

/// Server `noisy` writes `lines` lines of 300 bytes to its stderr; server `quiet` (a fixture)
/// is called before and during the flood.
pub async fn flood(gw: &Gateway, lines: u64) -> Flood {
    let mut client = Mcp::new(&gw.url);
    client.initialize(LATEST).await;
    // Warm-up, then the neighbour's latency without a flood.
    neighbour_calls(&mut client, 10).await;
    let quiet = neighbour_calls(&mut client, 60).await;
    let pid = gw.child.id();
    let rss_before_kib = rss_kib(pid);
    let log_before = gw.stderr().len();

    let start = Instant::now();
    let r = client
        .call_tool("noisy__flood", json!({ "lines": lines, "size": 300 }))
        .await;
    assert_eq!(tool_text(&r), "flooding", "{r}");
    let during = neighbour_calls(&mut client, 60).await;
    let mut rss_max_kib = rss_kib(pid);
    // Every line read: the flood plus its "flood done" line.
    let limit = Duration::from_secs(240);
    loop {
        rss_max_kib = rss_max_kib.max(rss_kib(pid));
        let (f, s) = stderr_counters(gw, "noisy");
        // A gateway without the counters (before the fix) logs the last line instead.
        if f + s > lines || gw.stderr()[log_before..].contains("flood done") {
            break;
        }
        assert!(
            start.elapsed() < limit,
            "the gateway read {} of {} lines within {limit:?}",
            f + s,
            lines + 1
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let seconds = start.elapsed().as_secs_f64();
    let (forwarded, suppressed) = stderr_counters(gw, "noisy");
    // The last summary comes at most one interval (5 s) after the flood.
    let summaries = |log: &str| -> Vec<u64> {
        log.lines()
            .filter(|l| l.contains("counted, not logged") && l.contains("server=noisy"))
            .map(|l| {
                l.split_once("suppressed=")
                    .and_then(|(_, v)| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no count in {l}"))
            })
            .collect()
    };
    let waited = Instant::now();
    let mut reported = summaries(&gw.stderr()[log_before..]);
    while reported.iter().sum::<u64>() < suppressed && waited.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
        reported = summaries(&gw.stderr()[log_before..]);
    }
    let log = gw.stderr();
    let logged = log[log_before..]
        .lines()
        .filter(|l| l.contains("flood line ") || l.contains("flood done"))
        .count() as u64;
    Flood {
        lines,
        seconds,
        forwarded,
        suppressed,
        logged,
        summaries: reported,
        rss_before_kib,
        rss_max_kib,
        quiet_p50: median(quiet),
        flood_p50: median(during),
    }
}

/// What a user would notice: the log holds at most the budget plus the summaries, every line
/// is counted, the gateway's memory stays flat and the neighbour keeps answering about as fast.
pub fn assert_bounded(f: &Flood) {
    eprintln!("flood figures: {f:#?}");
    assert_eq!(
        f.forwarded + f.suppressed,
        f.lines + 1,
        "every line is counted"
    );
    let budget = BURST + (RATE as f64 * (f.seconds + 1.0)).ceil() as u64;
    assert!(
        f.logged <= budget,
        "{} of {} stderr lines reached the gateway's log; the budget allows {budget} in {:.1} s",
        f.logged,
        f.lines,
        f.seconds
    );
    assert_eq!(
        f.logged, f.forwarded,
        "the log holds what /metrics counts as forwarded"
    );
    assert!(
        f.summaries.len() as f64 <= f.seconds / 5.0 + 2.0,
        "one summary per 5 s at most: {:?} in {:.1} s",
        f.summaries,
        f.seconds
    );
    assert_eq!(
        f.summaries.iter().sum::<u64>(),
        f.suppressed,
        "the summaries report every suppressed line"
    );
    let growth = f.rss_max_kib.saturating_sub(f.rss_before_kib);
    assert!(
        growth < 16 * 1024,
        "the gateway's RSS grew by {growth} KiB during the flood"
    );
    // Loose on purpose: a shared 2-core machine; a gateway that stalled on the flood (a
    // blocking log write per line, a full pipe) fails it.
    assert!(
        f.flood_p50 <= f.quiet_p50 * 5 + Duration::from_millis(50),
        "the neighbour's median call took {:?} during the flood, {:?} before",
        f.flood_p50,
        f.quiet_p50
    );
}
