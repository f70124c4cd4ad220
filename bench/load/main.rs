//! `make bench` (= `cargo bench --bench load`): throughput and latency of MCP `tools/call`
//! through Portcullis, against a direct baseline and against peer gateways, all in one run on
//! one machine, all on loopback.
//!
//! Scenarios (32 concurrent sessions is the headline; each is also run with 1 session, which
//! shows the per-hop latency without queueing):
//!   (a) direct to our echo upstream (Streamable HTTP)                        the baseline
//!   (b) Portcullis (runtime = remote) -> the same echo upstream, audit off
//!   (c) Portcullis -> the fixture server over stdio: process runtime, and the shared Docker
//!       container when dockerd is usable (skipped loudly otherwise)
//!   (d) (b) with the audit log on, fsync = group; (dc) the same for (c), process runtime;
//!       (dk), (dck): (d) and (dc) with the checkpoint key rotated every 60 s
//!   (e) cached tools/list and resources/list over 50 servers x 20 items, without and with
//!       client rules (bench/load/catalog.rs; BENCH_BASELINE_BIN compares with another build)
//!   (em) (e)'s tools/list as stateless 2026-07-28 requests (the page from the gateway's cache)
//!   (cm) (c) as stateless 2026-07-28 requests (no session; envelope and headers on each)
//!   peers: ContextForge -> echo upstream (compare with b); supergateway -> fixture over stdio
//!   (compare with c, process)
//!   memory: gateway RSS with 1,000 open sessions
//!   DNS (privileged, see dns.rs): questions/s from the resolver's cache (qc) vs forwarded (qf);
//!   a neighbour's tools/call quiet (nq) and while another sandbox floods DNS (nf)
//!
//! Added latency = (b) - (a) per percentile; throughput as a ratio to (a). The load generator
//! shares the CPU with everything it measures: its own CPU share is reported per scenario.
//! Writes bench/results/latest.json and bench/results/latest.md.
//!
//! (a), (b) and (d) also run paced: the same 32 sessions offered BENCH_PACED_RATE requests/s
//! in total (rows ap, bp, dp), which shows the added latency below saturation; the closed-loop
//! rows show it at saturation, where on a small machine it is mostly queueing for the CPU.
//!
//! Knobs (environment): BENCH_SESSIONS=32 BENCH_CALLS=2000 (per session) BENCH_PEER_CALLS=100
//! BENCH_RSS_SESSIONS=1000 BENCH_CF_WORKERS=2 BENCH_PACED_RATE=8000; BENCH_BASELINE_BIN=PATH
//! (catalog rows against another build too, see bench/load/catalog.rs).

mod catalog;
#[path = "../../tests/common/mod.rs"]
mod common;
mod dns;
mod drive;
mod peers;
mod procs;
mod report;

use std::time::Duration;

use drive::{Plan, Target, Work};
use report::{Cpu, Row};

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Processes whose CPU time a scenario reports, by role.
#[derive(Clone, Copy, Default)]
struct Watch {
    gateway: Option<u32>,
    upstream: Option<u32>,
}

async fn measure(
    id: &str,
    label: &str,
    target: &Target,
    plan: Plan,
    watch: Watch,
) -> Result<Row, String> {
    let me = std::process::id();
    let probe = move || {
        [
            Some(procs::cpu(me)),
            watch.gateway.map(procs::tree_cpu),
            watch.upstream.map(procs::tree_cpu),
        ]
    };
    let perf = profile(id, watch.gateway);
    let (stats, before, after) = drive::run(target, plan, &probe).await?;
    drop(perf);
    let secs = stats.wall.as_secs_f64().max(1e-9);
    let cores = |i: usize| match (before[i], after[i]) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b).as_secs_f64() / secs),
        _ => None,
    };
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let row = Row {
        id: id.to_owned(),
        label: match plan.rate {
            Some(r) => format!("{label}, paced {r:.0}/s"),
            None => label.to_owned(),
        },
        sessions: plan.sessions,
        cpu: Cpu {
            loadgen_share: cores(0).unwrap_or(0.0) / ncpu,
            gateway_cores: cores(1),
            upstream_cores: cores(2),
        },
        stats,
    };
    eprintln!("[bench] {}", row.line());
    if row.stats.errors > 0 {
        eprintln!(
            "[bench]   {} errors; first: {}",
            row.stats.errors,
            row.stats.first_error.as_deref().unwrap_or("?")
        );
    }
    Ok(row)
}

/// With `BENCH_PERF=ID,...`, samples the gateway's CPU with `perf record` (cpu-clock; this
/// machine has no hardware counters) while scenario ID runs, into `bench/results/perf-ID.data`.
fn profile(id: &str, pid: Option<u32>) -> Option<procs::Proc> {
    let wanted = std::env::var("BENCH_PERF").ok()?;
    let pid = pid?;
    if !wanted.split(',').any(|w| w == id) {
        return None;
    }
    let out = common::repo_root().join(format!("bench/results/perf-{id}.data"));
    let mut cmd = std::process::Command::new("perf");
    cmd.args(["record", "-e", "cpu-clock", "-F", "1999", "-g", "-p"])
        .arg(pid.to_string())
        .arg("-o")
        .arg(&out);
    let log = std::env::temp_dir().join(format!("perf-{id}.log"));
    match procs::Proc::spawn("perf", cmd, &log) {
        Ok(p) => {
            std::thread::sleep(Duration::from_millis(300));
            Some(p)
        }
        Err(e) => {
            eprintln!("[bench] cannot profile: {e}");
            None
        }
    }
}

/// A scenario or peer that could not be measured: said loudly now and noted in the results.
fn loud(notes: &mut Vec<String>, msg: String) {
    eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
    notes.push(msg);
}

/// How many key rotations the audit log in `dir` holds: a rotation row whose run was shorter
/// than its epoch measured the setting, not a rotation, and the notes must say so.
fn rotations_note(notes: &mut Vec<String>, id: &str, dir: &std::path::Path) {
    let n: usize = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .matches(r#""kind":"key_rotation""#)
                .count()
        })
        .sum();
    let note = format!("{id}: {n} key rotation(s) happened during the row");
    eprintln!("[bench] {note}");
    notes.push(note);
}

/// `BENCH_ONLY=a,b,...`: run only these scenarios (for profiling); results are not written.
fn wanted(id: &str) -> bool {
    std::env::var("BENCH_ONLY").map_or(true, |only| only.split(',').any(|w| w == id))
}

fn gateway(policy: &str) -> common::Gateway {
    // `info` is the gateway's default filter; the harness's own default is louder.
    common::Gateway::start_with(policy, &[("RUST_LOG", "info")])
}

/// Runs each plan (id suffix, plan) of one scenario against a running gateway.
async fn through(
    gw: &common::Gateway,
    upstream: Option<u32>,
    id: &str,
    label: &str,
    work: Work,
    plans: &[(&str, Plan)],
) -> Result<Vec<Row>, String> {
    let watch = Watch {
        gateway: Some(gw.child.id()),
        upstream,
    };
    let target = Target {
        url: gw.url.clone(),
        work,
        bearer: None,
    };
    let mut rows = Vec::new();
    for (suffix, plan) in plans {
        rows.push(measure(&format!("{id}{suffix}"), label, &target, *plan, watch).await?);
    }
    Ok(rows)
}

fn remote_policy(echo: &str, audit: &str) -> String {
    let port = echo
        .trim_start_matches("http://127.0.0.1:")
        .split('/')
        .next()
        .unwrap_or("0");
    format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[audit]\n{audit}\n\n[servers.echo]\nruntime = \"remote\"\nurl = \"{echo}\"\negress = {{ allow = [\"127.0.0.1/32:{port}\"] }}\n{ONE_CLIENT_MANY_SESSIONS}"
    )
}

/// The load generator is one (anonymous) client holding up to `BENCH_RSS_SESSIONS` sessions,
/// opened as fast as it can: lift its session quota and creation rate.
const ONE_CLIENT_MANY_SESSIONS: &str = "\n[clients.anonymous]\nmax_sessions = 5000\nsession_rate = { quota = \"100000/s\", burst = 100000 }\n";

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // `cargo test --all-targets` (make test, CI) runs bench binaries without `--bench`: there
    // this one only proves it builds; the figures need `cargo bench --bench load`.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("load bench: skipped outside `cargo bench --bench load` (make bench)");
        return;
    }
    if let Err(e) = run().await {
        eprintln!("\n[bench] FAILED: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let sessions = env_num("BENCH_SESSIONS", 32);
    let calls = env_num("BENCH_CALLS", 2000);
    let peer_calls = env_num("BENCH_PEER_CALLS", 100);
    let rss_sessions = env_num("BENCH_RSS_SESSIONS", 1000);
    let cf_workers = env_num("BENCH_CF_WORKERS", 2);
    let paced_rate = env_num("BENCH_PACED_RATE", 8000) as f64;
    let single_calls = (calls * 2).max(200);
    let load_before = report::load_average();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let heavy = Plan {
        sessions,
        calls,
        warmup: 50,
        deadline: None,
        rate: None,
    };
    let single = Plan {
        sessions: 1,
        calls: single_calls,
        warmup: 200,
        deadline: None,
        rate: None,
    };
    // The same sessions offered a fixed rate well below the machine's capacity (about 3 s).
    let paced = Plan {
        sessions,
        calls: ((paced_rate * 3.0) as usize / sessions.max(1)).max(10),
        warmup: 50,
        deadline: None,
        rate: Some(paced_rate),
    };
    let call = |url: &str, tool: &str| Target {
        url: url.to_owned(),
        work: Work::Call(tool.to_owned()),
        bearer: None,
    };

    let echo = procs::Echo::start(dir.path())?;
    let up = Watch {
        gateway: None,
        upstream: Some(echo.proc.pid()),
    };

    // (a) the baseline: straight to the upstream.
    let direct = call(&echo.url, "echo");
    if wanted("a") {
        rows.push(measure("a", "direct to echo upstream", &direct, heavy, up).await?);
        rows.push(measure("a1", "direct to echo upstream", &direct, single, up).await?);
        rows.push(measure("ap", "direct to echo upstream", &direct, paced, up).await?);
    }

    // (b) through Portcullis to the same upstream, audit off.
    let both = [("", heavy), ("1", single)];
    let three = [("", heavy), ("1", single), ("p", paced)];
    let echo_pid = Some(echo.proc.pid());
    if wanted("b") {
        let gw = gateway(&remote_policy(&echo.url, "enabled = false"));
        let label = "Portcullis -> echo (remote)";
        rows.extend(through(&gw, echo_pid, "b", label, Work::Call("echo".into()), &three).await?);
    }

    // (d) the same with the audit log on, fsync = group, on the real disk.
    let mut fsync = None;
    if wanted("d") {
        // The disk's own fsync latency right before the audited run: the floor under it.
        fsync = Some(probe_fsync(&common::repo_root().join("bench"))?);
        let audit_dir =
            tempfile::tempdir_in(common::repo_root().join("bench")).map_err(|e| e.to_string())?;
        let audit = format!(
            "dir = \"{}\"\nfsync = \"group\"",
            audit_dir.path().join("log").display()
        );
        let gw = gateway(&remote_policy(&echo.url, &audit));
        let label = "Portcullis -> echo, audit fsync=group";
        rows.extend(through(&gw, echo_pid, "d", label, Work::Call("echo".into()), &three).await?);
    }

    // (dk) = (d) with the checkpoint key rotated every 60 s (the default epoch is an hour):
    // what forward-secure keys cost under load, at the rate issue 28 compares.
    if wanted("dk") {
        let audit_dir =
            tempfile::tempdir_in(common::repo_root().join("bench")).map_err(|e| e.to_string())?;
        let audit = format!(
            "dir = \"{}\"\nfsync = \"group\"\nkey_epoch = \"60s\"",
            audit_dir.path().join("log").display()
        );
        let gw = gateway(&remote_policy(&echo.url, &audit));
        let label = "Portcullis -> echo, audit fsync=group, key rotated every 60 s";
        rows.extend(
            through(
                &gw,
                echo_pid,
                "dk",
                label,
                Work::Call("echo".into()),
                &three,
            )
            .await?,
        );
        rotations_note(&mut notes, "dk", &audit_dir.path().join("log"));
    }

    // (c) stdio upstream: our fixture server as a child process, and in the shared container.
    if wanted("c") || wanted("cm") {
        let gw = gateway(&format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nenabled = false\n\n[servers.fixture]\nruntime = \"process\"\ncommand = \"{{fixture}}\"\n{ONE_CLIENT_MANY_SESSIONS}",
        ));
        if wanted("c") {
            let label = "Portcullis -> fixture (process, stdio)";
            rows.extend(through(&gw, None, "c", label, Work::Call("echo".into()), &both).await?);
        }
        // The same gateway and server, stateless 2026-07-28 calls: compare with (c).
        if wanted("cm") {
            let label = "Portcullis -> fixture (process, stdio), 2026-07-28 stateless";
            let work = Work::ModernCall("echo".into());
            rows.extend(through(&gw, None, "cm", label, work, &both).await?);
        }
    }
    // (dc) (c) with the audit log on: the stdio path is the common deployment; (dck) the same
    // with the checkpoint key rotated every 60 s.
    for (id, epoch, label) in [
        (
            "dc",
            "",
            "Portcullis -> fixture (process, stdio), audit fsync=group",
        ),
        (
            "dck",
            "\nkey_epoch = \"60s\"",
            "Portcullis -> fixture (process, stdio), audit fsync=group, key rotated every 60 s",
        ),
    ] {
        if !wanted(id) {
            continue;
        }
        let audit_dir =
            tempfile::tempdir_in(common::repo_root().join("bench")).map_err(|e| e.to_string())?;
        let gw = gateway(&format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[audit]\ndir = \"{}\"\nfsync = \"group\"{epoch}\n\n[servers.fixture]\nruntime = \"process\"\ncommand = \"{{fixture}}\"\n{ONE_CLIENT_MANY_SESSIONS}",
            audit_dir.path().join("log").display()
        ));
        rows.extend(through(&gw, None, id, label, Work::Call("echo".into()), &both).await?);
        if !epoch.is_empty() {
            rotations_note(&mut notes, id, &audit_dir.path().join("log"));
        }
    }
    if wanted("c_docker") {
        match docker_scenario(&both).await {
            Ok(r) => rows.extend(r),
            Err(e) => loud(
                &mut notes,
                format!("(c) shared Docker container skipped: {e}"),
            ),
        }
    }

    // (e) cached tools/list and resources/list over 50 servers x 20 items (and em).
    if wanted("e") || wanted("em") {
        let plan = Plan {
            calls: (calls / 10).max(20),
            warmup: 5,
            ..heavy
        };
        rows.extend(catalog::run(plan, &mut notes).await?);
    }

    // DNS: the resolver's cache and budget, and a neighbour under a DNS flood.
    if dns::IDS.iter().any(|id| wanted(id)) {
        match dns::scenarios(wanted, &mut notes).await {
            Ok(r) => rows.extend(r),
            Err(e) => loud(&mut notes, format!("DNS rows not measured: {e}")),
        }
    }

    // Peers.
    let peer_plan = Plan {
        sessions,
        calls: peer_calls,
        warmup: 5,
        deadline: Some(Duration::from_secs(60)),
        rate: None,
    };
    let cf = if wanted("cf") {
        Some(peers::contextforge(dir.path(), &echo.url, cf_workers).await)
    } else {
        None
    };
    match cf {
        None => {}
        Some(Ok(cf)) => {
            let w = Watch {
                gateway: Some(cf.proc.pid()),
                ..up
            };
            let t = Target {
                url: cf.url.clone(),
                work: Work::Call(cf.tool.clone()),
                bearer: cf.bearer.clone(),
            };
            let label = format!("ContextForge {} -> echo ({cf_workers} workers)", cf.version);
            match measure("cf", &label, &t, peer_plan, w).await {
                Ok(r) => rows.push(r),
                Err(e) => notes.push(format!("ContextForge run failed: {e}")),
            }
            let one = Plan {
                sessions: 1,
                calls: peer_calls * 2,
                warmup: 5,
                deadline: Some(Duration::from_secs(30)),
                rate: None,
            };
            match measure("cf1", &label, &t, one, w).await {
                Ok(r) => rows.push(r),
                Err(e) => notes.push(format!("ContextForge single-session run failed: {e}")),
            }
        }
        Some(Err(e)) => loud(&mut notes, format!("ContextForge not measured: {e}")),
    }
    let sg = if wanted("sg") {
        Some(peers::supergateway(dir.path(), &common::fixture_bin()).await)
    } else {
        None
    };
    match sg {
        None => {}
        Some(Ok(sg)) => {
            let w = Watch {
                gateway: Some(sg.proc.pid()),
                upstream: None,
            };
            let t = call(&sg.url, &sg.tool);
            let label = format!("supergateway {} -> fixture (stdio, stateful)", sg.version);
            let plan = Plan {
                calls: (calls / 4).max(50),
                ..peer_plan
            };
            match measure("sg", &label, &t, plan, w).await {
                Ok(r) => rows.push(r),
                Err(e) => notes.push(format!("supergateway run failed: {e}")),
            }
        }
        Some(Err(e)) => loud(&mut notes, format!("supergateway not measured: {e}")),
    }

    // Memory: a fresh gateway, idle and then with 1,000 open sessions (each initialized, one
    // call made, its keep-alive connection still open).
    if std::env::var("BENCH_ONLY").is_ok() && !wanted("rss") {
        eprintln!("[bench] BENCH_ONLY is set: results not written");
        return Ok(());
    }
    let rss = {
        let gw = gateway(&remote_policy(&echo.url, "enabled = false"));
        let pid = gw.child.id();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = procs::rss_kib(pid).unwrap_or(0);
        let held = drive::hold(&call(&gw.url, "echo"), rss_sessions).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let loaded = procs::rss_kib(pid).unwrap_or(0);
        drop(held);
        report::Rss {
            sessions: rss_sessions,
            idle_kib: idle,
            loaded_kib: loaded,
        }
    };
    eprintln!(
        "[bench] gateway RSS: idle {:.1} MiB, with {} open sessions {:.1} MiB",
        rss.idle_kib as f64 / 1024.0,
        rss.sessions,
        rss.loaded_kib as f64 / 1024.0
    );

    if std::env::var("BENCH_ONLY").is_ok() {
        eprintln!("[bench] BENCH_ONLY is set: results not written");
        return Ok(());
    }
    let context = report::Context {
        fsync: match fsync {
            Some(f) => f,
            None => probe_fsync(&common::repo_root().join("bench"))?,
        },
        load_before,
        load_after: report::load_average(),
    };
    let out = common::repo_root().join("bench/results");
    let summary = report::write(&out, &rows, &rss, &notes, &context)?;
    println!("{summary}");
    Ok(())
}

/// Latency of one small append + `fdatasync` on the disk the audit scenario wrote to, the floor
/// under every audited call (two of them per call): p50 and p99 in microseconds.
fn probe_fsync(dir: &std::path::Path) -> Result<(f64, f64), String> {
    use std::io::Write;
    let tmp = tempfile::tempdir_in(dir).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(tmp.path().join("probe")).map_err(|e| e.to_string())?;
    let record = [b'x'; 320];
    let mut lat = Vec::with_capacity(500);
    for _ in 0..500 {
        let t = std::time::Instant::now();
        f.write_all(&record).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    Ok((lat[lat.len() / 2], lat[lat.len() * 99 / 100]))
}

/// (c) with the fixture server in the shared Docker container, when dockerd is usable.
async fn docker_scenario(plans: &[(&str, Plan)]) -> Result<Vec<Row>, String> {
    // Locally a missing engine skips; under CI=true the harness panics, which is the rule.
    let scope = common::docker::Scope::new("bench-load");
    let Some(_rt) = common::docker::runtime(&scope.name).await else {
        return Err("Docker is not usable (see the message above)".to_owned());
    };
    let policy = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\n\n[audit]\nenabled = false\n\n[servers.fixture]\nruntime = \"docker\"\nimage = \"{}\"\nlifecycle = \"shared\"\nlimits = {{ memory = \"64m\", pids = 32 }}\n{ONE_CLIENT_MANY_SESSIONS}",
        common::docker::FIXTURE_IMAGE
    );
    let gw = common::Gateway::start_with(
        &policy,
        &[
            ("PORTCULLIS_DOCKER_SCOPE", scope.name.as_str()),
            ("RUST_LOG", "info"),
        ],
    );
    let label = "Portcullis -> fixture (Docker, shared)";
    through(
        &gw,
        None,
        "c_docker",
        label,
        Work::Call("echo".into()),
        plans,
    )
    .await
}
