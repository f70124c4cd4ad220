//! Several gateways in one network namespace (SECURITY.md, "Several gateways on one host"):
//! each keeps its own sandboxes closed through every start, reload, stop and crash of the
//! others, and nobody else in the namespace can alter a running gateway's table. Privileged
//! (root, `ip`, `nft`); see `common::netlab`.
//!
//! Topology (all namespaces made here, deleted on drop):
//! ```text
//!  sandboxes of gateway A ──veth──┐
//!  sandboxes of gateway B ──veth──┤  "gw": the gateways' own network namespace    ┌─ "ext"
//!  sandboxes of gateway C ──veth──┘  (same network_pool for all)  ──veth ext0──────┤ 198.18.7.10 allowed (:443)
//!                                                                                   │ 198.18.7.30 unlisted (:443, counted)
//!                                                                                   └ 198.18.7.53 DNS of the test
//! ```
//! The external namespace has a route back to the pool, so a sandbox that is not filtered
//! reaches the unlisted host even without the table's masquerading: the listener there counts
//! every connection that got through. Each sandbox is found through its process (a fixture
//! server that the policy marks with `PORTCULLIS_TEST_SANDBOX`) and probed from inside its
//! network namespace (`/proc/PID/ns/net`).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::netlab::{self, dns_server, query_in, tcp_service, tcp_works_in, Ns, Zone};
use common::{child_pids, Cases, Gateway};
use hickory_proto::rr::RecordType;

/// The tests of this file take turns (each builds its own lab, but they are heavy).
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

const POOL: &str = "10.216.0.0/24";
const MARK: &str = "PORTCULLIS_TEST_SANDBOX";

fn ext(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 7, host)
}

/// The gateways' namespace and the outside world, with a counter of connections that reached
/// the unlisted host.
struct Lab {
    gw: Ns,
    _ext: Ns,
    unlisted: Arc<AtomicUsize>,
}

impl Lab {
    fn new() -> Lab {
        let t = netlab::tag();
        let gw = Ns::new(format!("pci-g{t}"));
        let ext_ns = Ns::new(format!("pci-e{t}"));
        let o = gw.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        assert!(o.status.success(), "sysctl ip_forward");
        gw.ip(&[
            "link",
            "add",
            "ext0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ext_ns.name,
        ]);
        gw.ip(&["addr", "add", "198.18.7.1/24", "dev", "ext0"]);
        gw.ip(&["link", "set", "ext0", "up"]);
        for h in [10, 30, 53] {
            ext_ns.ip(&["addr", "add", &format!("{}/24", ext(h)), "dev", "eth0"]);
        }
        ext_ns.ip(&["link", "set", "eth0", "up"]);
        // A way back to the pool that does not need the table's NAT: without the firewall, a
        // sandbox's connection to the unlisted host would complete (and be counted).
        ext_ns.ip(&["route", "add", POOL, "via", "198.18.7.1"]);
        let zone = Zone::new([198, 18, 7], vec![ext(10)]);
        dns_server(&ext_ns, SocketAddr::from((ext(53), 53)), zone);
        tcp_service(&ext_ns, SocketAddr::from((ext(10), 443)), "ok");
        let unlisted = Arc::new(AtomicUsize::new(0));
        counting_listener(&ext_ns, SocketAddr::from((ext(30), 443)), unlisted.clone());
        let lab = Lab {
            gw,
            _ext: ext_ns,
            unlisted,
        };
        // The lab works: from the gateways' namespace both hosts answer (then the counter
        // starts from zero).
        // A fresh veth pair can take a moment to carry traffic: up to 10 tries, 0.3 s apart.
        for h in [10, 30] {
            let reachable = (0..10).any(|i| {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                tcp_works_in(&lab.gw.path(), SocketAddr::from((ext(h), 443)))
            });
            assert!(
                reachable,
                "lab broken: {} unreachable from the gateways' namespace",
                ext(h)
            );
        }
        lab.unlisted.store(0, Ordering::SeqCst);
        lab
    }
}

/// Accepts connections on `addr` inside `ns`, counts them and answers "ok".
fn counting_listener(ns: &Ns, addr: SocketAddr, count: Arc<AtomicUsize>) {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let l = TcpListener::bind(addr).expect("bind the counting listener");
        let _ = tx.send(());
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = c.write_all(b"ok");
        }
    });
    rx.recv().expect("listener thread");
}

/// A gateway's policy: process servers (fixture) allowed `api.example.test:443` (plus
/// `extra` rules), each marked with `<gateway>-<server>`.
fn policy(gateway: &str, servers: &[&str], extra: &[&str]) -> String {
    let mut allow = vec!["\"api.example.test:443\"".to_owned()];
    allow.extend(extra.iter().map(|r| format!("\"{r}\"")));
    let mut p = format!(
        r#"
[gateway]
naming = "prefix"

[egress]
upstream_resolvers = ["198.18.7.53:53"]
pin_ttl_min = "2s"
pin_ttl_max = "30s"
network_pool = "{POOL}"
"#
    );
    for s in servers {
        p.push_str(&format!(
            "\n[servers.{s}]\nruntime = \"process\"\ncommand = \"{{fixture}}\"\nenv = {{ {MARK} = \"{gateway}-{s}\" }}\negress.allow = [{}]\n",
            allow.join(", ")
        ));
    }
    p
}

/// The marked sandbox processes among `pid`'s children: mark -> pid.
fn sandboxes(pid: u32) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for child in child_pids(pid) {
        let Ok(env) = std::fs::read(format!("/proc/{child}/environ")) else {
            continue;
        };
        for var in env.split(|b| *b == 0) {
            let var = String::from_utf8_lossy(var);
            if let Some(mark) = var.strip_prefix(&format!("{MARK}=")) {
                out.insert(mark.to_owned(), child);
            }
        }
    }
    out
}

/// Waits until `gw` has a sandbox for each of `marks`.
fn await_sandboxes(gw: &Gateway, marks: &[String]) -> Result<BTreeMap<String, u32>, String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = sandboxes(gw.pid());
        if marks.iter().all(|m| found.contains_key(m)) {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(format!("sandboxes {marks:?} not all running: {found:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ns_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/ns/net"))
}

/// The sandbox's default gateway, which is its resolver.
fn resolver_of(pid: u32) -> Option<Ipv4Addr> {
    let routes = std::fs::read_to_string(format!("/proc/{pid}/net/route")).ok()?;
    routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&"00000000"))
            .then(|| u32::from_str_radix(f.get(2)?, 16).ok())
            .flatten()
            .map(|g| Ipv4Addr::from(g.to_le_bytes()))
    })
}

/// From inside the sandbox of `pid`: the allowed name resolves through its resolver and the
/// answer connects.
fn allowed_works(pid: u32) -> Result<(), String> {
    let resolver = resolver_of(pid).ok_or("no default route in the sandbox")?;
    let path = ns_of(pid);
    let ans = query_in(
        &path,
        SocketAddr::from((resolver, 53)),
        "api.example.test",
        RecordType::A,
        false,
    )
    .ok_or_else(|| format!("resolver {resolver} did not answer"))?;
    let addrs = netlab::a_records(&ans);
    if addrs != vec![ext(10)] {
        return Err(format!("resolver {resolver} answered {addrs:?}"));
    }
    if !tcp_works_in(&path, SocketAddr::from((ext(10), 443))) {
        return Err(format!("{}:443 not reachable", ext(10)));
    }
    Ok(())
}

/// Connects to the unlisted host from inside one sandbox every 20 ms until stopped (at most
/// 15 000 attempts), counting the connections that got through.
struct Probe {
    stop: Arc<AtomicBool>,
    through: Arc<AtomicUsize>,
    attempts: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Probe {
    fn start(pid: u32) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let through = Arc::new(AtomicUsize::new(0));
        let attempts = Arc::new(AtomicUsize::new(0));
        let (s, t, a) = (stop.clone(), through.clone(), attempts.clone());
        let path = ns_of(pid);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let entered = portcullis::egress::netns::enter(&path);
            let _ = ready_tx.send(entered.is_ok());
            if entered.is_err() {
                return;
            }
            let target = SocketAddr::from((ext(30), 443));
            for _ in 0..15_000 {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                a.fetch_add(1, Ordering::SeqCst);
                if TcpStream::connect_timeout(&target, Duration::from_millis(150)).is_ok() {
                    t.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        assert!(
            ready_rx.recv().unwrap_or(false),
            "cannot enter the sandbox of {pid}"
        );
        Probe {
            stop,
            through,
            attempts,
            thread: Some(thread),
        }
    }

    /// Stops the probe: (attempts, connections that got through).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.attempts.load(Ordering::SeqCst),
            self.through.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One gateway of a test: its process, its name, its servers.
struct Member {
    name: &'static str,
    gw: Gateway,
    servers: Vec<&'static str>,
}

impl Member {
    fn marks(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| format!("{}-{s}", self.name))
            .collect()
    }
}

/// Starts gateway `name` in the lab; records whether it became ready and found its sandboxes.
fn start(
    lab: &Lab,
    r: &mut Cases,
    name: &'static str,
    servers: &[&'static str],
    args: &[&str],
) -> Member {
    let gw = Gateway::spawn_in(&policy(name, servers, &[]), &[], &lab.gw.path(), args);
    let m = Member {
        name,
        gw,
        servers: servers.to_vec(),
    };
    let ready = m.gw.wait_ready_in(&lab.gw.path(), Duration::from_secs(90));
    r.result(&format!("gateway {name} starts"), ready);
    m
}

/// Every sandbox of every member reaches the allowed host and not the unlisted one.
fn check_all(r: &mut Cases, when: &str, members: &[&Member]) {
    for m in members {
        let found = match await_sandboxes(&m.gw, &m.marks()) {
            Ok(f) => f,
            Err(e) => {
                r.check(
                    &format!("{when}: gateway {} runs its sandboxes", m.name),
                    false,
                    &e,
                );
                sandboxes(m.gw.pid())
            }
        };
        for (mark, pid) in found {
            r.result(
                &format!("{when}: {mark} reaches its allowed host"),
                allowed_works(pid),
            );
            let unlisted = tcp_works_in(&ns_of(pid), SocketAddr::from((ext(30), 443)));
            r.check(
                &format!("{when}: {mark} cannot reach the unlisted host"),
                !unlisted,
                "",
            );
        }
    }
}

fn probes_of(m: &Member) -> Vec<Probe> {
    sandboxes(m.gw.pid())
        .values()
        .map(|pid| Probe::start(*pid))
        .collect()
}

#[test]
fn gateways_sharing_a_namespace_and_a_pool_keep_their_sandboxes_closed() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !netlab::privileged() {
        return;
    }
    let lab = Lab::new();
    let mut r = Cases(Vec::new());

    let mut a = start(&lab, &mut r, "a", &["srva", "shared"], &[]);
    check_all(&mut r, "A alone", &[&a]);
    // From here on, A's sandboxes probe the unlisted host every 20 ms until the end.
    let mut probes = probes_of(&a);

    // B: the same pool, one server name in common with A, one of its own.
    let mut b = start(&lab, &mut r, "b", &["srvb", "shared"], &[]);
    check_all(&mut r, "A and B", &[&a, &b]);
    probes.extend(probes_of(&b));

    // C: a third one, also with `shared`.
    let mut c = start(&lab, &mut r, "c", &["srvc", "shared"], &[]);
    check_all(&mut r, "A, B and C", &[&a, &b, &c]);
    probes.extend(probes_of(&c));

    // B reloads: one more server, and changed rules for the one it had.
    b.gw.write_policy(&policy(
        "b",
        &["srvb", "shared", "srvb2"],
        &["rot.example.test:443"],
    ));
    b.gw.sighup();
    b.servers.push("srvb2");
    let mut b2 = await_sandboxes(&b.gw, &["b-srvb2".to_owned()]);
    if b2.is_ok() {
        // The reload re-programs B's table; wait until its new server answers.
        b2 =
            b.gw.wait_ready_in(&lab.gw.path(), Duration::from_secs(60))
                .map(|()| BTreeMap::new());
    }
    r.result("gateway b reloads with one more server", b2.map(|_| ()));
    check_all(&mut r, "after B's reload", &[&a, &b, &c]);

    // C stops, then B stops: A's sandboxes (and B's, while B runs) stay closed throughout.
    let status = c.gw.terminate(Duration::from_secs(60));
    r.check(
        "gateway c stops cleanly",
        status.success(),
        &format!("{status}"),
    );
    check_all(&mut r, "after C stopped", &[&a, &b]);
    let status = b.gw.terminate(Duration::from_secs(60));
    r.check(
        "gateway b stops cleanly",
        status.success(),
        &format!("{status}"),
    );
    check_all(&mut r, "after B stopped", &[&a]);
    // A moment for anything a stop undid late (a watch tick of 1 s) to show in the probes.
    std::thread::sleep(Duration::from_secs(2));

    let mut attempts = 0;
    let mut through = 0;
    for p in probes {
        let (n, t) = p.finish();
        attempts += n;
        through += t;
    }
    r.check(
        "probes ran throughout",
        attempts >= 200,
        &format!("{attempts} attempts"),
    );
    let counted = lab.unlisted.load(Ordering::SeqCst);
    r.check(
        "no connection reached the unlisted host (counted by its listener)",
        counted == 0 && through == 0,
        &format!("{counted} accepted by the listener, {through} seen by the probes, in {attempts} attempts"),
    );
    let status = a.gw.terminate(Duration::from_secs(60));
    r.check(
        "gateway a stops cleanly",
        status.success(),
        &format!("{status}"),
    );
    drop((a, b, c));
    r.finish();
}

/// An `nft` command run as root inside the gateways' namespace: (succeeded, stderr).
fn nft_in(lab: &Lab, args: &[&str]) -> (bool, String) {
    let mut a = vec!["nft"];
    a.extend_from_slice(args);
    let o = lab.gw.exec(&a);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr)
            .trim()
            .replace('\n', " | "),
    )
}

/// The table protection mode a gateway reports on `/metrics` (`owner` or `watch`).
fn protection_mode(lab: &Lab, gw: &Gateway) -> String {
    let url = format!("{}/metrics", gw.base);
    let (_, metrics) = netlab::run_in(&lab.gw.path(), move || {
        common::http_get(&url).unwrap_or_default()
    });
    common::table_protection(&metrics)
}

/// Stops every probe: (attempts, connections that got through).
fn finish_probes(probes: Vec<Probe>) -> (usize, usize) {
    probes
        .into_iter()
        .map(Probe::finish)
        .fold((0, 0), |(a, t), (n, m)| (a + n, t + m))
}

fn tag() -> String {
    netlab::tag().replace('x', "")
}

#[test]
fn root_in_the_namespace_cannot_alter_a_running_gateways_table() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !netlab::privileged() {
        return;
    }
    let lab = Lab::new();
    let mut r = Cases(Vec::new());
    let id = format!("ta{}", tag());
    let table = format!("portcullis_{id}");
    let a = start(&lab, &mut r, "a", &["srva", "shared"], &["--instance", &id]);
    check_all(&mut r, "before", &[&a]);
    r.check(
        "/metrics says the table is owned",
        protection_mode(&lab, &a.gw) == "owner",
        &protection_mode(&lab, &a.gw),
    );
    let probes = probes_of(&a);
    let (listed_ok, _) = nft_in(&lab, &["list", "table", "inet", &table]);
    r.check("the table is listed", listed_ok, &table);

    for (what, args) in [
        ("nft delete table", vec!["delete", "table", "inet", &table]),
        ("nft flush table", vec!["flush", "table", "inet", &table]),
        (
            "nft add rule (accept everything first)",
            vec!["insert", "rule", "inet", &table, "forward", "accept"],
        ),
        (
            "nft add chain",
            vec!["add", "chain", "inet", &table, "sneaky"],
        ),
    ] {
        let (ok, err) = nft_in(&lab, &args);
        r.check(
            &format!("root: `{what}` is refused with EPERM"),
            !ok && err.contains("Operation not permitted"),
            &err,
        );
    }
    let before = nft_in(&lab, &["list", "table", "inet", &table]);
    let (ok, err) = nft_in(&lab, &["flush", "ruleset"]);
    r.check("root: `nft flush ruleset` runs", ok, &err);
    let listed = lab.gw.exec(&["nft", "list", "table", "inet", &table]);
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    r.check(
        "... and passes the owned table by",
        listed.status.success() && text.contains("chain srv_srva") && before.0,
        &text.lines().take(3).collect::<Vec<_>>().join(" | "),
    );
    check_all(&mut r, "after the attempts", &[&a]);

    // The fallback, as on a kernel without the flags: changes are made, then undone by the
    // watch and audited. (Its sandboxes are not probed: for up to a second they are open,
    // which is what SECURITY.md says about this mode.)
    let idb = format!("tb{}", tag());
    let tableb = format!("portcullis_{idb}");
    let gwb = Gateway::spawn_in(
        &policy("b", &["srvb"], &[]),
        &[("PORTCULLIS_EGRESS_TABLE_FLAGS", "off")],
        &lab.gw.path(),
        &["--instance", &idb],
    );
    r.result(
        "gateway b (table flags off) starts",
        gwb.wait_ready_in(&lab.gw.path(), Duration::from_secs(90)),
    );
    r.check(
        "/metrics says b's table is only watched",
        protection_mode(&lab, &gwb) == "watch",
        &protection_mode(&lab, &gwb),
    );
    r.check(
        "b's stderr says so loudly",
        gwb.stderr().contains("WITHOUT table ownership"),
        "",
    );
    let (ok, err) = nft_in(&lab, &["flush", "table", "inet", &tableb]);
    r.check("root: flushing b's table succeeds", ok, &err);
    let audit = gwb.dir().join("portcullis-audit");
    let deadline = Instant::now() + Duration::from_secs(10);
    let restored = loop {
        let found = common::audit_records(&audit).iter().any(|rec| {
            rec["kind"] == "tamper"
                && rec["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("restored"))
        });
        if found || Instant::now() > deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    r.check(
        "b's table is restored and the restore audited",
        restored,
        "",
    );
    let b = Member {
        name: "b",
        gw: gwb,
        servers: vec!["srvb"],
    };
    check_all(&mut r, "after b's restore", &[&a, &b]);

    std::thread::sleep(Duration::from_secs(1));
    let (attempts, through) = finish_probes(probes);
    let counted = lab.unlisted.load(Ordering::SeqCst);
    r.check(
        "a's sandboxes never reached the unlisted host",
        counted == 0 && through == 0 && attempts >= 50,
        &format!("{counted} accepted by the listener, {through} seen by the probes, in {attempts} attempts"),
    );
    drop((a, b));
    r.finish();
}

/// The inode of a named network namespace (changes when it is made anew).
fn netns_inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| m.ino())
}

/// The names under /run/netns (the process sandboxes' namespaces among them).
fn named_netns() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_killed_gateway_leaves_its_sandboxes_closed_and_its_next_start_takes_over_only_its_own() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !netlab::privileged() {
        return;
    }
    let lab = Lab::new();
    let mut r = Cases(Vec::new());
    let ida = format!("ka{}", tag());
    let idb = format!("kb{}", tag());
    let before: Vec<String> = named_netns();
    let mut a = start(
        &lab,
        &mut r,
        "a",
        &["srva", "shared"],
        &["--instance", &ida],
    );
    let b = start(
        &lab,
        &mut r,
        "b",
        &["srvb", "shared"],
        &["--instance", &idb],
    );
    check_all(&mut r, "both running", &[&a, &b]);
    let ours: Vec<String> = named_netns()
        .into_iter()
        .filter(|n| !before.contains(n) && n.starts_with("pcs-"))
        .collect();
    r.check(
        "four sandbox namespaces, none shared",
        ours.len() == 4,
        &format!("{ours:?}"),
    );
    let inodes: BTreeMap<String, Option<u64>> =
        ours.iter().map(|n| (n.clone(), netns_inode(n))).collect();
    let b_pids = sandboxes(b.gw.pid());
    let mut probes = probes_of(&a);
    probes.extend(probes_of(&b));
    let state_a = a.gw.dir().join("portcullis-state");

    // kill -9: nothing of A cleans up.
    a.gw.kill9();
    std::thread::sleep(Duration::from_secs(3));
    let (listed, _) = nft_in(
        &lab,
        &["list", "table", "inet", &format!("portcullis_{ida}")],
    );
    r.check("A's table outlives A (persist)", listed, "");
    let left = named_netns();
    r.check(
        "A's sandbox namespaces are still there",
        ours.iter().all(|n| left.contains(n)),
        &format!("{left:?}"),
    );
    check_all(&mut r, "after A was killed", &[&b]);

    // A again, same instance (same state directory): it takes its table and leftovers over.
    let a2 = Gateway::spawn_in(
        &policy("a", &["srva", "shared"], &[]),
        &[],
        &lab.gw.path(),
        &[
            "--instance",
            &ida,
            "--state-dir",
            &state_a.display().to_string(),
        ],
    );
    r.result(
        "A starts again on its instance",
        a2.wait_ready_in(&lab.gw.path(), Duration::from_secs(90)),
    );
    r.check(
        "A says it took over its earlier run's table and leftovers",
        a2.stderr().contains("took over") && a2.stderr().contains("removed the leftovers"),
        "",
    );
    let audit = a2.dir().join("portcullis-audit");
    let took_over = common::audit_records(&audit).iter().any(|rec| {
        rec["kind"] == "firewall"
            && rec["detail"]
                .as_str()
                .is_some_and(|d| d.contains("took over"))
    });
    r.check("... and audits it", took_over, "");
    let a2 = Member {
        name: "a",
        gw: a2,
        servers: vec!["srva", "shared"],
    };
    check_all(&mut r, "after A's restart", &[&a2, &b]);
    let now = named_netns();
    let (b_kept, a_renewed): (Vec<_>, Vec<_>) = ours.iter().partition(|n| {
        // B's namespaces are those its sandbox processes still run in.
        b_pids.values().any(|pid| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(ns_of(*pid)).map(|m| m.ino()).ok() == inodes[*n]
        })
    });
    r.check(
        "B's sandboxes are untouched (same processes, same namespaces)",
        b_kept.len() == 2
            && sandboxes(b.gw.pid()) == b_pids
            && b_kept.iter().all(|n| netns_inode(n) == inodes[*n]),
        &format!("{b_kept:?}"),
    );
    r.check(
        "A's leftover namespaces were removed (made anew for its new sandboxes)",
        a_renewed.len() == 2
            && a_renewed
                .iter()
                .all(|n| !now.contains(n) || netns_inode(n) != inodes[*n]),
        &format!("{a_renewed:?}"),
    );
    std::thread::sleep(Duration::from_secs(1));
    let (attempts, through) = finish_probes(probes);
    let counted = lab.unlisted.load(Ordering::SeqCst);
    r.check(
        "no sandbox reached the unlisted host, A's dead ones included",
        counted == 0 && through == 0 && attempts >= 100,
        &format!("{counted} accepted by the listener, {through} seen by the probes, in {attempts} attempts"),
    );
    drop((a, a2, b));
    r.finish();
}

#[test]
fn a_second_start_of_an_instance_in_use_is_refused_naming_the_first() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !netlab::privileged() {
        return;
    }
    let lab = Lab::new();
    let mut r = Cases(Vec::new());
    let a = start(&lab, &mut r, "a", &["srva"], &[]);
    let pids = sandboxes(a.gw.pid());
    let state = a.gw.dir().join("portcullis-state");
    let lock: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("gateway.lock")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let id = lock["instance"].as_str().unwrap_or_default().to_owned();
    r.check(
        "the lock file names the instance, the listener and the directories",
        !id.is_empty() && lock["listen"].as_str() == Some(a.gw.url.as_str()),
        &lock.to_string(),
    );
    let expect = [
        format!("pid {}", a.gw.pid()),
        format!("listening on {}", a.gw.url),
        format!(
            "audit dir {}",
            a.gw.dir().join("portcullis-audit").display()
        ),
    ];
    let refused = |r: &mut Cases, case: &str, args: &[&str], needles: &[&str]| {
        let out = Gateway::run_in(
            &policy("c", &["srva"], &[]),
            &[],
            &lab.gw.path(),
            args,
            Duration::from_secs(60),
        );
        let Some((status, err)) = out else {
            r.check(case, false, "still running after 60 s");
            return;
        };
        let missing: Vec<&str> = needles
            .iter()
            .copied()
            .chain(expect.iter().map(String::as_str))
            .filter(|n| !err.contains(n))
            .collect();
        r.check(
            case,
            !status.success() && missing.is_empty(),
            &format!("{status}; missing {missing:?} in: {}", err.trim()),
        );
    };
    // The same state directory: the instance lock says who holds it.
    refused(
        &mut r,
        "a start on the same state directory is refused, naming the first gateway",
        &["--state-dir", &state.display().to_string()],
        &[&format!("instance `{id}` is in use")],
    );
    // The same instance id with another state directory: the kernel's table owner says so.
    refused(
        &mut r,
        "a start with the same instance id elsewhere is refused, naming the first gateway",
        &["--instance", &id],
        &[
            &format!("portcullis_{}", id.replace('-', "_")),
            "held by another live process",
        ],
    );
    r.check(
        "the first gateway's sandboxes are untouched",
        sandboxes(a.gw.pid()) == pids,
        "",
    );
    check_all(&mut r, "after the refused starts", &[&a]);
    drop(a);
    r.finish();
}

#[test]
fn a_pool_without_a_free_subnet_fails_closed_and_overlapping_routes_are_warned_about() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    if !netlab::privileged() {
        return;
    }
    let lab = Lab::new();
    let mut r = Cases(Vec::new());
    // Something else of the namespace (a VPN, another tool) has addresses in both /29s of
    // the pool.
    // A veth pair rather than a dummy interface: not every kernel has the dummy driver.
    lab.gw.ip(&[
        "link", "add", "dummy0", "type", "veth", "peer", "name", "dummy0p",
    ]);
    lab.gw
        .ip(&["addr", "add", "10.217.0.1/29", "dev", "dummy0"]);
    lab.gw
        .ip(&["addr", "add", "10.217.0.9/29", "dev", "dummy0"]);
    lab.gw.ip(&["link", "set", "dummy0", "up"]);
    lab.gw.ip(&["link", "set", "dummy0p", "up"]);
    let text = policy("a", &["srva"], &[]).replace(POOL, "10.217.0.0/28");
    let gw = Gateway::spawn_in(&text, &[], &lab.gw.path(), &[]);
    let url = format!("{}/ready", gw.base);
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let u = url.clone();
        let (_, body) = netlab::run_in(&lab.gw.path(), move || {
            common::http_get(&u).unwrap_or_default()
        });
        if body.contains("no free /29") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    r.check(
        "the server does not start, and /ready says what fills the pool",
        body.contains("network_pool 10.217.0.0/28 has no free /29 left")
            && body.contains("2 taken by other interfaces")
            && body.contains("dummy0"),
        &body,
    );
    r.check("no sandbox was made", sandboxes(gw.pid()).is_empty(), "");
    // `policy check` and `doctor`, run in that namespace, warn about the overlap.
    let run = |args: &[&str]| {
        let mut a = vec![common::gateway_bin().display().to_string()];
        a.extend(args.iter().map(|s| s.to_string()));
        a.push(gw.policy_path().display().to_string());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = lab.gw.exec(&a);
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let out = run(&["policy", "check"]);
    r.check(
        "`policy check` warns that the pool overlaps a route",
        out.contains("warning: [egress] network_pool 10.217.0.0/28 overlaps routes")
            && out.contains("10.217.0.0/29 on dummy0"),
        &out,
    );
    let out = run(&["doctor", "--policy"]);
    r.check(
        "`doctor` warns too, and reports the table protection",
        out.contains("[warn] network_pool:")
            && out.contains("10.217.0.0/29 on dummy0")
            && out.contains("egress table protection: owner"),
        &out,
    );
    drop(gw);
    r.finish();
}
