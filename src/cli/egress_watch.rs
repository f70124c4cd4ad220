//! What the gateway does with the egress firewall's events, once the firewall has started:
//! - `Denied`: counted in `/metrics` (`portcullis_egress_denied_total`) and written to the audit
//!   log as `egress_denied` records, at most one per server per [`DENIED_EVERY`] (the first at
//!   once, later ones summed), so a server hammering a closed port cannot flood the log;
//! - `DnsOverBudget`: an `egress_denied` record with outcome `rate_limited`, at most one per
//!   server per [`DENIED_EVERY`] like denials (the resolver already counted each refusal in
//!   `/metrics`, `portcullis_egress_dns_questions_total{outcome="over_budget"}`);
//! - `Restored`: a `tamper` record (the table was altered and put back);
//! - `RestoreFailed`: a `tamper` record, and every instance of the affected servers is stopped
//!   (their traffic is no longer filtered); they restart only once the table is in force again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::{AuditEvent, Kind, Outcome};
use crate::egress::nflog::DeniedDest;
use crate::egress::EgressEvent;
use crate::policy::{Policy, Rate, Runtime as Spec};
use crate::router::audit_trail::AuditTrail;
use crate::sandbox::backends::Backends;

/// At most one `egress_denied` record per server this often.
pub const DENIED_EVERY: Duration = Duration::from_secs(10);

/// Sums denials per server and says when a record is due.
#[derive(Debug)]
pub struct DenialThrottle {
    every: Duration,
    servers: HashMap<String, Pending>,
}

/// What one server's next record will carry.
#[derive(Debug, Default)]
struct Pending {
    /// When the last record was written.
    last: Option<Instant>,
    count: u64,
    /// Merged and capped like one report (see `egress::nflog::tally::merge`).
    dests: Vec<DeniedDest>,
}

/// A record's worth: the count and the destinations.
pub type Due = (u64, Vec<DeniedDest>);

impl Pending {
    fn is_due(&self, every: Duration, now: Instant) -> bool {
        (self.count > 0 || !self.dests.is_empty())
            && self.last.is_none_or(|t| now.duration_since(t) >= every)
    }

    fn take(&mut self, now: Instant) -> Due {
        self.last = Some(now);
        (
            std::mem::take(&mut self.count),
            std::mem::take(&mut self.dests),
        )
    }
}

impl DenialThrottle {
    pub fn new(every: Duration) -> DenialThrottle {
        DenialThrottle {
            every,
            servers: HashMap::new(),
        }
    }

    /// Adds `count` (and where they went) for `server`; returns what to record now, if a
    /// record is due.
    pub fn add(
        &mut self,
        server: &str,
        count: u64,
        dests: Vec<DeniedDest>,
        now: Instant,
    ) -> Option<Due> {
        let p = self.servers.entry(server.to_owned()).or_default();
        p.count = p.count.saturating_add(count);
        if !dests.is_empty() {
            crate::egress::nflog::tally::merge(&mut p.dests, dests);
        }
        p.is_due(self.every, now).then(|| p.take(now))
    }

    /// Totals whose window has passed (called on a timer, so a burst's tail is not lost).
    pub fn due(&mut self, now: Instant) -> Vec<(String, Due)> {
        let mut out = Vec::new();
        for (server, p) in &mut self.servers {
            if p.is_due(self.every, now) {
                out.push((server.clone(), p.take(now)));
            }
        }
        out.sort();
        out
    }
}

/// Logs what about the policy's egress will surprise: servers whose rules cannot be enforced
/// because the gateway is not root (refused at start unless the policy opts in), and name rules
/// that cannot resolve because no upstream resolver is set.
pub fn warn_about_policy(policy: &Policy) {
    let unresolvable: Vec<&str> = policy
        .servers
        .values()
        .filter(|s| crate::egress::ruleset::is_firewalled(s))
        .filter(|s| {
            s.egress.allow.iter().any(|r| {
                matches!(
                    r.host,
                    crate::policy::EgressHost::Name(_) | crate::policy::EgressHost::Wildcard(_)
                )
            })
        })
        .map(|s| s.name.as_str())
        .collect();
    if !unresolvable.is_empty() && policy.egress.upstream_resolvers.is_empty() {
        tracing::warn!(servers = ?unresolvable, "these servers allow host names, but [egress] upstream_resolvers is empty: their sandboxes cannot resolve anything");
    }
    if crate::egress::netns::is_root() {
        return;
    }
    let names: Vec<&str> = policy
        .servers
        .values()
        .filter(|s| matches!(s.runtime, Spec::Process(_)) && !s.egress.allow.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    if names.is_empty() {
        return;
    }
    if policy.egress.allow_unconfined_process {
        tracing::warn!(servers = ?names, "!!! the gateway is not root: these process servers run WITHOUT egress enforcement, on the host's network (allow_unconfined_process = true) !!!");
    } else {
        tracing::warn!(servers = ?names, "!!! the gateway is not root: these process servers have egress rules that cannot be enforced and will not start; run as root, use runtime = \"docker\", or set [egress] allow_unconfined_process = true !!!");
    }
}

/// Consumes the firewall's events for the life of the gateway (from when it starts), and the
/// reports of sidecar mode's egress agents (the same events, one agent per server).
pub fn spawn(backends: Arc<Backends>, trail: AuditTrail) -> tokio::task::JoinHandle<()> {
    if let Some(events) = backends.firewall().take_sidecar_events() {
        tokio::spawn(consume(events, backends.clone(), trail.clone()));
    }
    tokio::spawn(async move {
        let egress = backends.firewall().started().await;
        let Some(events) = egress.take_events() else {
            return;
        };
        consume(events, backends, trail).await;
    })
}

async fn consume(
    mut events: tokio::sync::mpsc::Receiver<EgressEvent>,
    backends: Arc<Backends>,
    trail: AuditTrail,
) {
    {
        let mut throttles = Throttles {
            packets: DenialThrottle::new(DENIED_EVERY),
            dns: DenialThrottle::new(DENIED_EVERY),
            dns_rates: HashMap::new(),
        };
        let mut tick = tokio::time::interval(DENIED_EVERY);
        loop {
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => handle(ev, &mut throttles, &backends, &trail).await,
                    None => return,
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    for (server, (packets, dests)) in throttles.packets.due(now) {
                        trail.record_later(denied_record(&server, packets, dests));
                    }
                    for (server, (queries, _)) in throttles.dns.due(now) {
                        let rate = throttles.dns_rates.get(&server).copied();
                        trail.record_later(over_budget_record(&server, queries, rate));
                    }
                }
            }
        }
    }
}

/// Denied packets and refused DNS questions are throttled separately: a flood of one does not
/// hide the other.
struct Throttles {
    packets: DenialThrottle,
    dns: DenialThrottle,
    /// The budget each server was last reported with, for the record's detail.
    dns_rates: HashMap<String, Rate>,
}

fn over_budget_record(server: &str, queries: u64, rate: Option<Rate>) -> AuditEvent {
    let budget = rate.map_or_else(String::new, |r| {
        format!(
            " (dns_rate {}, burst {})",
            crate::policy::units::format_rate(r.count, r.per),
            r.burst
        )
    });
    AuditEvent::new(Kind::EgressDenied)
        .server(server)
        .outcome(Outcome::RateLimited)
        .detail(format!(
            "{queries} DNS question(s) refused: over the server's DNS budget{budget}; not forwarded to the upstream resolvers"
        ))
}

fn denied_record(server: &str, packets: u64, dests: Vec<DeniedDest>) -> AuditEvent {
    let ev = AuditEvent::new(Kind::EgressDenied)
        .server(server)
        .outcome(Outcome::EgressDenied);
    if dests.is_empty() {
        return ev.detail(format!(
            "{packets} packet(s) dropped by the egress firewall (destinations outside the server's egress rules)"
        ));
    }
    // The per-destination counts are of logged packets (the log is rate-limited); the total
    // is the counters' exact one.
    ev.detail(format!(
        "{packets} packet(s) dropped by the egress firewall: {}",
        crate::egress::nflog::tally::describe(&dests)
    ))
    .destinations(dests.into_iter().map(audit_dest).collect())
}

fn audit_dest(d: DeniedDest) -> crate::audit::EgressDest {
    crate::audit::EgressDest {
        dest: d.dest,
        proto: d.proto,
        port: d.port,
        packets: d.packets,
    }
}

async fn handle(
    ev: EgressEvent,
    throttles: &mut Throttles,
    backends: &Backends,
    trail: &AuditTrail,
) {
    match ev {
        EgressEvent::Denied {
            server,
            packets,
            destinations,
        } => {
            crate::metrics::global().egress_denied(&server, packets);
            tracing::debug!(%server, packets, ?destinations, "egress denied");
            if let Some((total, dests)) =
                throttles
                    .packets
                    .add(&server, packets, destinations, Instant::now())
            {
                trail.record_later(denied_record(&server, total, dests));
            }
        }
        EgressEvent::Pinned { server, pins } => {
            tracing::debug!(%server, ?pins, "egress pinned");
        }
        EgressEvent::DnsOverBudget {
            server,
            queries,
            rate,
        } => {
            tracing::debug!(%server, queries, "DNS questions over budget");
            throttles.dns_rates.insert(server.clone(), rate);
            if let Some((total, _)) = throttles.dns.add(&server, queries, vec![], Instant::now()) {
                trail.record_later(over_budget_record(&server, total, Some(rate)));
            }
        }
        EgressEvent::Restored { reason } => {
            tracing::warn!(%reason, "egress firewall was tampered with and has been restored");
            let ev = AuditEvent::new(Kind::Tamper).detail(format!("{reason}; table restored"));
            if let Err(e) = trail.record(ev).await {
                tracing::error!(error = %e, "tamper record not written");
            }
        }
        EgressEvent::RestoreFailed { servers, error } => {
            tracing::error!(%error, servers = ?servers, "egress firewall lost and not restored: stopping the affected servers");
            let ev = AuditEvent::new(Kind::Tamper).detail(format!(
                "{error}; stopping servers without enforcement: {}",
                servers.join(", ")
            ));
            if let Err(e) = trail.record(ev).await {
                tracing::error!(error = %e, "tamper record not written");
            }
            for server in &servers {
                let n = backends.stop_server(server).await;
                if n > 0 {
                    tracing::warn!(%server, stopped = n, "stopped instances: egress not enforced");
                    trail.record_later(
                        AuditEvent::new(Kind::ContainerStop)
                            .server(server.as_str())
                            .detail(format!(
                                "{n} instance(s) stopped: egress firewall lost and not restored"
                            )),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_are_written_at_once_then_summed_per_window() {
        let mut t = DenialThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let n = |c: u64| Some((c, vec![]));
        assert_eq!(t.add("git", 3, vec![], t0), n(3), "the first one at once");
        assert_eq!(t.add("git", 5, vec![], t0 + Duration::from_secs(1)), None);
        assert_eq!(t.add("git", 2, vec![], t0 + Duration::from_secs(2)), None);
        // Another server has its own window.
        assert_eq!(t.add("db", 1, vec![], t0 + Duration::from_secs(2)), n(1));
        assert!(t.due(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(
            t.due(t0 + Duration::from_secs(10)),
            vec![("git".to_owned(), (7, vec![]))]
        );
        // Nothing pending: nothing due, and the next denial waits for its window.
        assert!(t.due(t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(t.add("git", 1, vec![], t0 + Duration::from_secs(31)), n(1));
        assert_eq!(t.add("git", 1, vec![], t0 + Duration::from_secs(32)), None);
    }

    fn dest(addr: &str, port: u16, packets: u64) -> DeniedDest {
        DeniedDest {
            dest: addr.into(),
            proto: "tcp".into(),
            port: Some(port),
            packets,
        }
    }

    #[test]
    fn destinations_are_merged_within_a_window_and_capped() {
        let mut t = DenialThrottle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let first = t.add("web", 1, vec![dest("198.18.0.9", 443, 1)], t0);
        assert_eq!(first, Some((1, vec![dest("198.18.0.9", 443, 1)])));
        // A hostile server spraying ports for the rest of the window: one record, capped.
        for i in 0..5000u16 {
            let at = t0 + Duration::from_millis(1 + u64::from(i));
            assert_eq!(t.add("web", 1, vec![dest("198.18.0.7", i, 1)], at), None);
        }
        assert_eq!(t.add("web", 0, vec![dest("198.18.0.9", 443, 9)], t0), None);
        let due = t.due(t0 + Duration::from_secs(10));
        assert_eq!(due.len(), 1);
        let (count, dests) = &due[0].1;
        assert_eq!(*count, 5000);
        assert_eq!(dests.len(), crate::egress::nflog::tally::REPORTED + 1);
        assert_eq!(dests[0], dest("198.18.0.9", 443, 9));
        assert_eq!(dests.last().map(|d| d.dest.as_str()), Some("other"));
        assert_eq!(dests.iter().map(|d| d.packets).sum::<u64>(), 5009);
        // Destinations alone (a log that came after its count) still make a record.
        assert_eq!(
            t.add(
                "web",
                0,
                vec![dest("198.18.0.9", 80, 1)],
                t0 + Duration::from_secs(20)
            ),
            Some((0, vec![dest("198.18.0.9", 80, 1)]))
        );
        let rec = denied_record("web", 3, vec![dest("198.18.0.9", 443, 2)]);
        assert_eq!(
            rec.detail.as_deref(),
            Some("3 packet(s) dropped by the egress firewall: 198.18.0.9:443/tcp (2)")
        );
        assert_eq!(rec.destinations.map(|d| d.len()), Some(1));
    }
}
