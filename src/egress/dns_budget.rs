//! A server's DNS budget: how many questions its resolver may forward to the upstream resolvers.
//!
//! Contract:
//! - One token bucket per server (governor), with the rate and burst of the server's
//!   `egress.dns_rate`, or `[egress] dns_rate`. Every question that would leave for the upstream
//!   resolvers takes a token first; cache hits, questions that wait for one already being
//!   forwarded, and everything the resolver answers itself (REFUSED names, AAAA) take none.
//! - Without a token the sandbox gets REFUSED and nothing leaves. The refusal is counted in
//!   `/metrics` at once and summed for [`spawn_reporter`], which sends one
//!   [`EgressEvent::DnsOverBudget`] per report interval at most, so a flood cannot flood the
//!   event channel (which also carries tamper events) or, through it, the audit log.
//! - Names refused because no rule allows them are tallied too (at most
//!   [`crate::egress::nflog::tally::TRACKED`] distinct names per interval, the rest summed as
//!   `other`) and reported with the same interval as an [`EgressEvent::Denied`] whose
//!   destinations are of protocol `dns`, so the audit log says which names a server asked for.
//! - The budget of one server is never touched by another's questions.
//! - A changed rate (policy reload) takes effect with a full bucket; an unchanged one keeps its
//!   state, so a reload does not hand a flooding sandbox a fresh burst.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, RateLimiter};
use tokio::sync::mpsc;

use super::nflog::tally::{self, DeniedDest, TRACKED};
use super::EgressEvent;
use crate::policy::Rate;

struct Bucket {
    rate: Rate,
    /// `None`: a rate too fine for the limiter's clock, which is as good as unlimited.
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Bucket {
    fn new(rate: Rate) -> Bucket {
        Bucket {
            rate,
            limiter: crate::access::limits::quota(&rate).map(RateLimiter::direct),
        }
    }
}

pub(crate) struct Budget {
    bucket: RwLock<Arc<Bucket>>,
    /// Refused since the last report.
    refused: AtomicU64,
    /// Names refused by the rules since the last report, and how many past the cap.
    names: Mutex<(HashMap<String, u64>, u64)>,
}

/// Longer names are cut (DNS names are at most 253 characters; this is only a bound).
const NAME_MAX: usize = 253;

impl Budget {
    pub fn new(rate: Rate) -> Budget {
        Budget {
            bucket: RwLock::new(Arc::new(Bucket::new(rate))),
            refused: AtomicU64::new(0),
            names: Mutex::new((HashMap::new(), 0)),
        }
    }

    /// Counts a question for `name` refused because no rule allows it.
    pub fn refuse_name(&self, name: &str) {
        let Ok(mut g) = self.names.lock() else { return };
        let (names, other) = &mut *g;
        let name: String = name.trim_end_matches('.').chars().take(NAME_MAX).collect();
        if let Some(n) = names.get_mut(&name) {
            *n = n.saturating_add(1);
        } else if names.len() < TRACKED {
            names.insert(name, 1);
        } else {
            *other = other.saturating_add(1);
        }
    }

    /// Refused names since the last call (the largest, then `other`; see `tally::merge`).
    fn take_names(&self) -> Vec<DeniedDest> {
        let Ok(mut g) = self.names.lock() else {
            return Vec::new();
        };
        let (names, other) = std::mem::take(&mut *g);
        let mut list: Vec<DeniedDest> = names
            .into_iter()
            .map(|(dest, packets)| DeniedDest {
                dest,
                proto: "dns".into(),
                port: None,
                packets,
            })
            .collect();
        if other > 0 {
            list.push(DeniedDest {
                dest: tally::OTHER.into(),
                proto: "any".into(),
                port: None,
                packets: other,
            });
        }
        let mut out = Vec::new();
        tally::merge(&mut out, list);
        out
    }

    /// Whether one more question may be forwarded now; a refusal is counted.
    pub fn take(&self) -> bool {
        let ok = match self.bucket.read() {
            Ok(b) => b.limiter.as_ref().is_none_or(|l| l.check().is_ok()),
            // A writer panicked mid-swap: forward nothing rather than everything.
            Err(_) => false,
        };
        if !ok {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    pub fn rate(&self) -> Rate {
        match self.bucket.read() {
            Ok(b) => b.rate,
            Err(e) => e.into_inner().rate,
        }
    }

    /// Follows a changed `dns_rate`; the same rate keeps the bucket as it is.
    pub fn set_rate(&self, rate: Rate) {
        if let Ok(mut b) = self.bucket.write() {
            if b.rate != rate {
                *b = Arc::new(Bucket::new(rate));
            }
        }
    }

    /// Refusals since the last call.
    fn take_refused(&self) -> u64 {
        self.refused.swap(0, Ordering::Relaxed)
    }
}

/// Reports `server`'s refusals every `every` (when there were any) until the resolver stops.
pub(crate) fn spawn_reporter(
    server: String,
    budget: Arc<Budget>,
    events: mpsc::Sender<EgressEvent>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let names = budget.take_names();
            if !names.is_empty() {
                // Only informative: a full queue drops it rather than holding the resolver.
                let _ = events.try_send(EgressEvent::Denied {
                    server: server.clone(),
                    packets: 0,
                    destinations: names,
                });
            }
            let queries = budget.take_refused();
            if queries == 0 {
                continue;
            }
            let ev = EgressEvent::DnsOverBudget {
                server: server.clone(),
                queries,
                rate: budget.rate(),
            };
            // Full: the sum is not lost, it goes out with the next report.
            if let Err(mpsc::error::TrySendError::Full(_)) = events.try_send(ev) {
                budget.refused.fetch_add(queries, Ordering::Relaxed);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, burst: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(1),
            burst,
        }
    }

    #[test]
    fn the_burst_is_forwarded_and_the_rest_refused_and_counted() {
        let b = Budget::new(rate(1, 5));
        let forwarded = (0..50).filter(|_| b.take()).count();
        assert_eq!(forwarded, 5);
        assert_eq!(b.take_refused(), 45);
        assert_eq!(b.take_refused(), 0, "each refusal is reported once");
    }

    #[test]
    fn refused_names_are_tallied_and_capped() {
        let b = Budget::new(rate(1, 5));
        for i in 0..5000 {
            b.refuse_name(&format!("n{i}.unlisted.test."));
        }
        b.refuse_name("n0.unlisted.test.");
        let names = b.take_names();
        assert_eq!(names.len(), tally::REPORTED + 1);
        assert_eq!(names[0].label(), "n0.unlisted.test/dns");
        assert_eq!(names[0].packets, 2);
        assert_eq!(names.iter().map(|d| d.packets).sum::<u64>(), 5001);
        assert!(b.take_names().is_empty());
    }

    #[test]
    fn a_changed_rate_starts_over_and_the_same_rate_keeps_the_bucket() {
        let b = Budget::new(rate(1, 3));
        assert_eq!((0..10).filter(|_| b.take()).count(), 3);
        b.set_rate(rate(1, 3));
        assert!(!b.take(), "an unchanged rate is no fresh burst");
        b.set_rate(rate(2, 4));
        assert_eq!((0..10).filter(|_| b.take()).count(), 4);
        assert_eq!(b.rate(), rate(2, 4));
    }

    #[tokio::test]
    async fn refusals_are_reported_summed_once_per_interval() {
        let b = Arc::new(Budget::new(rate(1, 1)));
        let (tx, mut rx) = mpsc::channel(8);
        assert!(b.take());
        for _ in 0..30 {
            assert!(!b.take());
        }
        let every = Duration::from_millis(50);
        let task = spawn_reporter("git".into(), b.clone(), tx, every);
        let ev = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(
            ev.ok().flatten(),
            Some(EgressEvent::DnsOverBudget {
                server: "git".into(),
                queries: 30,
                rate: rate(1, 1)
            })
        );
        tokio::time::sleep(every * 4).await;
        assert!(rx.try_recv().is_err(), "no refusals, no report");
        task.abort();
    }
}
