//! The fake outside world of the tests that run real containers behind the egress firewall
//! (`egress_gateway.rs`, `egress_sidecar.rs`): a namespace "external" with the test's DNS
//! server, TCP banners and UDP echoes on 198.18.K.x, and policy routing that sends everything
//! from the sandbox pool 10.214.K.0/24 there and nowhere else, so even a broken firewall can
//! reach only hosts the test made. Privileged (root, `ip`).
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::netlab::{self, dns_server, sh, tcp_service, udp_echo, Ns, Zone};

/// The fake outside world of one test (see the module comment); removed on drop.
pub struct HostLab {
    pub k: u8,
    pub veth: String,
    pub ext: Ns,
    pub table: String,
    pub prefs: [String; 2],
    pub pool: String,
}

impl HostLab {
    pub fn new() -> HostLab {
        let t = netlab::tag();
        let k = u8::try_from(1 + std::process::id() % 200).unwrap();
        let veth = format!("plab{k}");
        let pool = format!("10.214.{k}.0/24");
        let table = format!("{}", 30000 + u32::from(k));
        let prefs = [
            format!("{}", 30000 + 2 * u32::from(k)),
            format!("{}", 30001 + 2 * u32::from(k)),
        ];
        // Leftovers of a run of this test that died.
        let _ = Command::new("ip").args(["link", "del", &veth]).output();
        clear_rules(&prefs, &table);
        let ext = Ns::new(format!("pcg-e{t}"));
        sh(&[
            "ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ext.name,
        ]);
        let lab = HostLab {
            k,
            veth: veth.clone(),
            ext,
            table: table.clone(),
            prefs: prefs.clone(),
            pool: pool.clone(),
        };
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("198.18.{k}.1/24"),
            "dev",
            &veth,
        ]);
        sh(&["ip", "link", "set", &veth, "up"]);
        for h in [10, 11, 12, 13, 14, 15, 30, 53] {
            lab.ext
                .ip(&["addr", "add", &format!("198.18.{k}.{h}/24"), "dev", "eth0"]);
        }
        lab.ext
            .ip(&["addr", "add", "169.254.169.254/32", "dev", "eth0"]);
        lab.ext.ip(&["link", "set", "eth0", "up"]);
        // Sandbox to sandbox stays on the host's own routes (so the firewall, not routing,
        // decides); everything else from the pool goes to the external namespace only.
        sh(&[
            "ip", "rule", "add", "pref", &prefs[0], "from", &pool, "to", &pool, "lookup", "main",
        ]);
        sh(&[
            "ip", "rule", "add", "pref", &prefs[1], "from", &pool, "lookup", &table,
        ]);
        sh(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("198.18.{k}.10"),
            "dev",
            &veth,
            "table",
            &table,
        ]);
        lab
    }

    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.k, host)
    }

    pub fn sa(&self, host: u8, port: u16) -> String {
        format!("198.18.{}.{host}:{port}", self.k)
    }

    /// The external services: the test's DNS zone, TCP banners, UDP echoes.
    pub fn serve(&self) -> Arc<Zone> {
        let zone = Arc::new(Zone {
            net: [198, 18, self.k],
            rotation: vec![self.ip(11), self.ip(12)],
            queries: AtomicUsize::new(0),
        });
        dns_server(&self.ext, SocketAddr::from((self.ip(53), 53)), zone.clone());
        for port in [443u16, 8443, 853, 80] {
            tcp_service(
                &self.ext,
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                "ok",
            );
        }
        udp_echo(&self.ext, "0.0.0.0:443".parse().unwrap());
        zone
    }
}

pub fn clear_rules(prefs: &[String], table: &str) {
    for pref in prefs {
        while Command::new("ip")
            .args(["rule", "del", "pref", pref])
            .output()
            .is_ok_and(|o| o.status.success())
        {}
    }
    let _ = Command::new("ip")
        .args(["route", "flush", "table", table])
        .output();
}

impl Drop for HostLab {
    fn drop(&mut self) {
        clear_rules(&self.prefs, &self.table);
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}
