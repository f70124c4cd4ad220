//! Pins: the elements the resolver adds to a server's sets, and the worker's memory of them.
//!
//! The kernel keeps the authoritative copy with its own timeouts. The cache exists so that a
//! table replacement (a server added or removed, or a restore after tampering) can put the live
//! pins back with their remaining lifetime instead of cutting every sandbox off until its next
//! lookup.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use super::nft;
use super::ruleset;

/// One pinned destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pin {
    pub addr: Ipv4Addr,
    /// `None`: the name was allowed on every port (`pinany_` set).
    pub port: Option<u16>,
}

impl Pin {
    pub fn set_name(&self, server: &str) -> String {
        match self.port {
            Some(_) => ruleset::pin_set(server),
            None => ruleset::pin_any_set(server),
        }
    }

    pub fn key(&self) -> Vec<u8> {
        match self.port {
            Some(p) => nft::key_addr_port(self.addr, p),
            None => nft::key_addr(self.addr),
        }
    }
}

/// The worker's record of live pins: (server, pin) -> expiry.
#[derive(Debug, Default)]
pub struct PinCache {
    live: BTreeMap<(String, Pin), Instant>,
}

impl PinCache {
    /// Pins grouped by set, ready for one batch, each with `timeout` or, when it is already
    /// pinned for longer, its remaining time: a pin is never shortened, because an answer that
    /// was handed out (and may be repeated from the resolver's cache) counts on it. Only a
    /// change of the server's rules drops pins early.
    pub fn lengthen(
        &self,
        server: &str,
        pins: &[Pin],
        timeout: Duration,
        now: Instant,
    ) -> BTreeMap<String, Vec<(Vec<u8>, Duration)>> {
        let mut out: BTreeMap<String, Vec<(Vec<u8>, Duration)>> = BTreeMap::new();
        for p in pins {
            let left = self
                .live
                .get(&(server.to_string(), *p))
                .map_or(Duration::ZERO, |exp| exp.saturating_duration_since(now));
            out.entry(p.set_name(server))
                .or_default()
                .push((p.key(), timeout.max(left)));
        }
        out
    }

    /// Notes pins made at `now` for `timeout` (never shortening a longer one).
    pub fn record(&mut self, server: &str, pins: &[Pin], timeout: Duration, now: Instant) {
        for p in pins {
            let exp = self
                .live
                .entry((server.to_string(), *p))
                .or_insert(now + timeout);
            *exp = (*exp).max(now + timeout);
        }
    }

    pub fn prune(&mut self, now: Instant) {
        self.live.retain(|_, exp| *exp > now);
    }

    pub fn forget_server(&mut self, server: &str) {
        self.live.retain(|(s, _), _| s != server);
    }

    /// What to re-add after a table replacement: per set, elements with their remaining time.
    pub fn replay(&self, now: Instant) -> BTreeMap<String, Vec<(Vec<u8>, Duration)>> {
        let mut out: BTreeMap<String, Vec<(Vec<u8>, Duration)>> = BTreeMap::new();
        for ((server, pin), exp) in &self.live {
            let left = exp.saturating_duration_since(now);
            // Less than a millisecond left rounds to a zero timeout, which the kernel would
            // read as "no timeout": such a pin is simply not replayed.
            if left >= Duration::from_millis(1) {
                out.entry(pin.set_name(server))
                    .or_default()
                    .push((pin.key(), left));
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_keeps_only_live_pins_with_their_remaining_time() {
        let mut c = PinCache::default();
        let t0 = Instant::now();
        let a = Pin {
            addr: Ipv4Addr::new(198, 18, 0, 10),
            port: Some(443),
        };
        let b = Pin {
            addr: Ipv4Addr::new(198, 18, 0, 11),
            port: None,
        };
        c.record("git", &[a], Duration::from_secs(10), t0);
        c.record("git", &[b], Duration::from_secs(1), t0);
        let r = c.replay(t0 + Duration::from_secs(2));
        assert_eq!(r.len(), 1);
        let elems = &r["pin_git"];
        assert_eq!(elems[0].1, Duration::from_secs(8));
        c.prune(t0 + Duration::from_secs(2));
        assert_eq!(c.len(), 1);
        c.forget_server("git");
        assert!(c.is_empty());
    }

    #[test]
    fn a_shorter_pin_never_cuts_a_longer_one() {
        let mut c = PinCache::default();
        let t0 = Instant::now();
        let a = Pin {
            addr: Ipv4Addr::new(198, 18, 0, 15),
            port: Some(443),
        };
        let b = Pin {
            addr: Ipv4Addr::new(198, 18, 0, 16),
            port: Some(443),
        };
        c.record("git", &[a], Duration::from_secs(30), t0);
        // Another name with a TTL of 1 resolves to the same address 5 s later.
        let t1 = t0 + Duration::from_secs(5);
        let batch = c.lengthen("git", &[a, b], Duration::from_secs(2), t1);
        assert_eq!(
            batch["pin_git"],
            vec![
                (a.key(), Duration::from_secs(25)),
                (b.key(), Duration::from_secs(2))
            ]
        );
        c.record("git", &[a, b], Duration::from_secs(2), t1);
        let r = c.replay(t1);
        assert!(r["pin_git"].contains(&(a.key(), Duration::from_secs(25))));
        // A longer one does lengthen it.
        c.record("git", &[a], Duration::from_secs(300), t1);
        assert!(c.replay(t1)["pin_git"].contains(&(a.key(), Duration::from_secs(300))));
        // Another server's pins are its own.
        let other = c.lengthen("db", &[a], Duration::from_secs(2), t1);
        assert_eq!(other["pin_db"], vec![(a.key(), Duration::from_secs(2))]);
    }
}
