//! A network lab made of namespaces, for the egress attack matrix.
//!
//! Nothing here touches the host's namespace or its resolver: every address is in ranges the
//! lab assigns to its own veths (198.18.0.0/24 "external", 2001:db8::/32, 10.213.x sandbox
//! subnets inside the router namespace), and names under `.test` are answered only by the lab's
//! DNS server. Every namespace is deleted on drop, also when a test fails.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use portcullis::egress::netns;

/// Whether the privileged lab can run here. Under CI a missing capability fails the test;
/// locally it is skipped with a loud message.
pub fn privileged() -> bool {
    let root = netns::is_root();
    let tools = ["ip", "nft"].iter().all(|t| {
        Command::new(t)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let ok = root && tools;
    if !ok {
        let msg = format!(
            "egress lab needs root, `ip` and `nft` (root: {root}, tools: {tools}); run as root after `bash tests/setup/install-deps.sh system`"
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("\n!!!!!!!!!! SKIPPED: {msg} !!!!!!!!!!\n");
    }
    ok
}

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique short tag for names in this test process.
pub fn tag() -> String {
    format!(
        "{}x{}",
        std::process::id() % 100_000,
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Runs `f` on a thread inside the namespace at `path`; panics when it cannot be entered (a
/// probe that silently ran nowhere would look like a blocked one).
pub fn run_in<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    netns::in_netns(Some(path), move || Ok(f()))
        .unwrap_or_else(|e| panic!("cannot enter the namespace {}: {e}", path.display()))
}

/// A namespace deleted on drop.
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(name: String) -> Ns {
        sh(&["ip", "netns", "add", &name]);
        let ns = Ns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn ip(&self, args: &[&str]) {
        let mut a = vec!["ip", "-n", &self.name];
        a.extend_from_slice(args);
        sh(&a);
    }

    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["netns", "exec", &self.name];
        a.extend_from_slice(args);
        Command::new("ip").args(&a).output().expect("ip netns exec")
    }

    /// Runs `f` on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let p = self.path();
        netns::in_netns(Some(&p), move || Ok(f())).expect("namespace thread")
    }

    /// Starts a background thread in this namespace (it lives until the process ends or its
    /// sockets error out when the namespace goes away).
    pub fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        let p = self.path();
        std::thread::spawn(move || {
            if netns::enter(&p).is_ok() {
                f();
            }
        });
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A TCP listener in `ns` that hands every connection to `handle` on a thread of its own.
fn serve_tcp(ns: &Ns, addr: SocketAddr, handle: impl Fn(TcpStream) + Send + Clone + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let l = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let handle = handle.clone();
            std::thread::spawn(move || handle(c));
        }
    });
    rx.recv().expect("listener thread").expect("bind listener");
}

/// A TCP listener that answers every connection with `banner` and then echoes.
pub fn tcp_service(ns: &Ns, addr: SocketAddr, banner: &'static str) {
    serve_tcp(ns, addr, move |mut c| {
        let _ = c.write_all(banner.as_bytes());
        let mut buf = [0u8; 512];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 || c.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

/// A web server that answers every request with 200 and `body` (text/plain), then closes.
pub fn http_service(ns: &Ns, addr: SocketAddr, body: &'static str) {
    serve_tcp(ns, addr, move |mut c| {
        let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(5)));
        // The request head, as far as it comes in one read: its content does not matter.
        let mut buf = [0u8; 4096];
        let _ = c.read(&mut buf);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = c.write_all(answer.as_bytes());
    });
}

/// A UDP echo service.
pub fn udp_echo(ns: &Ns, addr: SocketAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let s = match UdpSocket::bind(addr) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    rx.recv().expect("udp thread").expect("bind udp");
}

/// The lab's authoritative DNS server for `.test` names: tiny TTLs, a rotating name, CNAMEs,
/// one long TTL (`long.example.test`, 60 s), and any name below `any.example.test` (60 s). Its public answers are in `net.0/24` (the matrix
/// uses 198.18.0). It counts what it is asked, in total and per name.
pub struct Zone {
    pub net: [u8; 3],
    pub rotation: Vec<Ipv4Addr>,
    /// The address of `moved.example.test` (TTL 1 s), which a test changes while it runs.
    pub moved: Mutex<Ipv4Addr>,
    pub queries: AtomicUsize,
    /// Questions per name (lower-case, without the trailing dot).
    pub asked: Mutex<HashMap<String, usize>>,
    /// How long UDP answers are held back (ms): a test that needs a lookup in flight while it
    /// changes something sets it.
    pub delay_ms: std::sync::atomic::AtomicU64,
}

impl Zone {
    pub fn new(net: [u8; 3], rotation: Vec<Ipv4Addr>) -> Arc<Zone> {
        Arc::new(Zone {
            net,
            rotation,
            moved: Mutex::new(Ipv4Addr::new(net[0], net[1], net[2], 11)),
            queries: AtomicUsize::new(0),
            asked: Mutex::new(HashMap::new()),
            delay_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Questions received so far for the names `which` selects.
    pub fn asked(&self, which: impl Fn(&str) -> bool) -> usize {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| which(n))
            .map(|(_, k)| k)
            .sum()
    }

    /// Address `.host` of the zone's /24.
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], host)
    }
}

fn zone_answer(zone: &Zone, q: &Message) -> Message {
    let mut m = Message::new();
    m.set_id(q.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true);
    let Some(query) = q.queries().first() else {
        m.set_response_code(ResponseCode::FormErr);
        return m;
    };
    m.add_query(query.clone());
    let name = query.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.');
    let n = |s: &str| Name::from_ascii(format!("{s}.")).unwrap();
    let a =
        |owner: &str, ttl: u32, ip: Ipv4Addr| Record::from_rdata(n(owner), ttl, RData::A(A(ip)));
    let k = zone.queries.fetch_add(1, Ordering::SeqCst);
    *zone
        .asked
        .lock()
        .unwrap()
        .entry(name.to_owned())
        .or_default() += 1;
    let mut answers = Vec::new();
    match (name, query.query_type()) {
        (_, RecordType::TXT) | (_, RecordType::ANY) => answers.push(Record::from_rdata(
            query.name().clone(),
            1,
            RData::TXT(TXT::new(vec!["secret-exfil-channel".into()])),
        )),
        ("api.example.test", RecordType::A) => answers.push(a(name, 1, zone.ip(10))),
        ("moved.example.test", RecordType::A) => {
            let ip = *zone.moved.lock().unwrap();
            answers.push(a(name, 1, ip));
        }
        ("short.example.test", RecordType::A) => answers.push(a(name, 0, zone.ip(14))),
        ("long.example.test", RecordType::A) => answers.push(a(name, 60, zone.ip(15))),
        ("rot.example.test", RecordType::A) => {
            let ip = zone.rotation[k % zone.rotation.len()];
            answers.push(a(name, 1, ip));
        }
        ("alias.example.test", RecordType::A) => {
            answers.push(Record::from_rdata(
                n(name),
                1,
                RData::CNAME(CNAME(n("target.other.test"))),
            ));
            answers.push(a("target.other.test", 1, zone.ip(13)));
        }
        ("target.other.test", RecordType::A) => answers.push(a(name, 1, zone.ip(13))),
        ("unlisted.test", RecordType::A) => answers.push(a(name, 1, zone.ip(30))),
        ("private.example.test", RecordType::A) => answers.push(a(name, 1, [10, 0, 0, 5].into())),
        ("meta.example.test", RecordType::A) => {
            answers.push(a(name, 1, [169, 254, 169, 254].into()))
        }
        ("mixed.example.test", RecordType::A) => {
            answers.push(a(name, 1, [127, 0, 0, 1].into()));
            answers.push(a(name, 1, zone.ip(15)));
        }
        (n, RecordType::A) if n.ends_with(".any.example.test") => {
            answers.push(a(name, 60, zone.ip(10)))
        }
        (_, RecordType::A) | (_, RecordType::AAAA) => {}
        _ => {}
    }
    if answers.is_empty() && !name.ends_with("example.test") && !name.ends_with("other.test") {
        m.set_response_code(ResponseCode::NXDomain);
    }
    for r in answers {
        m.add_answer(r);
    }
    m
}

pub fn dns_server(ns: &Ns, addr: SocketAddr, zone: Arc<Zone>) {
    let z = zone.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let s = UdpSocket::bind(addr).expect("bind dns");
        let _ = tx.send(());
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            if let Ok(q) = Message::from_vec(&buf[..n]) {
                if let Ok(b) = zone_answer(&z, &q).to_vec() {
                    let delay = z.delay_ms.load(Ordering::SeqCst);
                    match s.try_clone() {
                        Ok(s) if delay > 0 => {
                            std::thread::spawn(move || {
                                std::thread::sleep(std::time::Duration::from_millis(delay));
                                let _ = s.send_to(&b, from);
                            });
                        }
                        _ => {
                            let _ = s.send_to(&b, from);
                        }
                    }
                }
            }
        }
    });
    rx.recv().expect("dns thread");
    let (tx, rx) = std::sync::mpsc::channel();
    ns.spawn(move || {
        let l = TcpListener::bind(addr).expect("bind dns tcp");
        let _ = tx.send(());
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut len = [0u8; 2];
            if c.read_exact(&mut len).is_err() {
                continue;
            }
            let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
            if c.read_exact(&mut q).is_err() {
                continue;
            }
            if let Ok(q) = Message::from_vec(&q) {
                if let Ok(b) = zone_answer(&zone, &q).to_vec() {
                    let _ = c.write_all(&(b.len() as u16).to_be_bytes());
                    let _ = c.write_all(&b);
                }
            }
        }
    });
    rx.recv().expect("dns tcp thread");
}

/// A DNS question from inside a namespace; `None` when nothing answered.
pub fn query(
    ns: &Ns,
    server: SocketAddr,
    name: &str,
    ty: RecordType,
    tcp: bool,
) -> Option<Message> {
    query_in(&ns.path(), server, name, ty, tcp)
}

/// [`query`] from inside the namespace at `path` (e.g. `/proc/PID/ns/net`).
pub fn query_in(
    path: &Path,
    server: SocketAddr,
    name: &str,
    ty: RecordType,
    tcp: bool,
) -> Option<Message> {
    let name = name.to_string();
    run_in(path, move || {
        let mut m = Message::new();
        m.set_id(0x4242)
            .set_message_type(MessageType::Query)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(format!("{name}.")).ok()?, ty));
        let bytes = m.to_vec().ok()?;
        let t = Duration::from_millis(1500);
        if tcp {
            let mut c = TcpStream::connect_timeout(&server, t).ok()?;
            c.set_read_timeout(Some(t)).ok()?;
            c.write_all(&(bytes.len() as u16).to_be_bytes()).ok()?;
            c.write_all(&bytes).ok()?;
            let mut len = [0u8; 2];
            c.read_exact(&mut len).ok()?;
            let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
            c.read_exact(&mut r).ok()?;
            Message::from_vec(&r).ok()
        } else {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
            s.set_read_timeout(Some(t)).ok()?;
            s.send_to(&bytes, server).ok()?;
            let mut buf = [0u8; 1500];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Message::from_vec(&buf[..n]).ok()
        }
    })
}

pub fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(A(a)) => Some(*a),
            _ => None,
        })
        .collect()
}

/// Connects from inside `ns` and reads the service banner: `true` only for a working service.
pub fn tcp_works(ns: &Ns, addr: SocketAddr) -> bool {
    tcp_works_in(&ns.path(), addr)
}

/// [`tcp_works`] from inside the namespace at `path`.
pub fn tcp_works_in(path: &Path, addr: SocketAddr) -> bool {
    run_in(path, move || {
        let t = Duration::from_millis(700);
        let Ok(mut c) = TcpStream::connect_timeout(&addr, t) else {
            return false;
        };
        let _ = c.set_read_timeout(Some(t));
        let mut b = [0u8; 2];
        c.read_exact(&mut b).is_ok() && &b == b"ok"
    })
}

/// An open connection made from inside `ns` (the stream itself is namespace-independent).
pub fn tcp_open(ns: &Ns, addr: SocketAddr) -> Option<TcpStream> {
    ns.run(move || {
        let t = Duration::from_millis(700);
        let mut c = TcpStream::connect_timeout(&addr, t).ok()?;
        c.set_read_timeout(Some(t)).ok()?;
        let mut b = [0u8; 2];
        c.read_exact(&mut b).ok()?;
        Some(c)
    })
}

/// Sends one datagram from inside `ns` and waits for the echo.
pub fn udp_works(ns: &Ns, addr: SocketAddr) -> bool {
    ns.run(move || {
        let bind: SocketAddr = match addr.ip() {
            IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(s) = UdpSocket::bind(bind) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(700)));
        if s.send_to(b"ping", addr).is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        s.recv_from(&mut buf).is_ok()
    })
}

/// What a DNS flood sent and what came back.
#[derive(Debug, Default, Clone, Copy)]
pub struct Flood {
    pub sent: usize,
    pub noerror: usize,
    pub refused: usize,
    pub other: usize,
    pub elapsed: Duration,
}

impl Flood {
    pub fn answered(&self) -> usize {
        self.noerror + self.refused + self.other
    }
}

/// Floods `resolver` from inside `netns` with A questions for `name(i)`: `rate` questions a
/// second (in batches every 10 ms), at most `max` of them and for at most `limit`, then
/// collects late answers for half a second. Counts the answers by response code.
pub fn flood(
    netns: &Path,
    resolver: SocketAddr,
    name: impl Fn(usize) -> String + Send + 'static,
    rate: usize,
    max: usize,
    limit: Duration,
) -> Flood {
    netns::in_netns(Some(netns), move || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_nonblocking(true)?;
        let batch = (rate / 100).max(1);
        let start = std::time::Instant::now();
        let mut f = Flood::default();
        let mut buf = [0u8; 1500];
        let mut tally = |f: &mut Flood, s: &UdpSocket| {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                match Message::from_vec(&buf[..n]).map(|m| m.response_code()) {
                    Ok(ResponseCode::NoError) => f.noerror += 1,
                    Ok(ResponseCode::Refused) => f.refused += 1,
                    _ => f.other += 1,
                }
            }
        };
        while f.sent < max && start.elapsed() < limit {
            for _ in 0..batch.min(max - f.sent) {
                let mut m = Message::new();
                m.set_id(f.sent as u16)
                    .set_message_type(MessageType::Query)
                    .set_op_code(OpCode::Query)
                    .set_recursion_desired(true);
                let q = Name::from_ascii(format!("{}.", name(f.sent)))
                    .map_err(std::io::Error::other)?;
                m.add_query(Query::query(q, RecordType::A));
                let bytes = m.to_vec().map_err(std::io::Error::other)?;
                // A full socket buffer drops this one, as it would for the sandbox.
                let _ = s.send_to(&bytes, resolver);
                f.sent += 1;
            }
            tally(&mut f, &s);
            std::thread::sleep(Duration::from_millis(10));
        }
        f.elapsed = start.elapsed();
        let tail = std::time::Instant::now();
        while tail.elapsed() < Duration::from_millis(500) && f.answered() < f.sent {
            tally(&mut f, &s);
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(f)
    })
    .expect("flood thread")
}
