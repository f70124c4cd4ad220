//! The DNS rows: what the pinning resolver's cache and budget buy, through the real gateway.
//!
//!   (qc) DNS questions/s answered from a server's cache (one name, asked again and again)
//!   (qf) DNS questions/s forwarded upstream and pinned (a new name each time; this server's
//!        budget is raised so that it measures the path, not the budget)
//!   (nq) a neighbouring server's tools/call, paced, with nothing else going on
//!   (nf) the same while a third server's sandbox floods its resolver with distinct names
//!        under a wildcard rule, at the default budget (50/s, burst 100); nq and nf alternate
//!        for a few rounds, each row holds all of its rounds' calls
//!
//! One gateway, one run: qc/qf and nf/nq are the ratios to read. How many flood questions
//! reached the upstream resolver, against what the budget allows, and `uptime` before and
//! after go into the notes.
//!
//! Privileged (root, `ip`, `nft`): the servers are process servers in their own network
//! namespaces, on the host's own table of the bench's instance (`benchdns`), beside the
//! sandboxes of any other gateway on the host (run it under the same lock as the egress tests
//! all the same: the lab's routes and the CPU are shared). The outside world and the DNS
//! server are the test lab's (`tests/common/hostlab.rs`): nothing leaves the machine.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use portcullis::egress::{netns, Names};
use portcullis::instance::InstanceId;

use super::common::hostlab::{iface_addr, HostLab, Leftovers};
use super::common::netlab;
use super::drive::{Plan, Stats, Target, Work};
use super::report::{Cpu, Row};
use super::{measure, procs, Watch};

/// The rows of this group that `wanted` selects; the group runs if any is.
pub const IDS: [&str; 4] = ["qc", "qf", "nq", "nf"];
/// Questions each of the 4 clients asks in (qc) and in (qf).
const CACHED_PER_CLIENT: usize = 5000;
const FORWARDED_PER_CLIENT: usize = 500;
const CLIENTS: usize = 4;
/// The flood of (nf): questions a second from the flooding sandbox.
const FLOOD_RATE: usize = 4000;
/// Alternating rounds of (nq) and (nf).
const ROUNDS: usize = 3;
/// The gateway instance of the bench: its table, interfaces and namespaces are named from it.
const INSTANCE: &str = "benchdns";
/// The default `[egress] dns_rate`, which the flooding server keeps.
const RATE: f64 = 50.0;
const BURST: f64 = 100.0;

fn policy(lab: &HostLab) -> String {
    format!(
        r#"[gateway]
naming = "prefix"

[audit]
enabled = false

[egress]
upstream_resolvers = ["{dns}"]
pin_ttl_min = "2s"
pin_ttl_max = "30s"
network_pool = "{pool}"

[servers.dq]
runtime = "process"
command = "{{fixture}}"
egress.allow = ["long.example.test:443", "*.any.example.test:443"]
egress.dns_rate = {{ quota = "1000000/s", burst = 1000000 }}

[servers.nb]
runtime = "process"
command = "{{fixture}}"
egress.allow = ["api.example.test:443"]

[servers.fl]
runtime = "process"
command = "{{fixture}}"
egress.allow = ["*.wild.example.test:443"]
"#,
        dns = lab.sa(53, 53),
        pool = lab.pool,
    )
}

/// A process server's namespace and its resolver, once its sandbox is up.
async fn sandbox(names: &Names, server: &str) -> Result<(PathBuf, SocketAddr), String> {
    let iface = names.iface(server);
    let ns = PathBuf::from("/run/netns").join(names.netns(server));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let (Some(gw), true) = (iface_addr(&iface), ns.exists()) {
            return Ok((ns, SocketAddr::from((gw, 53))));
        }
        if Instant::now() > deadline {
            return Err(format!("the sandbox of {server} did not come up"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn uptime() -> String {
    std::process::Command::new("uptime")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub async fn scenarios(
    wanted: impl Fn(&str) -> bool,
    notes: &mut Vec<String>,
) -> Result<Vec<Row>, String> {
    if !netns::is_root() {
        return Err(
            "the DNS rows need root, `ip` and `nft` (process sandboxes on the host's table)".into(),
        );
    }
    let before = uptime();
    eprintln!("[bench] dns rows, uptime before: {before}");
    let lab = HostLab::new();
    let zone = lab.serve();
    // Declared before the gateway: if the bench dies, the namespaces still go.
    let names = Names::new(InstanceId::parse(INSTANCE)?);
    let _leftovers = Leftovers(names.clone(), vec!["dq".into(), "nb".into(), "fl".into()]);
    let mut gw = super::common::Gateway::start_with(
        &policy(&lab),
        &[("RUST_LOG", "info"), ("PORTCULLIS_INSTANCE", INSTANCE)],
    );
    let (dq_ns, dq) = sandbox(&names, "dq").await?;
    let (fl_ns, fl) = sandbox(&names, "fl").await?;
    let mut rows = Vec::new();
    let gw_pid = gw.child.id();

    if wanted("qc") {
        let one = |_| "long.example.test".to_owned();
        questions(&dq_ns, dq, one, 1, 1).await?;
        let (stats, cpu) = timed(
            gw_pid,
            questions(&dq_ns, dq, one, CLIENTS, CACHED_PER_CLIENT),
        )
        .await?;
        rows.push(row(
            "qc",
            "DNS questions answered from the cache, one name",
            stats,
            cpu,
        ));
    }
    if wanted("qf") {
        let fresh = |i| format!("q{i}.any.example.test");
        let asked = zone.asked(|n| n.ends_with(".any.example.test"));
        let (stats, cpu) = timed(
            gw_pid,
            questions(&dq_ns, dq, fresh, CLIENTS, FORWARDED_PER_CLIENT),
        )
        .await?;
        let upstream = zone.asked(|n| n.ends_with(".any.example.test")) - asked;
        notes.push(format!(
            "(qf) {upstream} of {} answers were asked upstream and pinned",
            stats.ok
        ));
        rows.push(row(
            "qf",
            "DNS questions forwarded upstream and pinned, new names",
            stats,
            cpu,
        ));
    }

    let target = Target {
        url: gw.url.clone(),
        work: Work::Call("nb__echo".into()),
        bearer: None,
    };
    // Paced well below capacity, so that the latency is what a call costs, not queueing: 4
    // sessions, 200 calls/s in total, 4 s a round. Quiet and flooded rounds alternate, so that
    // other work on a shared machine weighs on both alike.
    let plan = Plan {
        sessions: 4,
        calls: 200,
        warmup: 10,
        deadline: Some(Duration::from_secs(60)),
        rate: Some(200.0),
    };
    let plan_secs = ((plan.calls + plan.warmup) * plan.sessions) as f64 / 200.0;
    let watch = Watch {
        gateway: Some(gw_pid),
        upstream: None,
    };
    let (mut quiet, mut flooded): (Option<Row>, Option<Row>) = (None, None);
    let (mut sent, mut refused, mut upstream, mut allowed, mut secs) = (0, 0, 0, 0.0, 0.0);
    for _ in 0..ROUNDS {
        if wanted("nq") {
            let label = "neighbour's tools/call, quiet";
            let r = measure("nq", label, &target, plan, watch).await?;
            quiet = Some(merge(quiet, r));
        }
        if wanted("nf") {
            let asked = zone.asked(|n| n.ends_with(".wild.example.test"));
            let ns = fl_ns.clone();
            let flood = tokio::task::spawn_blocking(move || {
                netlab::flood(
                    &ns,
                    fl,
                    |i| format!("f{i}.wild.example.test"),
                    FLOOD_RATE,
                    1_000_000,
                    Duration::from_secs_f64(plan_secs + 1.0),
                )
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let label = "neighbour's tools/call, another sandbox flooding DNS";
            let r = measure("nf", label, &target, plan, watch).await;
            let f = flood.await.map_err(|e| e.to_string())?;
            flooded = Some(merge(flooded, r?));
            sent += f.sent;
            refused += f.refused;
            secs += f.elapsed.as_secs_f64();
            upstream += zone.asked(|n| n.ends_with(".wild.example.test")) - asked;
            // The bucket refills during the quiet round before each flood.
            allowed += BURST + RATE * f.elapsed.as_secs_f64();
        }
    }
    if flooded.is_some() {
        notes.push(format!(
            "(nf) while the neighbour was measured, the flooding sandbox sent {sent} DNS questions for distinct names in {secs:.1} s ({:.0}/s), {refused} of them refused; {upstream} reached the upstream resolver, the budget allows {allowed:.0}",
            sent as f64 / f64::max(secs, 1e-9)
        ));
    }
    for r in [quiet, flooded].into_iter().flatten() {
        eprintln!("[bench] {} (all rounds)", r.line());
        rows.push(r);
    }
    gw.terminate(Duration::from_secs(30));
    let after = uptime();
    eprintln!("[bench] dns rows, uptime after: {after}");
    notes.push(format!("DNS rows: uptime before: {before}; after: {after}"));
    for n in notes.iter() {
        eprintln!("[bench] note: {n}");
    }
    Ok(rows)
}

/// One row of several rounds of the same scenario: every latency, CPU weighted by time.
fn merge(a: Option<Row>, b: Row) -> Row {
    let Some(mut a) = a else {
        return b;
    };
    let (wa, wb) = (a.stats.wall.as_secs_f64(), b.stats.wall.as_secs_f64());
    let avg = |x: f64, y: f64| (x * wa + y * wb) / (wa + wb).max(1e-9);
    a.cpu = Cpu {
        loadgen_share: avg(a.cpu.loadgen_share, b.cpu.loadgen_share),
        gateway_cores: a
            .cpu
            .gateway_cores
            .zip(b.cpu.gateway_cores)
            .map(|(x, y)| avg(x, y)),
        upstream_cores: None,
    };
    a.stats.ok += b.stats.ok;
    a.stats.errors += b.stats.errors;
    a.stats.first_error = a.stats.first_error.or(b.stats.first_error);
    a.stats.wall += b.stats.wall;
    a.stats.latencies.extend(b.stats.latencies);
    a.stats.latencies.sort_unstable();
    a
}

fn row(id: &str, label: &str, stats: Stats, cpu: Cpu) -> Row {
    let row = Row {
        id: id.to_owned(),
        label: label.to_owned(),
        sessions: CLIENTS,
        cpu,
        stats,
    };
    eprintln!("[bench] {}", row.line());
    row
}

/// Runs `work`, with the CPU the gateway and this process used meanwhile.
async fn timed(
    gw: u32,
    work: impl std::future::Future<Output = Result<Stats, String>>,
) -> Result<(Stats, Cpu), String> {
    let me = std::process::id();
    let (g0, m0) = (procs::tree_cpu(gw), procs::cpu(me));
    let stats = work.await?;
    let secs = stats.wall.as_secs_f64().max(1e-9);
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cpu = Cpu {
        loadgen_share: (procs::cpu(me) - m0).as_secs_f64() / secs / ncpu,
        gateway_cores: Some((procs::tree_cpu(gw) - g0).as_secs_f64() / secs),
        upstream_cores: None,
    };
    Ok((stats, cpu))
}

/// `clients` threads in the sandbox's namespace, each asking `per_client` A questions one
/// after the other (`name(i)`, `i` unique across clients) and timing each answer.
async fn questions(
    ns: &Path,
    resolver: SocketAddr,
    name: fn(usize) -> String,
    clients: usize,
    per_client: usize,
) -> Result<Stats, String> {
    let start = Instant::now();
    let mut threads = Vec::new();
    for c in 0..clients {
        let ns = ns.to_path_buf();
        threads.push(tokio::task::spawn_blocking(move || {
            netns::in_netns(Some(&ns), move || {
                Ok(ask_all(resolver, name, c * per_client, per_client))
            })
        }));
    }
    let mut stats = Stats::default();
    for t in threads {
        let (ok, errors, lat) = t
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        stats.ok += ok;
        stats.errors += errors;
        stats.latencies.extend(lat);
    }
    stats.wall = start.elapsed();
    stats.latencies.sort_unstable();
    if stats.ok == 0 {
        return Err(format!("no DNS answer from {resolver}"));
    }
    Ok(stats)
}

/// (answered NOERROR, failed, latencies in ns) of `n` questions from index `first`.
fn ask_all(
    resolver: SocketAddr,
    name: fn(usize) -> String,
    first: usize,
    n: usize,
) -> (usize, usize, Vec<u64>) {
    let Ok(s) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
        return (0, n, Vec::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 1500];
    let (mut ok, mut errors, mut lat) = (0, 0, Vec::with_capacity(n));
    for i in first..first + n {
        let mut m = Message::new();
        m.set_id(i as u16)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        let Ok(q) = Name::from_ascii(format!("{}.", name(i))) else {
            errors += 1;
            continue;
        };
        m.add_query(Query::query(q, RecordType::A));
        let Ok(bytes) = m.to_vec() else {
            errors += 1;
            continue;
        };
        let t = Instant::now();
        let answered = s.send_to(&bytes, resolver).is_ok()
            && s.recv_from(&mut buf).is_ok_and(|(len, _)| {
                Message::from_vec(&buf[..len]).is_ok_and(|a| {
                    a.id() == i as u16
                        && a.response_code() == ResponseCode::NoError
                        && !a.answers().is_empty()
                })
            });
        if answered {
            ok += 1;
            lat.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
        } else {
            errors += 1;
        }
    }
    (ok, errors, lat)
}
