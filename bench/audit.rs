//! `cargo bench --bench audit`: append throughput per fsync mode under 64 concurrent appenders,
//! and `verify` speed. Figures are printed, not asserted. The log is written under the package
//! directory (override with PORTCULLIS_BENCH_DIR) so fsync hits a real disk, not a tmpfs.

use std::time::{Duration, Instant};

use portcullis::audit::{verify, AuditConfig, AuditEvent, AuditLog, Kind, Outcome};
use portcullis::policy::FsyncMode;

fn event(i: u64) -> AuditEvent {
    AuditEvent::new(Kind::Call)
        .client("bench")
        .session(format!("s{}", i % 64))
        .server("github")
        .tool("list_prs")
        .method("tools/call")
        .arguments(&format!("{{\"i\":{i}}}"))
        .outcome(Outcome::Ok)
        .latency_us(1234)
        .bytes_in(321)
        .bytes_out(4321)
}

fn run(
    label: &str,
    mode: FsyncMode,
    appenders: u64,
    total: u64,
) -> (f64, std::path::PathBuf, tempfile::TempDir) {
    let base = std::env::var("PORTCULLIS_BENCH_DIR").unwrap_or_else(|_| ".".into());
    let tmp = tempfile::tempdir_in(base).expect("tempdir");
    let dir = tmp.path().join("log");
    let mut cfg = AuditConfig::new(&dir);
    cfg.fsync = mode;
    cfg.checkpoint_interval = Duration::from_secs(60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let elapsed = rt.block_on(async {
        let log = AuditLog::open(&cfg, None).expect("open");
        let start = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..appenders {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = t;
                while i < total {
                    log.append(event(i)).await.expect("append");
                    i += appenders;
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let e = start.elapsed();
        log.shutdown().await.expect("shutdown");
        e
    });
    let rate = total as f64 / elapsed.as_secs_f64();
    println!(
        "append fsync={:<6} appenders={appenders:<3} records={total:<7} {:>9.0} records/s  ({:.1} us/record)",
        mode.as_str(),
        rate,
        elapsed.as_secs_f64() * 1e6 / total as f64
    );
    let _ = label;
    (rate, dir, tmp)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this too, so stay small then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let scale = if quick { 1 } else { 10 };
    run("group", FsyncMode::Group, 64, 10_000 * scale);
    run("group1", FsyncMode::Group, 1, 200 * scale);
    run("always", FsyncMode::Always, 64, 200 * scale);
    let (_, dir, _keep) = run("none", FsyncMode::None, 64, 20_000 * scale);
    let start = Instant::now();
    let r = verify::verify_dir(&dir, None).expect("verify");
    let e = start.elapsed();
    println!(
        "verify {} records in {:.2}s: {:.0} records/s",
        r.records,
        e.as_secs_f64(),
        r.records as f64 / e.as_secs_f64()
    );
}
