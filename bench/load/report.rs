//! The results: one row per scenario, the figures the issue asks for (added latency, audit-on
//! throughput, ratios to the peers), the machine they came from, as JSON and as a markdown table.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::drive::Stats;

/// CPU used during the measured part: the load generator's share of all cores, and how many
/// cores the gateway and the upstream kept busy.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu {
    pub loadgen_share: f64,
    pub gateway_cores: Option<f64>,
    pub upstream_cores: Option<f64>,
}

pub struct Row {
    pub id: String,
    pub label: String,
    pub sessions: usize,
    pub stats: Stats,
    pub cpu: Cpu,
}

impl Row {
    /// The gateway's CPU time per answered call (µs): what the gateway costs regardless of how
    /// busy the machine was.
    pub fn gateway_cpu_us_per_call(&self) -> Option<f64> {
        let rate = self.stats.rate();
        self.cpu
            .gateway_cores
            .filter(|_| rate > 0.0)
            .map(|c| c / rate * 1e6)
    }

    pub fn line(&self) -> String {
        format!(
            "{:<10} {:<52} sessions {:>3}  {:>9.0} calls/s  p50 {:>8.0}us  p99 {:>8.0}us  loadgen cpu {:>3.0}%  gateway {} upstream {} cores",
            self.id,
            self.label,
            self.sessions,
            self.stats.rate(),
            self.stats.pct_us(0.5),
            self.stats.pct_us(0.99),
            self.cpu.loadgen_share * 100.0,
            opt(self.cpu.gateway_cores, 2),
            opt(self.cpu.upstream_cores, 2)
        )
    }

    fn json(&self) -> Value {
        let s = &self.stats;
        json!({
            "label": self.label,
            "sessions": self.sessions,
            "calls_ok": s.ok,
            "errors": s.errors,
            "first_error": s.first_error,
            "wall_s": s.wall.as_secs_f64(),
            "calls_per_s": s.rate(),
            "p50_us": s.pct_us(0.5),
            "p90_us": s.pct_us(0.9),
            "p99_us": s.pct_us(0.99),
            "max_us": s.max_us(),
            "loadgen_cpu_share": self.cpu.loadgen_share,
            "gateway_cpu_cores": self.cpu.gateway_cores,
            "gateway_cpu_us_per_call": self.gateway_cpu_us_per_call(),
            "upstream_cpu_cores": self.cpu.upstream_cores,
        })
    }
}

/// What else was true of the machine during the run.
pub struct Context {
    /// fdatasync latency p50 / p99 (µs) of the disk the audit log used.
    pub fsync: (f64, f64),
    /// 1-minute load average before and after the run (other work on a shared machine).
    pub load_before: f64,
    pub load_after: f64,
}

pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

pub struct Rss {
    pub sessions: usize,
    pub idle_kib: u64,
    pub loaded_kib: u64,
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    json!({
        "cpu_model": model,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "ram_gib": (mem_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": kernel,
    })
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn find<'a>(rows: &'a [Row], id: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.id == id)
}

fn ratio(a: Option<&Row>, b: Option<&Row>) -> Option<f64> {
    let (a, b) = (a?.stats.rate(), b?.stats.rate());
    (b > 0.0).then(|| a / b)
}

/// `a`'s percentile `q` over `b`'s.
fn latency_ratio(rows: &[Row], a: &str, b: &str, q: f64) -> Option<f64> {
    let (a, b) = (
        find(rows, a)?.stats.pct_us(q),
        find(rows, b)?.stats.pct_us(q),
    );
    (b > 0.0).then(|| a / b)
}

fn added(rows: &[Row], through: &str, base: &str, q: f64) -> Option<f64> {
    Some(find(rows, through)?.stats.pct_us(q) - find(rows, base)?.stats.pct_us(q))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{v:.digits$}"))
}

/// Writes latest.json and latest.md into `out`; returns the markdown.
pub fn write(
    out: &Path,
    rows: &[Row],
    rss: &Rss,
    notes: &[String],
    ctx: &Context,
) -> Result<String, String> {
    let mut scenarios = Map::new();
    for r in rows {
        scenarios.insert(r.id.clone(), r.json());
    }
    let headline = |k: &str| find(rows, k).map(|r| r.stats.rate());
    let machine = machine();
    let date = date();
    let summary = json!({
        "date": date,
        "machine": machine,
        "sessions": find(rows, "a").map(|r| r.sessions),
        "added_latency_p50_us": added(rows, "b", "a", 0.5),
        "added_latency_p90_us": added(rows, "b", "a", 0.9),
        "added_latency_p99_us": added(rows, "b", "a", 0.99),
        "added_latency_single_session_p50_us": added(rows, "b1", "a1", 0.5),
        "added_latency_single_session_p99_us": added(rows, "b1", "a1", 0.99),
        "paced_rate_calls_per_s": find(rows, "ap").map(|r| r.stats.rate()),
        "added_latency_paced_p50_us": added(rows, "bp", "ap", 0.5),
        "added_latency_paced_p99_us": added(rows, "bp", "ap", 0.99),
        "added_latency_paced_audit_on_p50_us": added(rows, "dp", "ap", 0.5),
        "added_latency_paced_audit_on_p99_us": added(rows, "dp", "ap", 0.99),
        "gateway_cpu_us_per_call": find(rows, "b").and_then(Row::gateway_cpu_us_per_call),
        "gateway_cpu_us_per_call_audit_on": find(rows, "d").and_then(Row::gateway_cpu_us_per_call),
        "throughput_calls_per_s_direct": headline("a"),
        "throughput_calls_per_s_audit_off": headline("b"),
        "throughput_calls_per_s_audit_on": headline("d"),
        "throughput_calls_per_s_audit_on_stdio": headline("dc"),
        "throughput_ratio_to_direct": ratio(find(rows, "b"), find(rows, "a")),
        "throughput_ratio_audit_on_to_direct": ratio(find(rows, "d"), find(rows, "a")),
        "ratio_vs_contextforge": ratio(find(rows, "b"), find(rows, "cf")),
        "ratio_vs_contextforge_audit_on": ratio(find(rows, "d"), find(rows, "cf")),
        "ratio_vs_supergateway_stdio": ratio(find(rows, "c"), find(rows, "sg")),
        "ratio_stateless_call_to_session_call": ratio(find(rows, "cm"), find(rows, "c")),
        "ratio_stateless_list_to_session_list": ratio(find(rows, "em"), find(rows, "e")),
        "stateless_list_calls_per_s": headline("em"),
        "dns_cached_questions_per_s": headline("qc"),
        "dns_forwarded_questions_per_s": headline("qf"),
        "dns_cached_to_forwarded_ratio": ratio(find(rows, "qc"), find(rows, "qf")),
        "neighbour_p50_ratio_dns_flood_to_quiet": latency_ratio(rows, "nf", "nq", 0.5),
        "neighbour_p99_ratio_dns_flood_to_quiet": latency_ratio(rows, "nf", "nq", 0.99),
        "gateway_rss_mib_idle": rss.idle_kib as f64 / 1024.0,
        "gateway_rss_mib_at_sessions": rss.loaded_kib as f64 / 1024.0,
        "rss_sessions": rss.sessions,
        "fsync_p50_us": ctx.fsync.0,
        "fsync_p99_us": ctx.fsync.1,
        "load_average_before": ctx.load_before,
        "load_average_after": ctx.load_after,
        "notes": notes,
        "scenarios": scenarios,
    });
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    std::fs::write(out.join("latest.json"), text + "\n")
        .map_err(|e| format!("{}: {e}", out.display()))?;

    let mut md = String::new();
    let m = &summary["machine"];
    let _ = writeln!(
        md,
        "Measured {} on {} ({} cores, {} GiB RAM, Linux {}); load generator, gateways and upstreams share those cores. Load average before / after the run: {:.1} / {:.1}; fdatasync of a 320-byte append on the audit disk right before (d): p50 {:.0} µs, p99 {:.0} µs.\n",
        date,
        m["cpu_model"].as_str().unwrap_or("?"),
        m["cores"],
        m["ram_gib"],
        m["kernel"].as_str().unwrap_or("?"),
        ctx.load_before,
        ctx.load_after,
        ctx.fsync.0,
        ctx.fsync.1
    );
    let _ = writeln!(
        md,
        "| scenario | sessions | calls/s | vs direct | p50 µs | p90 µs | p99 µs | max µs | errors | load gen CPU | gateway cores | gateway CPU µs/call |"
    );
    let _ = writeln!(md, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let base = find(rows, "a");
    let base1 = find(rows, "a1");
    let base_paced = find(rows, "ap");
    for r in rows {
        // DNS questions are not calls: no ratio to the direct calls.
        let b = if r.id.starts_with('q') {
            None
        } else if r.sessions == 1 {
            base1
        } else if r.label.contains(", paced ") {
            base_paced
        } else {
            base
        };
        let s = &r.stats;
        let _ = writeln!(
            md,
            "| ({}) {} | {} | {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0}% | {} | {} |",
            r.id,
            r.label,
            r.sessions,
            s.rate(),
            opt(ratio(Some(r), b), 2),
            s.pct_us(0.5),
            s.pct_us(0.9),
            s.pct_us(0.99),
            s.max_us(),
            s.errors,
            r.cpu.loadgen_share * 100.0,
            opt(r.cpu.gateway_cores, 2),
            opt(r.gateway_cpu_us_per_call(), 1)
        );
    }
    let f = |k: &str| opt(summary[k].as_f64(), 1);
    let f2 = |k: &str| opt(summary[k].as_f64(), 2);
    let _ = writeln!(md);
    let _ = writeln!(md, "| figure | value | target |");
    let _ = writeln!(md, "|---|--:|--:|");
    let _ = writeln!(
        md,
        "| added latency p50, 32 sessions closed loop (b − a) | {} µs | ≤ 100 µs |",
        f("added_latency_p50_us")
    );
    let _ = writeln!(
        md,
        "| added latency p99, 32 sessions closed loop (b − a) | {} µs | ≤ 1000 µs |",
        f("added_latency_p99_us")
    );
    let _ = writeln!(
        md,
        "| added latency p50 / p99, 32 sessions paced at {} calls/s (bp − ap) | {} / {} µs | ≤ 100 / ≤ 1000 µs |",
        opt(summary["paced_rate_calls_per_s"].as_f64(), 0),
        f("added_latency_paced_p50_us"),
        f("added_latency_paced_p99_us")
    );
    let _ = writeln!(
        md,
        "| the same with audit on (dp − ap) | {} / {} µs | |",
        f("added_latency_paced_audit_on_p50_us"),
        f("added_latency_paced_audit_on_p99_us")
    );
    let _ = writeln!(
        md,
        "| added latency p50 / p99, 1 session (b1 − a1) | {} / {} µs | |",
        f("added_latency_single_session_p50_us"),
        f("added_latency_single_session_p99_us")
    );
    let _ = writeln!(
        md,
        "| gateway CPU per call, audit off / on (b, d) | {} / {} µs | |",
        f("gateway_cpu_us_per_call"),
        f("gateway_cpu_us_per_call_audit_on")
    );
    let _ = writeln!(
        md,
        "| throughput, audit on: remote upstream (d) / stdio process (dc) | {} / {} calls/s | ≥ 20000 |",
        opt(summary["throughput_calls_per_s_audit_on"].as_f64(), 0),
        opt(summary["throughput_calls_per_s_audit_on_stdio"].as_f64(), 0)
    );
    let _ = writeln!(
        md,
        "| Portcullis / ContextForge (b / cf; audit on: d / cf) | {}× ({}×) | ≥ 10× |",
        f2("ratio_vs_contextforge"),
        f2("ratio_vs_contextforge_audit_on")
    );
    let _ = writeln!(
        md,
        "| Portcullis / supergateway, stdio (c / sg) | {}× | |",
        f2("ratio_vs_supergateway_stdio")
    );
    let _ = writeln!(
        md,
        "| 2026-07-28 stateless tools/call / session tools/call, stdio (cm / c) | {}× | ≥ 1× |",
        f2("ratio_stateless_call_to_session_call")
    );
    let _ = writeln!(
        md,
        "| 2026-07-28 tools/list from the cache / session tools/list, 50 x 20 tools (em / e) | {}× ({} calls/s) | ≥ 5× the (e) of before the cache (9279 calls/s on 2026-11-25) |",
        f2("ratio_stateless_list_to_session_list"),
        opt(summary["stateless_list_calls_per_s"].as_f64(), 0)
    );
    let _ = writeln!(
        md,
        "| DNS questions/s from the cache / forwarded (qc / qf) | {} / {} ({}×) | |",
        opt(summary["dns_cached_questions_per_s"].as_f64(), 0),
        opt(summary["dns_forwarded_questions_per_s"].as_f64(), 0),
        f2("dns_cached_to_forwarded_ratio")
    );
    let _ = writeln!(
        md,
        "| neighbour's tools/call during a DNS flood / quiet, p50 / p99 (nf / nq) | {}× / {}× | p99 ≤ 1.5× |",
        f2("neighbour_p50_ratio_dns_flood_to_quiet"),
        f2("neighbour_p99_ratio_dns_flood_to_quiet")
    );
    let _ = writeln!(
        md,
        "| gateway RSS idle / with {} open sessions | {:.1} / {:.1} MiB | ≤ 50 MiB |",
        rss.sessions,
        rss.idle_kib as f64 / 1024.0,
        rss.loaded_kib as f64 / 1024.0
    );
    for n in notes {
        let _ = writeln!(md, "\nNote: {n}");
    }
    std::fs::write(out.join("latest.md"), &md).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(md)
}
