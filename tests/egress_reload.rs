//! A reload that changes a running server's allow list, attacked where it is weakest: the
//! moment the new table goes in. A lookup judged by the old rules that is still in flight then
//! (or that races it) must not pin the removed name's address into the new table, and the
//! address of a name the reload removed must be closed at once, well within its old pin's
//! lifetime. Privileged (root, `ip`, `nft`); the lab is `common::netlab`'s, every host made
//! here (the same engine serves host mode and, inside each agent, sidecar mode).
//!
//! ```text
//!  sandbox (pcs-…) ──veth pc…─── router (table, resolver) ──veth ext0── external 198.18.0.10-12,53
//! ```

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::netlab::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use portcullis::egress::netns::ProcessNet;
use portcullis::egress::{Attachment, Egress, EgressOptions, Names};
use portcullis::instance::InstanceId;
use portcullis::policy::Server;

/// The server `name` allowed `allow`; every pin lives at least 30 s, so every probe below is
/// well within the lifetime of a pin made before the reload.
fn policy(name: &str, allow: &str) -> portcullis::policy::Policy {
    let src = format!(
        r#"
[egress]
upstream_resolvers = ["198.18.0.53:53"]
pin_ttl_min = "30s"
pin_ttl_max = "60s"

[servers.{name}]
runtime = "process"
command = "true"
egress.allow = ["{allow}"]
"#
    );
    portcullis::policy::parse(&src, "<reload race>").expect("policy")
}

fn server(name: &str, allow: &str) -> Server {
    policy(name, allow).servers[name].clone()
}

fn sa(ip: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(ip), port))
}

const API: [u8; 4] = [198, 18, 0, 10];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lookup_in_flight_across_a_reload_pins_nothing_the_new_rules_removed() {
    if !privileged() {
        return;
    }
    let t = tag();
    let name = format!("rr-{t}");
    let old = server(&name, "api.example.test:443");
    let new = server(&name, "rot.example.test:443");

    let router = Ns::new(format!("pct-r{t}"));
    let ext = Ns::new(format!("pct-e{t}"));
    let o = router.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    assert!(o.status.success(), "sysctl");
    router.ip(&[
        "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
    ]);
    router.ip(&["addr", "add", "198.18.0.1/24", "dev", "ext0"]);
    router.ip(&["link", "set", "ext0", "up"]);
    for a in ["10", "11", "12", "53"] {
        ext.ip(&["addr", "add", &format!("198.18.0.{a}/24"), "dev", "eth0"]);
    }
    ext.ip(&["link", "set", "eth0", "up"]);
    ext.ip(&["route", "add", "default", "via", "198.18.0.1"]);
    let zone = Zone::new(
        [198, 18, 0],
        vec![[198, 18, 0, 11].into(), [198, 18, 0, 12].into()],
    );
    dns_server(&ext, sa([198, 18, 0, 53], 53), zone.clone());
    tcp_service(&ext, "0.0.0.0:443".parse().expect("addr"), "ok");

    // The service takes its settings (upstream resolver, pin lifetimes) from this policy.
    let policy = policy(&name, "api.example.test:443");
    let egress = Egress::start_with(
        &policy,
        EgressOptions {
            netns: Some(router.path()),
            watch_interval: Duration::from_millis(300),
            resolver_port: 53,
            names: Names::new(InstanceId::parse(&format!("rr{t}")).expect("instance id")),
            ..Default::default()
        },
    )
    .await
    .expect("egress start");
    let sub = egress.allocate_subnet(&name).expect("subnet");
    let net = ProcessNet::create(egress.names(), &name, sub, Some(&router.name)).expect("netns");
    // `ProcessNet` owns the namespace; this view must not delete it twice.
    let sb = std::mem::ManuallyDrop::new(Ns {
        name: net.netns.clone(),
    });
    let prep = egress
        .prepare(
            &old,
            Attachment::Veth {
                iface: net.iface.clone(),
                gateway: net.gateway,
                subnet: sub,
            },
        )
        .await
        .expect("prepare");
    let resolver = prep.resolver;
    let sb_path = sb.path();
    let ask = move |name: &'static str| {
        let path = sb_path.clone();
        tokio::task::spawn_blocking(move || query_in(&path, resolver, name, RecordType::A, false))
    };
    let mut r = Cases::default();

    // --- 1. a pin made before the reload is closed at once ------------------------------
    let a = ask("api.example.test").await.expect("join");
    r.check(
        "before: the allowed name resolves",
        a.as_ref().map(a_records) == Some(vec![API.into()]),
        format!("{:?}", a.map(|m| a_records(&m))),
    );
    r.check(
        "before: its address works",
        tcp_works(&sb, sa(API, 443)),
        "",
    );
    assert!(egress.reprogram(&new).await.expect("reprogram"), "prepared");
    r.check(
        "reload: the removed address is blocked within its old pin's lifetime",
        !tcp_works(&sb, sa(API, 443)),
        "30 s pin made a moment ago",
    );

    // --- 2. a lookup judged by the old rules, in flight while the new table goes in -----
    assert!(
        egress.reprogram(&old).await.expect("reprogram back"),
        "prepared"
    );
    zone.delay_ms.store(900, Ordering::SeqCst);
    let in_flight = ask("api.example.test");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(egress.reprogram(&new).await.expect("reprogram"), "prepared");
    let late = in_flight.await.expect("join");
    zone.delay_ms.store(0, Ordering::SeqCst);
    let late_addrs = late.as_ref().map(a_records).unwrap_or_default();
    r.check(
        "in flight: the answer judged by the old rules hands out nothing",
        late_addrs.is_empty(),
        format!(
            "{:?} {late_addrs:?}",
            late.as_ref().map(|m| m.response_code())
        ),
    );
    r.check(
        "in flight: it pinned nothing (the removed address stays blocked)",
        !tcp_works(&sb, sa(API, 443)),
        "",
    );
    let rc = ask("api.example.test").await.expect("join");
    r.check(
        "after: the removed name is refused",
        rc.as_ref().map(|m| m.response_code()) == Some(ResponseCode::Refused),
        format!("{:?}", rc.map(|m| m.response_code())),
    );
    let rot = ask("rot.example.test").await.expect("join");
    let rot_addrs = rot.as_ref().map(a_records).unwrap_or_default();
    r.check(
        "after: the newly allowed name resolves and works",
        rot_addrs.len() == 1 && tcp_works(&sb, SocketAddr::from((rot_addrs[0], 443))),
        format!("{rot_addrs:?}"),
    );

    // --- 3. lookups racing the reload, without a delay ------------------------------------
    for round in 0..5 {
        assert!(
            egress.reprogram(&old).await.expect("reprogram back"),
            "prepared"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut askers = Vec::new();
        for _ in 0..4 {
            let (stop, path) = (stop.clone(), sb.path());
            askers.push(tokio::task::spawn_blocking(move || {
                while !stop.load(Ordering::SeqCst) {
                    let _ = query_in(&path, resolver, "api.example.test", RecordType::A, false);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(egress.reprogram(&new).await.expect("reprogram"), "prepared");
        tokio::time::sleep(Duration::from_millis(150)).await;
        stop.store(true, Ordering::SeqCst);
        for a in askers {
            a.await.expect("join");
        }
        r.check(
            &format!("race round {round}: the removed address is blocked after the reload"),
            !tcp_works(&sb, sa(API, 443)),
            "",
        );
    }

    egress.release(&name).await.expect("release");
    drop(egress);
    drop(net);
    r.finish();
}

#[derive(Default)]
struct Cases(Vec<(String, bool, String)>);

impl Cases {
    fn check(&mut self, case: &str, ok: bool, detail: impl Into<String>) {
        let detail = detail.into();
        eprintln!("[{}] {case}: {detail}", if ok { "PASS" } else { "FAIL" });
        self.0.push((case.to_string(), ok, detail));
    }

    fn finish(self) {
        let failed: Vec<_> = self.0.iter().filter(|(_, ok, _)| !ok).collect();
        assert!(failed.is_empty(), "failed cases: {failed:#?}");
    }
}
