//! Egress benchmark (needs root, `ip`, `nft`; everything happens in namespaces made here).
//!
//! - pin latency: a DNS question received by the resolver until the answer is sent, with the
//!   netlink ack of the pinned elements included (and the pin alone), median and p99;
//! - rule-set programming: one atomic replacement of the table for 1, 10 and 100 servers,
//!   including the read-back verification;
//! - the baseline for the pin latency, measured in the same run: the client-side round trip of
//!   the same questions sent straight to the upstream, against the round trip through the
//!   pinning resolver (so the ratio is what pinning and filtering add).
//!
//! `cargo bench --bench egress`. The upstream is a tiny DNS server on the namespace's loopback.
//! Every question is for a new name (no cache hit), and the server's DNS budget is raised so
//! that the figures are the resolver's path, not its budget (see `bench/load/dns.rs` for those).

use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use portcullis::egress::nft::{Netlink, Snapshot};
use portcullis::egress::{netns, ruleset, Attachment, Egress, EgressOptions};

struct Ns(String);
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn policy(n: usize) -> portcullis::policy::Policy {
    let mut src =
        String::from("[egress]\nupstream_resolvers = [\"127.0.0.53:53\"]\npin_ttl_min = \"30s\"\n");
    for i in 0..n {
        src.push_str(&format!(
            "[servers.s{i}]\nruntime = \"docker\"\nimage = \"x\"\negress.allow = [\"*.bench.test:443\", \"api.bench.test:8443\", \"10.1.2.0/24:5432\"]\negress.dns_rate = {{ quota = \"1000000/s\", burst = 1000000 }}\n"
        ));
    }
    portcullis::policy::parse(&src, "<bench>").expect("policy")
}

fn main() {
    if !netns::is_root() {
        eprintln!("!!!!!!!!!! SKIPPED: the egress benchmark needs root, `ip` and `nft` !!!!!!!!!!");
        return;
    }
    let name = format!("pcb-{}", std::process::id());
    ip(&["netns", "add", &name]);
    let ns = Ns(name.clone());
    let path = PathBuf::from("/run/netns").join(&ns.0);
    ip(&["-n", &name, "link", "set", "lo", "up"]);

    // --- programming time -----------------------------------------------------------------
    for n in [1usize, 10, 100] {
        let p = policy(n);
        let names = portcullis::egress::Names::default();
        let nets: Vec<ruleset::ServerNet> = ruleset::plan_nets(&p, &names);
        let pairs: Vec<_> = nets
            .iter()
            .map(|net| (&p.servers[&net.server], net))
            .collect();
        // No NFLOG group: the bench programs rules, nothing listens to a log.
        let table = ruleset::build(&names.iface_prefix(), &pairs, None);
        let table_name = names.table();
        let chains = table.chains.len();
        let rules: usize = table.chains.iter().map(|c| c.rules.len()).sum();
        let path2 = path.clone();
        let times = netns::in_netns(Some(&path2), move || {
            let mut nl = Netlink::open(&table_name).map_err(std::io::Error::other)?;
            let mut times = Vec::new();
            for _ in 0..20 {
                let t = Instant::now();
                let mut b = nl.batch();
                b.replace_table(&table, 0, None)
                    .map_err(std::io::Error::other)?;
                nl.commit(b, "bench").map_err(std::io::Error::other)?;
                let snap = nl.snapshot().map_err(std::io::Error::other)?;
                assert!(snap.is_some_and(|s| s.same_shape(&Snapshot::expected(&table))));
                times.push(t.elapsed());
            }
            Ok(times)
        })
        .expect("programming");
        let mut t = times;
        println!(
            "program {n:>3} servers ({} chains, {} rules): median {:?}, p99 {:?}",
            chains,
            rules,
            pct(&mut t, 0.5),
            pct(&mut t, 0.99)
        );
    }

    // --- pin latency ----------------------------------------------------------------------
    // The sandbox interface must carry the instance's name for `prepare` to accept it.
    let bench_iface = portcullis::egress::Names::default().iface("s0");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // upstream: answers every A question with one address, TTL 60
    let up_path = path.clone();
    std::thread::spawn(move || {
        if netns::enter(&up_path).is_err() {
            return;
        }
        let Ok(s) = UdpSocket::bind("127.0.0.53:53") else {
            return;
        };
        let mut buf = [0u8; 1500];
        let mut k: u32 = 0;
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut m = Message::new();
            m.set_id(q.id())
                .set_message_type(MessageType::Response)
                .set_op_code(OpCode::Query);
            if let Some(qq) = q.queries().first() {
                m.add_query(qq.clone());
                k = k.wrapping_add(1);
                let addr = Ipv4Addr::new(198, 18, (k >> 8) as u8, k as u8);
                m.add_answer(Record::from_rdata(qq.name().clone(), 60, RData::A(A(addr))));
            }
            if let Ok(b) = m.to_vec() {
                let _ = s.send_to(&b, from);
            }
        }
    });
    ip(&[
        "-n",
        &name,
        "link",
        "add",
        &bench_iface,
        "type",
        "veth",
        "peer",
        "name",
        "pcb-peer0",
    ]);
    ip(&[
        "-n",
        &name,
        "addr",
        "add",
        "10.213.0.1/29",
        "dev",
        &bench_iface,
    ]);
    ip(&["-n", &name, "link", "set", &bench_iface, "up"]);
    let p = policy(1);
    let server = p.servers["s0"].clone();
    let names = portcullis::egress::Names::default();
    let (mut lat, mut pins, mut direct, mut through) = rt.block_on(async {
        let egress = Egress::start_with(
            &p,
            EgressOptions {
                netns: Some(path.clone()),
                names,
                ..Default::default()
            },
        )
        .await
        .expect("egress");
        let prep = egress
            .prepare(
                &server,
                Attachment::Veth {
                    iface: bench_iface.clone(),
                    gateway: Ipv4Addr::new(10, 213, 0, 1),
                    subnet: (Ipv4Addr::new(10, 213, 0, 0), 29),
                },
            )
            .await
            .expect("prepare");
        let resolver = prep.resolver;
        let upstream: std::net::SocketAddr = "127.0.0.53:53".parse().expect("addr");
        // Baseline first, then through the resolver: the same questions, the same client.
        let direct = round_trips(path.clone(), upstream, "d").await;
        let through = round_trips(path.clone(), resolver, "n").await;
        let r = (egress.latencies(), egress.pin_latencies(), direct, through);
        egress.remove_table().await.expect("remove");
        r
    });
    println!(
        "pin latency over {} answers (query received -> answer sent, incl. upstream on loopback and netlink ack): median {:?}, p99 {:?}",
        lat.len(),
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99)
    );
    println!(
        "pin only (elements sent -> kernel ack, 1 pin per answer: *.bench.test:443): median {:?}, p99 {:?}",
        pct(&mut pins, 0.5),
        pct(&mut pins, 0.99)
    );
    let (d50, d99) = (pct(&mut direct, 0.5), pct(&mut direct, 0.99));
    let (t50, t99) = (pct(&mut through, 0.5), pct(&mut through, 0.99));
    println!(
        "client round trip, same run: straight to the upstream median {d50:?} p99 {d99:?}; through the pinning resolver median {t50:?} p99 {t99:?}; ratio {:.2}x median, {:.2}x p99",
        t50.as_secs_f64() / d50.as_secs_f64().max(1e-9),
        t99.as_secs_f64() / d99.as_secs_f64().max(1e-9)
    );
    drop(ns);
}

/// Client-side round trips of 5,000 A questions (`<prefix><i>.bench.test`) to `server`, from
/// inside the bench namespace.
async fn round_trips(
    ns: PathBuf,
    server: std::net::SocketAddr,
    prefix: &'static str,
) -> Vec<Duration> {
    tokio::task::spawn_blocking(move || {
        netns::in_netns(Some(&ns), move || {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut buf = [0u8; 1500];
            let mut times = Vec::with_capacity(5000);
            for i in 0..5000u32 {
                let mut m = Message::new();
                m.set_id(i as u16)
                    .set_message_type(MessageType::Query)
                    .set_op_code(OpCode::Query);
                m.add_query(Query::query(
                    Name::from_ascii(format!("{prefix}{i}.bench.test."))
                        .map_err(std::io::Error::other)?,
                    RecordType::A,
                ));
                let bytes = m.to_vec().map_err(std::io::Error::other)?;
                let t = Instant::now();
                s.send_to(&bytes, server)?;
                let _ = s.recv_from(&mut buf)?;
                times.push(t.elapsed());
            }
            Ok(times)
        })
    })
    .await
    .expect("join")
    .expect("queries")
}
