//! Counting logged drops per server and destination between two reports, with fixed caps: a
//! server that sprays thousands of addresses and ports grows neither memory nor the audit log.
//!
//! Two caps: [`TRACKED`] distinct destinations per server are counted exactly between two
//! reports (later new ones only add to an `other` count), and a report keeps the [`REPORTED`]
//! largest, summing the rest into one `other` entry. Servers are capped too ([`SERVERS`]);
//! their names come from our own rules' log prefixes, not from packets.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::parse::Dest;

/// Distinct destinations counted per server between two reports.
pub const TRACKED: usize = 64;
/// Destinations a report names per server (the rest are summed as `other`).
pub const REPORTED: usize = 16;
/// Servers tallied at once (more than any policy runs in one namespace).
pub const SERVERS: usize = 1024;

/// The `dest` of the entry that sums destinations past the caps.
pub const OTHER: &str = "other";

/// One destination of denied traffic and how many of its packets were logged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeniedDest {
    /// An address (`198.18.0.9`, `fd00::9`), a refused DNS name, or [`OTHER`].
    pub dest: String,
    /// `tcp`, `udp`, `icmp`, ..., `dns` for a refused name, `any` for [`OTHER`].
    pub proto: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub packets: u64,
}

impl DeniedDest {
    pub fn from_dest(d: &Dest, packets: u64) -> DeniedDest {
        DeniedDest {
            dest: d.addr.to_string(),
            proto: d.proto_name(),
            port: d.port,
            packets,
        }
    }

    fn is_other(&self) -> bool {
        self.dest == OTHER && self.proto == "any"
    }

    /// `198.18.0.9:443/tcp`, `[fd00::9]:443/tcp`, `198.18.0.9/icmp`, `other`.
    pub fn label(&self) -> String {
        if self.is_other() {
            return OTHER.into();
        }
        let host = if self.dest.contains(':') {
            format!("[{}]", self.dest)
        } else {
            self.dest.clone()
        };
        match self.port {
            Some(p) => format!("{host}:{p}/{}", self.proto),
            // A refused DNS name: `unlisted.test/dns`.
            None => format!("{}/{}", self.dest, self.proto),
        }
    }
}

/// `3 packet(s) ...: 198.18.0.9:443/tcp (2), 198.18.0.7:53/udp (1)`.
pub fn describe(dests: &[DeniedDest]) -> String {
    dests
        .iter()
        .map(|d| format!("{} ({})", d.label(), d.packets))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `other` entry for `packets` packets.
fn other(packets: u64) -> DeniedDest {
    DeniedDest {
        dest: OTHER.into(),
        proto: "any".into(),
        port: None,
        packets,
    }
}

/// Merges `more` into `into`, then keeps the [`REPORTED`] largest (ties by name, so the
/// result does not depend on arrival order) and sums the rest into `other`.
pub fn merge(into: &mut Vec<DeniedDest>, more: Vec<DeniedDest>) {
    let mut by: BTreeMap<(String, String, Option<u16>), u64> = BTreeMap::new();
    for d in into.drain(..).chain(more) {
        let n = by.entry((d.dest, d.proto, d.port)).or_default();
        *n = n.saturating_add(d.packets);
    }
    let mut all: Vec<DeniedDest> = by
        .into_iter()
        .map(|((dest, proto, port), packets)| DeniedDest {
            dest,
            proto,
            port,
            packets,
        })
        .collect();
    let mut rest: u64 = all.iter().filter(|d| d.is_other()).map(|d| d.packets).sum();
    all.retain(|d| !d.is_other());
    all.sort_by(|a, b| b.packets.cmp(&a.packets).then_with(|| a.cmp(b)));
    for d in all.drain(REPORTED.min(all.len())..) {
        rest = rest.saturating_add(d.packets);
    }
    if rest > 0 {
        all.push(other(rest));
    }
    *into = all;
}

#[derive(Default)]
struct PerServer {
    counts: HashMap<Dest, u64>,
    other: u64,
}

/// Logged drops since the last [`Tally::take`], per server (by its log prefix).
#[derive(Default)]
pub struct Tally {
    servers: HashMap<String, PerServer>,
    /// Drops of servers past [`SERVERS`] (never reported; only counted for the log).
    pub unplaced: u64,
}

impl Tally {
    pub fn add(&mut self, server: &str, d: Dest) {
        if !self.servers.contains_key(server) && self.servers.len() >= SERVERS {
            self.unplaced = self.unplaced.saturating_add(1);
            return;
        }
        let s = self.servers.entry(server.to_owned()).or_default();
        if let Some(n) = s.counts.get_mut(&d) {
            *n = n.saturating_add(1);
        } else if s.counts.len() < TRACKED {
            s.counts.insert(d, 1);
        } else {
            s.other = s.other.saturating_add(1);
        }
    }

    /// Whether anything is waiting for `server`.
    pub fn has(&self, server: &str) -> bool {
        self.servers.contains_key(server)
    }

    /// `server`'s destinations since the last call (at most [`REPORTED`] plus `other`).
    pub fn take(&mut self, server: &str) -> Vec<DeniedDest> {
        let Some(s) = self.servers.remove(server) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut list: Vec<DeniedDest> = s
            .counts
            .iter()
            .map(|(d, n)| DeniedDest::from_dest(d, *n))
            .collect();
        if s.other > 0 {
            list.push(other(s.other));
        }
        merge(&mut out, list);
        out
    }

    /// Drops what is kept for servers not in `keep` (removed servers, foreign prefixes).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.servers.retain(|k, _| keep(k));
    }

    pub fn distinct(&self) -> usize {
        self.servers.values().map(|s| s.counts.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn d(last: u8, port: u16) -> Dest {
        Dest {
            addr: IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)),
            proto: 6,
            port: Some(port),
        }
    }

    #[test]
    fn a_flood_of_destinations_is_capped_and_summed() {
        let mut t = Tally::default();
        // One destination tried before the flood, and more often than any other, is kept and
        // named first (new destinations past the cap only add to `other`).
        for _ in 0..50 {
            t.add("web", d(9, 443));
        }
        // Thousands of distinct ports and addresses: the map stops growing at the cap.
        for i in 0..20_000u32 {
            t.add("web", d((i % 200) as u8, (i % 5000) as u16 + 1));
            assert!(t.distinct() <= TRACKED);
        }
        let out = t.take("web");
        assert_eq!(out.len(), REPORTED + 1);
        assert_eq!(out[0].label(), "198.18.0.9:443/tcp");
        assert_eq!(out[0].packets, 50);
        let last = out.last().unwrap();
        assert_eq!(last.label(), "other");
        let total: u64 = out.iter().map(|d| d.packets).sum();
        assert_eq!(total, 20_050, "every logged packet is counted once");
        assert!(t.take("web").is_empty(), "taken means gone");
        assert!(!t.has("web"));
    }

    #[test]
    fn servers_are_capped_and_merging_keeps_the_order_stable() {
        let mut t = Tally::default();
        for i in 0..(SERVERS + 10) {
            t.add(&format!("s{i}"), d(1, 1));
        }
        assert_eq!(t.unplaced, 10);
        let mut a = vec![DeniedDest::from_dest(&d(7, 53), 1)];
        merge(&mut a, vec![DeniedDest::from_dest(&d(9, 443), 2)]);
        merge(&mut a, vec![DeniedDest::from_dest(&d(7, 53), 1), other(4)]);
        assert_eq!(
            describe(&a),
            "198.18.0.7:53/tcp (2), 198.18.0.9:443/tcp (2), other (4)"
        );
    }

    #[test]
    fn labels_for_v6_icmp_and_names() {
        let v6 = DeniedDest {
            dest: "fd00::9".into(),
            proto: "udp".into(),
            port: Some(53),
            packets: 1,
        };
        assert_eq!(v6.label(), "[fd00::9]:53/udp");
        let icmp = DeniedDest {
            dest: "198.18.0.1".into(),
            proto: "icmp".into(),
            port: None,
            packets: 1,
        };
        assert_eq!(icmp.label(), "198.18.0.1/icmp");
    }
}
