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
    /// server -> (when the last record was written, packets since)
    servers: HashMap<String, (Option<Instant>, u64)>,
}

impl DenialThrottle {
    pub fn new(every: Duration) -> DenialThrottle {
        DenialThrottle {
            every,
            servers: HashMap::new(),
        }
    }

    /// Adds `packets` for `server`; returns the total to record now, if a record is due.
    pub fn add(&mut self, server: &str, packets: u64, now: Instant) -> Option<u64> {
        let (last, pending) = self.servers.entry(server.to_owned()).or_insert((None, 0));
        *pending = pending.saturating_add(packets);
        let due = last.is_none_or(|t| now.duration_since(t) >= self.every);
        if due && *pending > 0 {
            *last = Some(now);
            return Some(std::mem::take(pending));
        }
        None
    }

    /// Totals whose window has passed (called on a timer, so a burst's tail is not lost).
    pub fn due(&mut self, now: Instant) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (server, (last, pending)) in &mut self.servers {
            if *pending > 0 && last.is_none_or(|t| now.duration_since(t) >= self.every) {
                *last = Some(now);
                out.push((server.clone(), std::mem::take(pending)));
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
                    for (server, packets) in throttles.packets.due(now) {
                        trail.record_later(denied_record(&server, packets));
                    }
                    for (server, queries) in throttles.dns.due(now) {
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

fn denied_record(server: &str, packets: u64) -> AuditEvent {
    AuditEvent::new(Kind::EgressDenied)
        .server(server)
        .outcome(Outcome::EgressDenied)
        .detail(format!(
            "{packets} packet(s) dropped by the egress firewall (destinations outside the server's egress rules)"
        ))
}

async fn handle(
    ev: EgressEvent,
    throttles: &mut Throttles,
    backends: &Backends,
    trail: &AuditTrail,
) {
    match ev {
        EgressEvent::Denied { server, packets } => {
            crate::metrics::global().egress_denied(&server, packets);
            tracing::debug!(%server, packets, "egress denied");
            if let Some(total) = throttles.packets.add(&server, packets, Instant::now()) {
                trail.record_later(denied_record(&server, total));
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
            if let Some(total) = throttles.dns.add(&server, queries, Instant::now()) {
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
        assert_eq!(t.add("git", 3, t0), Some(3), "the first one at once");
        assert_eq!(t.add("git", 5, t0 + Duration::from_secs(1)), None);
        assert_eq!(t.add("git", 2, t0 + Duration::from_secs(2)), None);
        // Another server has its own window.
        assert_eq!(t.add("db", 1, t0 + Duration::from_secs(2)), Some(1));
        assert!(t.due(t0 + Duration::from_secs(5)).is_empty());
        assert_eq!(
            t.due(t0 + Duration::from_secs(10)),
            vec![("git".to_owned(), 7)]
        );
        // Nothing pending: nothing due, and the next denial waits for its window.
        assert!(t.due(t0 + Duration::from_secs(30)).is_empty());
        assert_eq!(t.add("git", 1, t0 + Duration::from_secs(31)), Some(1));
        assert_eq!(t.add("git", 1, t0 + Duration::from_secs(32)), None);
    }
}
