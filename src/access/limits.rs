//! Rate limits (governor) and per-server concurrency caps.
//!
//! Quotas: `clients.NAME.rate` bounds one client across everything; `servers.NAME.rate` and
//! `servers.NAME.tool_rates` bound each client separately at that server or tool, so one client
//! cannot use up another's share. Per-client limiters are keyed by client name and swept of idle
//! keys, so memory stays bounded whoever connects. A server's `max_in_flight` slots are shared
//! fairly between clients ([`super::fair_slots`]): queues, their bound and timeout are per client.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::fair_slots::{FairSlots, SlotPermit, Wait};
use super::session_quotas::{SessionLimit, SessionTable};
use crate::policy::{Policy, Rate};

/// Waiting calls allowed per in-flight slot, for each client, before its new ones are refused
/// at once.
const QUEUE_PER_SLOT: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// Which quota was hit, for the error message and the audit record.
    pub scope: String,
    pub retry_after: Duration,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Busy {
    #[error("server `{server}` has all {max} call slots (max_in_flight) busy and {queued} calls of client `{client}` already waiting, the most one client may queue; try again shortly")]
    QueueFull {
        server: String,
        client: String,
        max: u32,
        queued: usize,
    },
    #[error("server `{server}` had no free call slot for client `{client}` within {}s (queue_timeout)", .waited.as_secs_f32())]
    Timeout {
        server: String,
        client: String,
        waited: Duration,
    },
}

/// A limiter together with the quota it was built from, so a reload can tell whether to keep it.
pub(super) struct Kept<L> {
    pub rate: Rate,
    pub limiter: Arc<L>,
}

impl<L> Clone for Kept<L> {
    fn clone(&self) -> Self {
        Kept {
            rate: self.rate,
            limiter: self.limiter.clone(),
        }
    }
}

type Direct = Kept<DefaultDirectRateLimiter>;
type Keyed = Kept<DefaultKeyedRateLimiter<String>>;

/// The quotas and caps of one policy.
struct Table {
    clients: HashMap<String, Direct>,
    servers: HashMap<String, Keyed>,
    tools: HashMap<(String, String), Keyed>,
    slots: HashMap<String, Arc<FairSlots>>,
    /// `clients.NAME.weight`, where set.
    weights: HashMap<String, u32>,
    sessions: SessionTable,
}

pub struct Limits {
    clock: DefaultClock,
    table: RwLock<Arc<Table>>,
}

pub(crate) fn quota(r: &Rate) -> Option<Quota> {
    let count = NonZeroU32::new(r.count)?;
    let burst = NonZeroU32::new(r.burst.max(1))?;
    // Replenish one call every per/count.
    let period = r.per.checked_div(count.get())?;
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

/// The limiter for `rate`: the previous one when its quota is unchanged (so a reload does not
/// hand everyone a fresh burst), otherwise a new one.
pub(super) fn kept<K: Eq + std::hash::Hash, L>(
    previous: Option<&HashMap<K, Kept<L>>>,
    key: &K,
    rate: &Rate,
    make: impl FnOnce(Quota) -> L,
) -> Option<Kept<L>> {
    if let Some(k) = previous
        .and_then(|p| p.get(key))
        .filter(|k| k.rate == *rate)
    {
        return Some(Kept {
            rate: *rate,
            limiter: k.limiter.clone(),
        });
    }
    quota(rate).map(|q| Kept {
        rate: *rate,
        limiter: Arc::new(make(q)),
    })
}

impl Table {
    fn build(policy: &Policy, previous: Option<&Table>) -> Table {
        let mut t = Table {
            clients: HashMap::new(),
            servers: HashMap::new(),
            tools: HashMap::new(),
            slots: HashMap::new(),
            weights: HashMap::new(),
            sessions: SessionTable::build(policy, previous.map(|p| &p.sessions)),
        };
        for (name, c) in &policy.clients {
            if let Some(w) = c.weight {
                t.weights.insert(name.clone(), w);
            }
            if let Some(r) = &c.rate {
                let prev = previous.map(|p| &p.clients);
                if let Some(k) = kept(prev, name, r, RateLimiter::direct) {
                    t.clients.insert(name.clone(), k);
                }
            }
        }
        for (name, s) in &policy.servers {
            if let Some(r) = &s.rate {
                let prev = previous.map(|p| &p.servers);
                if let Some(k) = kept(prev, name, r, RateLimiter::keyed) {
                    t.servers.insert(name.clone(), k);
                }
            }
            for (tool, r) in &s.tool_rates {
                let key = (name.clone(), tool.clone());
                let prev = previous.map(|p| &p.tools);
                if let Some(k) = kept(prev, &key, r, RateLimiter::keyed) {
                    t.tools.insert(key, k);
                }
            }
            if let Some(max) = s.max_in_flight {
                let same = previous
                    .and_then(|p| p.slots.get(name))
                    .filter(|o| o.max == max && o.timeout == s.queue_timeout);
                // A changed cap starts new slots; calls holding the old ones finish on them.
                let slots = same.cloned().unwrap_or_else(|| {
                    Arc::new(FairSlots::new(
                        name,
                        max,
                        s.queue_timeout,
                        max as usize * QUEUE_PER_SLOT,
                    ))
                });
                t.slots.insert(name.clone(), slots);
            }
        }
        t
    }
}

impl Limits {
    pub fn from_policy(policy: &Policy) -> Limits {
        Limits {
            clock: DefaultClock::default(),
            table: RwLock::new(Arc::new(Table::build(policy, None))),
        }
    }

    /// Puts the quotas of a reloaded policy in force, keeping the state of unchanged ones.
    pub fn reload(&self, policy: &Policy) {
        let next = Arc::new(Table::build(policy, Some(&self.table())));
        match self.table.write() {
            Ok(mut t) => *t = next,
            Err(p) => *p.into_inner() = next,
        }
    }

    fn table(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Takes one call from every quota that applies, most specific first.
    pub fn check(&self, client: &str, server: &str, tool: Option<&str>) -> Result<(), Limited> {
        let t = self.table();
        let key = client.to_owned();
        if let Some(tool) = tool {
            if let Some(l) = t.tools.get(&(server.to_owned(), tool.to_owned())) {
                l.limiter.check_key(&key).map_err(|n| {
                    self.limited(
                        format!("tool `{server}__{tool}` quota for client `{client}`"),
                        n,
                    )
                })?;
            }
        }
        if let Some(l) = t.servers.get(server) {
            l.limiter.check_key(&key).map_err(|n| {
                self.limited(format!("server `{server}` quota for client `{client}`"), n)
            })?;
        }
        if let Some(l) = t.clients.get(client) {
            l.limiter
                .check()
                .map_err(|n| self.limited(format!("client `{client}` quota"), n))?;
        }
        Ok(())
    }

    fn limited(
        &self,
        scope: String,
        n: governor::NotUntil<<DefaultClock as Clock>::Instant>,
    ) -> Limited {
        Limited {
            scope,
            retry_after: n.wait_time_from(self.clock.now()),
        }
    }

    /// How many sessions `client` may hold open at once.
    pub fn session_limit(&self, client: &str) -> SessionLimit {
        self.table().sessions.limit(client)
    }

    /// Takes one session from `client`'s creation rate (`session_rate`).
    pub fn check_session_rate(&self, client: &str) -> Result<(), Limited> {
        self.table().sessions.check_rate(client, self.clock.now())
    }

    /// Waits for a call slot at `server` (when it has a cap) for a call of `client`, in that
    /// client's bounded queue.
    pub async fn slot(&self, server: &str, client: &str) -> Result<Option<SlotPermit>, Busy> {
        let t = self.table();
        let Some(s) = t.slots.get(server).cloned() else {
            return Ok(None);
        };
        let weight = t.weights.get(client).copied().unwrap_or(1);
        drop(t);
        match s.acquire(client, weight).await {
            Ok(p) => Ok(Some(p)),
            Err(Wait::QueueFull { queued }) => Err(Busy::QueueFull {
                server: server.to_owned(),
                client: client.to_owned(),
                max: s.max,
                queued,
            }),
            Err(Wait::Timeout) => Err(Busy::Timeout {
                server: server.to_owned(),
                client: client.to_owned(),
                waited: s.timeout,
            }),
        }
    }

    /// Drops per-client limiter state that has refilled completely (idle keys).
    pub fn sweep(&self) {
        let t = self.table();
        for l in t.servers.values().chain(t.tools.values()) {
            l.limiter.retain_recent();
            l.limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(src: &str) -> Policy {
        crate::policy::parse(src, "t.toml").unwrap()
    }

    #[test]
    fn quotas_are_per_client_and_count_exactly() {
        let p = policy(
            "[servers.s]\nruntime = \"process\"\ncommand = \"x\"\nrate = { quota = \"3/hour\", burst = 3 }\n",
        );
        let l = Limits::from_policy(&p);
        for _ in 0..3 {
            assert!(l.check("a", "s", Some("t")).is_ok());
        }
        let e = l.check("a", "s", Some("t")).unwrap_err();
        assert!(e.scope.contains("server `s`"), "{e:?}");
        assert!(e.retry_after > Duration::from_secs(60));
        assert!(
            l.check("b", "s", Some("t")).is_ok(),
            "another client has its own quota"
        );
    }

    #[tokio::test]
    async fn concurrency_cap_queues_then_refuses() {
        let p = policy(
            "[servers.s]\nruntime = \"process\"\ncommand = \"x\"\nmax_in_flight = 1\nqueue_timeout = \"50ms\"\n",
        );
        let l = Limits::from_policy(&p);
        let held = l.slot("s", "a").await.unwrap();
        assert!(held.is_some());
        assert!(matches!(l.slot("s", "a").await, Err(Busy::Timeout { .. })));
        drop(held);
        assert!(l.slot("s", "a").await.unwrap().is_some());
        assert!(l.slot("other", "a").await.unwrap().is_none());
    }

    #[test]
    fn a_reload_keeps_used_quotas_unless_they_change() {
        let src = "[servers.s]\nruntime = \"process\"\ncommand = \"x\"\nrate = { quota = \"1/hour\", burst = 1 }\n";
        let l = Limits::from_policy(&policy(src));
        assert!(l.check("a", "s", None).is_ok());
        assert!(l.check("a", "s", None).is_err());
        l.reload(&policy(&format!("{src}max_in_flight = 2\n")));
        assert!(
            l.check("a", "s", None).is_err(),
            "an unchanged quota is not refilled by a reload"
        );
        l.reload(&policy(&src.replace("1/hour", "2/hour")));
        assert!(
            l.check("a", "s", None).is_ok(),
            "a changed quota starts afresh"
        );
        l.reload(&policy(
            "[servers.s]\nruntime = \"process\"\ncommand = \"x\"\n",
        ));
        for _ in 0..5 {
            assert!(
                l.check("a", "s", None).is_ok(),
                "a removed quota no longer applies"
            );
        }
    }
}
