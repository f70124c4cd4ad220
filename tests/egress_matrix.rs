//! The egress attack matrix: a sandboxed server tries one bypass after another against fake
//! external hosts that this test creates. Privileged (root, `ip`, `nft`); see `common::netlab`.
//!
//! Topology (all namespaces made here, deleted on drop):
//! ```text
//!  sandbox A (pcs-…) ──veth pc…─── router ──veth ext0── external
//!  sandbox B (pcs-…) ──veth pc…───┘   table inet portcullis_mx…  198.18.0.10-15,30,53 + 169.254.169.254
//!                                     resolvers on 10.213.0.1 / .9    2001:db8:ff::10
//! ```
//! The router namespace stands in for the host: the table and the resolvers live there. The
//! sandboxes are made with the process runtime's own `ProcessNet`, so this also covers it.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::netlab::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use portcullis::egress::netns::ProcessNet;
use portcullis::egress::{
    ruleset, Attachment, Egress, EgressEvent, EgressOptions, Names, Protection,
};
use portcullis::instance::InstanceId;

fn policy(a: &str, b: &str) -> portcullis::policy::Policy {
    let src = format!(
        r#"
[egress]
upstream_resolvers = ["198.18.0.53:53"]
pin_ttl_min = "2s"
pin_ttl_max = "3s"
max_addresses_per_name = 4

[servers.{a}]
runtime = "process"
command = "true"
[servers.{a}.egress]
allow = [
  "api.example.test:443",
  "rot.example.test:443",
  "short.example.test:443",
  "alias.example.test:443",
  "private.example.test:443",
  "meta.example.test:80",
  "mixed.example.test:443",
  "*.wild.example.test:443",
]

[servers.{b}]
runtime = "process"
command = "true"
egress.allow = ["api.example.test:443"]
"#
    );
    portcullis::policy::parse(&src, "<matrix>").expect("policy")
}

struct Results(Vec<(String, bool, String)>);

impl Results {
    fn check(&mut self, case: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        eprintln!("[{}] {case}: {detail}", if ok { "PASS" } else { "FAIL" });
        self.0.push((case.to_string(), ok, detail));
    }
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attack_matrix() {
    if !privileged() {
        return;
    }
    let t = tag();
    let name_a = format!("sa-{t}");
    let name_b = format!("sb-{t}");
    let policy = policy(&name_a, &name_b);
    let server_a = policy.servers[&name_a].clone();
    let server_b = policy.servers[&name_b].clone();

    // --- the lab -------------------------------------------------------------------------
    let router = Ns::new(format!("pct-r{t}"));
    let ext = Ns::new(format!("pct-e{t}"));
    for (k, v) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv6.conf.all.forwarding", "1"),
    ] {
        let o = router.exec(&["sysctl", "-qw", &format!("{k}={v}")]);
        assert!(o.status.success(), "sysctl {k}");
    }
    router.ip(&[
        "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
    ]);
    router.ip(&["addr", "add", "198.18.0.1/24", "dev", "ext0"]);
    router.ip(&["addr", "add", "2001:db8:ff::1/64", "dev", "ext0", "nodad"]);
    router.ip(&["link", "set", "ext0", "up"]);
    router.ip(&["route", "add", "169.254.169.254/32", "via", "198.18.0.10"]);
    for a in ["10", "11", "12", "13", "14", "15", "30", "53"] {
        ext.ip(&["addr", "add", &format!("198.18.0.{a}/24"), "dev", "eth0"]);
    }
    ext.ip(&["addr", "add", "169.254.169.254/32", "dev", "eth0"]);
    ext.ip(&["addr", "add", "2001:db8:ff::10/64", "dev", "eth0", "nodad"]);
    ext.ip(&["link", "set", "eth0", "up"]);
    ext.ip(&["route", "add", "default", "via", "198.18.0.1"]);
    ext.ip(&["-6", "route", "add", "default", "via", "2001:db8:ff::1"]);

    let egress = Egress::start_with(
        &policy,
        EgressOptions {
            netns: Some(router.path()),
            watch_interval: Duration::from_millis(300),
            resolver_port: 53,
            names: Names::new(InstanceId::parse(&format!("mx{t}")).expect("instance id")),
            ..Default::default()
        },
    )
    .await
    .expect("egress start");
    let mut events = egress.take_events().expect("events");
    let table = egress.names().table();
    let owned = *egress.protection() == Protection::Owned;

    let sub_a = egress.allocate_subnet(&name_a).unwrap();
    let sub_b = egress.allocate_subnet(&name_b).unwrap();
    let net_a =
        ProcessNet::create(egress.names(), &name_a, sub_a, Some(&router.name)).expect("netns a");
    let net_b =
        ProcessNet::create(egress.names(), &name_b, sub_b, Some(&router.name)).expect("netns b");
    let sb_a = Ns {
        name: net_a.netns.clone(),
    };
    // `ProcessNet` owns the namespaces; the `Ns` views must not delete them twice.
    let sb_a = std::mem::ManuallyDrop::new(sb_a);
    let sb_b = std::mem::ManuallyDrop::new(Ns {
        name: net_b.netns.clone(),
    });
    // IPv6 on sandbox A, so the IPv6 case is about the firewall and not a missing route.
    router.ip(&[
        "addr",
        "add",
        "2001:db8:1::1/64",
        "dev",
        &net_a.iface,
        "nodad",
    ]);
    sb_a.ip(&["addr", "add", "2001:db8:1::2/64", "dev", "eth0", "nodad"]);
    sb_a.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);

    let prep_a = egress
        .prepare(
            &server_a,
            Attachment::Veth {
                iface: net_a.iface.clone(),
                gateway: net_a.gateway,
                subnet: sub_a,
            },
        )
        .await
        .expect("prepare a");
    let prep_b = egress
        .prepare(
            &server_b,
            Attachment::Veth {
                iface: net_b.iface.clone(),
                gateway: net_b.gateway,
                subnet: sub_b,
            },
        )
        .await
        .expect("prepare b");
    assert_eq!(prep_a.resolver, SocketAddr::from((net_a.gateway, 53)));

    // --- services ------------------------------------------------------------------------
    let zone = Zone::new(
        [198, 18, 0],
        vec![[198, 18, 0, 11].into(), [198, 18, 0, 12].into()],
    );
    dns_server(&ext, sa([198, 18, 0, 53], 53), zone.clone());
    tcp_service(&ext, "[::]:443".parse().unwrap(), "ok");
    tcp_service(&ext, "0.0.0.0:8443".parse().unwrap(), "ok");
    tcp_service(&ext, "0.0.0.0:853".parse().unwrap(), "ok");
    tcp_service(&ext, "0.0.0.0:80".parse().unwrap(), "ok");
    udp_echo(&ext, "0.0.0.0:443".parse().unwrap());
    udp_echo(&ext, "0.0.0.0:5353".parse().unwrap());
    tcp_service(&router, "0.0.0.0:2222".parse().unwrap(), "ok");
    tcp_service(&sb_b, "0.0.0.0:443".parse().unwrap(), "ok");

    let resolver = prep_a.resolver;
    let mut r = Results(Vec::new());

    // The lab itself works: without our table the router forwards (checked from the router).
    assert!(
        tcp_works(&router, sa([198, 18, 0, 30], 443)),
        "lab broken: router cannot reach the external host"
    );

    // --- the matrix ----------------------------------------------------------------------
    let ans = query(&sb_a, resolver, "api.example.test", RecordType::A, false);
    let addrs = ans.as_ref().map(a_records).unwrap_or_default();
    r.check(
        "allowed name resolves (UDP)",
        addrs == vec![Ipv4Addr::new(198, 18, 0, 10)],
        format!("{addrs:?}"),
    );
    r.check(
        "allowed name: connect to pinned ip:443 works",
        tcp_works(&sb_a, sa([198, 18, 0, 10], 443)),
        "198.18.0.10:443",
    );
    let tcp_ans = query(&sb_a, resolver, "api.example.test", RecordType::A, true);
    r.check(
        "allowed name resolves over TCP 53",
        tcp_ans.as_ref().map(a_records) == Some(vec![Ipv4Addr::new(198, 18, 0, 10)]),
        format!("{:?}", tcp_ans.map(|m| m.response_code())),
    );
    let rc = |m: &Option<hickory_proto::op::Message>| m.as_ref().map(|m| m.response_code());
    let un = query(&sb_a, resolver, "unlisted.test", RecordType::A, false);
    r.check(
        "unlisted name refused",
        rc(&un) == Some(ResponseCode::Refused)
            && un.as_ref().map(a_records).unwrap_or_default().is_empty(),
        format!("{:?}", rc(&un)),
    );
    r.check(
        "hardcoded IP of unlisted host blocked",
        !tcp_works(&sb_a, sa([198, 18, 0, 30], 443)),
        "198.18.0.30:443",
    );
    r.check(
        "hardcoded IP of allowed host on another port blocked",
        !tcp_works(&sb_a, sa([198, 18, 0, 10], 8443)),
        "198.18.0.10:8443",
    );
    let wild = query(&sb_a, resolver, "wild.example.test", RecordType::A, false);
    r.check(
        "wildcard does not match its own domain",
        rc(&wild) == Some(ResponseCode::Refused),
        format!("{:?}", rc(&wild)),
    );
    let alias = query(&sb_a, resolver, "alias.example.test", RecordType::A, false);
    let alias_addrs = alias.as_ref().map(a_records).unwrap_or_default();
    let only_queried_name = alias.as_ref().is_some_and(|m| {
        m.answers()
            .iter()
            .all(|rec| rec.name().to_ascii() == "alias.example.test.")
    });
    r.check(
        "CNAME allowed->unlisted: flattened answer for the allowed name only",
        alias_addrs == vec![Ipv4Addr::new(198, 18, 0, 13)] && only_queried_name,
        format!("{alias_addrs:?}, only queried name: {only_queried_name}"),
    );
    r.check(
        "CNAME target address pinned for the allowed name's port",
        tcp_works(&sb_a, sa([198, 18, 0, 13], 443))
            && !tcp_works(&sb_a, sa([198, 18, 0, 13], 8443)),
        "198.18.0.13:443 open, :8443 closed",
    );
    let target = query(&sb_a, resolver, "target.other.test", RecordType::A, false);
    r.check(
        "CNAME target queried directly refused",
        rc(&target) == Some(ResponseCode::Refused),
        format!("{:?}", rc(&target)),
    );
    for ty in [RecordType::TXT, RecordType::ANY, RecordType::MX] {
        let m = query(&sb_a, resolver, "api.example.test", ty, false);
        r.check(
            &format!("{ty} query for an allowed name refused"),
            rc(&m) == Some(ResponseCode::Refused)
                && m.as_ref().is_some_and(|m| m.answers().is_empty()),
            format!("{:?}", rc(&m)),
        );
    }
    let aaaa = query(&sb_a, resolver, "api.example.test", RecordType::AAAA, false);
    r.check(
        "AAAA for an allowed name: empty NOERROR",
        rc(&aaaa) == Some(ResponseCode::NoError)
            && aaaa.as_ref().is_some_and(|m| m.answers().is_empty()),
        format!("{:?}", rc(&aaaa)),
    );
    let other_dns = query(
        &sb_a,
        sa([198, 18, 0, 53], 53),
        "unlisted.test",
        RecordType::A,
        false,
    );
    r.check(
        "direct UDP to another DNS server blocked",
        other_dns.is_none(),
        "198.18.0.53:53/udp",
    );
    let other_dns_tcp = query(
        &sb_a,
        sa([198, 18, 0, 53], 53),
        "unlisted.test",
        RecordType::A,
        true,
    );
    r.check(
        "direct TCP to another DNS server blocked",
        other_dns_tcp.is_none(),
        "198.18.0.53:53/tcp",
    );
    r.check(
        "DoT (853) blocked",
        !tcp_works(&sb_a, sa([198, 18, 0, 53], 853)),
        "198.18.0.53:853",
    );
    r.check(
        "DoH to a resolver IP (443, not pinned) blocked",
        !tcp_works(&sb_a, sa([198, 18, 0, 53], 443)),
        "198.18.0.53:443",
    );
    r.check(
        "IPv6 to an unlisted host blocked",
        !tcp_works(&sb_a, "[2001:db8:ff::10]:443".parse().unwrap()),
        "[2001:db8:ff::10]:443",
    );
    let ping = sb_a.exec(&["ping", "-c", "1", "-W", "1", "198.18.0.10"]);
    r.check(
        "ICMP to a pinned address blocked",
        !ping.status.success(),
        format!("ping exit {:?}", ping.status.code()),
    );
    r.check(
        "UDP to an allowed (pinned) IP blocked",
        !udp_works(&sb_a, sa([198, 18, 0, 10], 443)),
        "198.18.0.10:443/udp",
    );
    r.check(
        "UDP elsewhere blocked",
        !udp_works(&sb_a, sa([198, 18, 0, 10], 5353)),
        "198.18.0.10:5353/udp",
    );
    for (n, what) in [
        ("private.example.test", "10.0.0.5"),
        ("meta.example.test", "169.254.169.254"),
    ] {
        let m = query(&sb_a, resolver, n, RecordType::A, false);
        r.check(
            &format!("allowed name resolving to {what} not handed out"),
            rc(&m) == Some(ResponseCode::Refused)
                && m.as_ref().map(a_records).unwrap_or_default().is_empty(),
            format!("{:?}", rc(&m)),
        );
    }
    let mixed = query(&sb_a, resolver, "mixed.example.test", RecordType::A, false);
    r.check(
        "mixed answer: loopback filtered, public kept",
        mixed.as_ref().map(a_records) == Some(vec![Ipv4Addr::new(198, 18, 0, 15)]),
        format!("{:?}", mixed.as_ref().map(a_records)),
    );
    r.check(
        "metadata address blocked directly",
        !tcp_works(&sb_a, sa([169, 254, 169, 254], 80)),
        "169.254.169.254:80",
    );
    r.check(
        "host's own service (router side, gateway IP) blocked",
        !tcp_works(&sb_a, SocketAddr::from((net_a.gateway, 2222))),
        format!("{}:2222", net_a.gateway),
    );
    r.check(
        "host's own service (other host IP) blocked",
        !tcp_works(&sb_a, sa([198, 18, 0, 1], 2222)),
        "198.18.0.1:2222",
    );
    r.check(
        "another sandbox's resolver blocked",
        query(
            &sb_a,
            prep_b.resolver,
            "api.example.test",
            RecordType::A,
            false,
        )
        .is_none(),
        format!("{}", prep_b.resolver),
    );
    r.check(
        "another sandbox blocked",
        !tcp_works(&sb_a, SocketAddr::from((net_b.sandbox_addr, 443))),
        format!("{}:443", net_b.sandbox_addr),
    );
    // Pins are per server: B resolved nothing, so A's pins do not open anything for B.
    r.check(
        "pins are per server (B cannot use A's pin)",
        !tcp_works(&sb_b, sa([198, 18, 0, 13], 443)),
        "B -> 198.18.0.13:443",
    );

    // Expiry: pin_ttl_min 2s for a TTL-0 answer.
    let short = query(&sb_a, resolver, "short.example.test", RecordType::A, false);
    let held = tcp_open(&sb_a, sa([198, 18, 0, 14], 443));
    r.check(
        "TTL-0 answer pinned for pin_ttl_min",
        short.as_ref().map(a_records) == Some(vec![Ipv4Addr::new(198, 18, 0, 14)])
            && held.is_some(),
        "198.18.0.14:443 connected",
    );
    tokio::time::sleep(Duration::from_millis(3500)).await;
    r.check(
        "expired pin: new connection blocked",
        !tcp_works(&sb_a, sa([198, 18, 0, 14], 443)),
        "after 3.5 s",
    );
    let survived = held.is_some_and(|mut c| {
        c.write_all(b"hi").is_ok() && {
            let mut b = [0u8; 2];
            c.read_exact(&mut b).is_ok() && &b == b"hi"
        }
    });
    r.check(
        "expired pin: established connection survives",
        survived,
        "echo on the held connection",
    );

    // Rotation: each answer pins the address it hands out. The name's TTL is 1 s: the
    // resolver repeats its answer from the cache for that long, so the questions are spaced.
    let mut seen = BTreeSet::new();
    let mut rotation_ok = true;
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
        let m = query(&sb_a, resolver, "rot.example.test", RecordType::A, false);
        for a in m.as_ref().map(a_records).unwrap_or_default() {
            seen.insert(a);
            rotation_ok &= tcp_works(&sb_a, SocketAddr::from((a, 443)));
        }
    }
    r.check(
        "address rotation: every new answer's address works",
        rotation_ok && seen.len() == 2,
        format!("{seen:?}"),
    );

    // Pin before answer: connect the instant the answer arrives, many times.
    let mut all = 0;
    let mut total = 0;
    let mut errors = Vec::new();
    for round in 0..10 {
        let m = query(&sb_a, resolver, "api.example.test", RecordType::A, false);
        total += 100;
        if m.as_ref().map(a_records) != Some(vec![Ipv4Addr::new(198, 18, 0, 10)]) {
            errors.push(format!("round {round}: no answer"));
            continue;
        }
        // The first connect is issued the instant the answer is in: if the pin were added
        // after answering, it would race the SYN and lose sometimes.
        let (ok, errs) = sb_a.run(move || {
            let mut ok = 0;
            let mut errs = Vec::new();
            for i in 0..100 {
                match std::net::TcpStream::connect_timeout(
                    &SocketAddr::from(([198, 18, 0, 10], 443)),
                    Duration::from_secs(3),
                ) {
                    Ok(_) => ok += 1,
                    Err(e) => errs.push(format!("connect {i}: {e}")),
                }
            }
            (ok, errs)
        });
        all += ok;
        errors.extend(errs.into_iter().map(|e| format!("round {round} {e}")));
    }
    r.check(
        "1,000 connects right after answers all succeed",
        all == 1000 && total == 1000,
        format!("{all}/{total} {errors:?}"),
    );

    // Denials are counted and reported.
    let denied = egress.denied().await.expect("denied");
    let a_denied = denied.get(&name_a).copied().unwrap_or(0);
    let mut saw_event = false;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !saw_event {
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await
        {
            saw_event |= matches!(ev, EgressEvent::Denied { ref server, packets, .. } if *server == name_a && packets > 0);
        }
    }
    r.check(
        "denials counted and reported as events",
        a_denied > 0 && saw_event,
        format!("{a_denied} packets"),
    );

    // Tampering: flush the whole ruleset of the router namespace by hand. An owned table is
    // passed by (the kernel skips tables owned by another socket); without ownership the watch
    // puts it back.
    let flush = router.exec(&["nft", "flush", "ruleset"]);
    assert!(flush.status.success());
    let mut restored = false;
    let deadline = Instant::now() + Duration::from_secs(if owned { 1 } else { 5 });
    while Instant::now() < deadline && !restored {
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await
        {
            restored |= matches!(ev, EgressEvent::Restored { .. });
        }
    }
    let listed = router.exec(&["nft", "list", "table", "inet", &table]);
    let text = String::from_utf8_lossy(&listed.stdout).to_string();
    r.check(
        if owned {
            "flushed ruleset passes the owned table by"
        } else {
            "flushed ruleset detected and restored"
        },
        restored != owned && listed.status.success() && text.contains(&ruleset::srv_chain(&name_a)),
        format!("owned: {owned}, restored event: {restored}"),
    );
    r.check(
        "after restore: unlisted IP still blocked",
        !tcp_works(&sb_a, sa([198, 18, 0, 30], 443)),
        "198.18.0.30:443",
    );
    let again = query(&sb_a, resolver, "api.example.test", RecordType::A, false);
    r.check(
        "after restore: allowed name works again",
        again.as_ref().map(a_records) == Some(vec![Ipv4Addr::new(198, 18, 0, 10)])
            && tcp_works(&sb_a, sa([198, 18, 0, 10], 443)),
        "api.example.test:443",
    );
    // Flushing just one chain: refused for an owned table, noticed and undone otherwise.
    let del = router.exec(&[
        "nft",
        "flush",
        "chain",
        "inet",
        &table,
        &ruleset::srv_chain(&name_a),
    ]);
    if owned {
        let err = String::from_utf8_lossy(&del.stderr).to_string();
        r.check(
            "flushing a chain of the owned table is refused (EPERM)",
            !del.status.success() && err.contains("Operation not permitted"),
            err.trim().replace('\n', " | "),
        );
    } else {
        assert!(
            del.status.success(),
            "{}",
            String::from_utf8_lossy(&del.stderr)
        );
    }
    let mut restored = owned;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !restored {
        if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(500), events.recv()).await
        {
            restored |= matches!(ev, EgressEvent::Restored { .. });
        }
    }
    r.check(
        "after the chain flush: unlisted IP still blocked",
        restored && !tcp_works(&sb_a, sa([198, 18, 0, 30], 443)),
        format!("owned: {owned}, restored event: {restored}"),
    );

    // The process runtime's prefix gives the child the gateway as its only resolver.
    let mut cmd = net_a.command_prefix();
    cmd.extend(["cat".to_string(), "/etc/resolv.conf".to_string()]);
    let out = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap();
    r.check(
        "process runtime: child sees only the gateway resolver",
        String::from_utf8_lossy(&out.stdout).contains(&format!("nameserver {}", net_a.gateway)),
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .replace('\n', " | "),
    );

    egress.release(&name_a).await.expect("release a");
    egress.release(&name_b).await.expect("release b");
    let gone = router.exec(&[
        "nft",
        "list",
        "chain",
        "inet",
        &table,
        &ruleset::srv_chain(&name_a),
    ]);
    r.check(
        "release removes the server's chains",
        !gone.status.success(),
        "",
    );
    r.check(
        "released interface stays closed (the instance's catch-all drop)",
        !tcp_works(&sb_a, sa([198, 18, 0, 10], 443)),
        "",
    );

    drop(egress);
    drop(net_a);
    drop(net_b);

    eprintln!("\n| case | outcome |\n|---|---|");
    for (case, ok, _) in &r.0 {
        eprintln!("| {case} | {} |", if *ok { "pass" } else { "FAIL" });
    }
    let failed: Vec<_> = r.0.iter().filter(|(_, ok, _)| !ok).collect();
    assert!(failed.is_empty(), "failed cases: {failed:#?}");
}
