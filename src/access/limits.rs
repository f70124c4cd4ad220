//! Rate limits (governor) and per-server concurrency caps.
//!
//! Quotas: `clients.NAME.rate` bounds one client across everything; `servers.NAME.rate` and
//! `servers.NAME.tool_rates` bound each client separately at that server or tool, so one client
//! cannot use up another's share. Per-client limiters are keyed by client name and swept of idle
//! keys, so memory stays bounded whoever connects.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::policy::{Policy, Rate};

/// Waiting calls allowed per in-flight slot before new ones are refused at once.
const QUEUE_PER_SLOT: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct Limited {
    /// Which quota was hit, for the error message and the audit record.
    pub scope: String,
    pub retry_after: Duration,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Busy {
    #[error("server `{server}` already has {max} calls in flight and {queued} waiting; try again shortly")]
    QueueFull {
        server: String,
        max: u32,
        queued: usize,
    },
    #[error("server `{server}` had no free call slot within {}s", .waited.as_secs_f32())]
    Timeout { server: String, waited: Duration },
}

struct Slots {
    sem: Arc<Semaphore>,
    max: u32,
    waiting: AtomicUsize,
    timeout: Duration,
}

pub struct Limits {
    clock: DefaultClock,
    clients: HashMap<String, DefaultDirectRateLimiter>,
    servers: HashMap<String, DefaultKeyedRateLimiter<String>>,
    tools: HashMap<(String, String), DefaultKeyedRateLimiter<String>>,
    slots: HashMap<String, Slots>,
}

fn quota(r: &Rate) -> Option<Quota> {
    let count = NonZeroU32::new(r.count)?;
    let burst = NonZeroU32::new(r.burst.max(1))?;
    // Replenish one call every per/count.
    let period = r.per.checked_div(count.get())?;
    Quota::with_period(period).map(|q| q.allow_burst(burst))
}

impl Limits {
    pub fn from_policy(policy: &Policy) -> Limits {
        let mut clients = HashMap::new();
        for (name, c) in &policy.clients {
            if let Some(q) = c.rate.as_ref().and_then(quota) {
                clients.insert(name.clone(), RateLimiter::direct(q));
            }
        }
        let mut servers = HashMap::new();
        let mut tools = HashMap::new();
        let mut slots = HashMap::new();
        for (name, s) in &policy.servers {
            if let Some(q) = s.rate.as_ref().and_then(quota) {
                servers.insert(name.clone(), RateLimiter::keyed(q));
            }
            for (tool, r) in &s.tool_rates {
                if let Some(q) = quota(r) {
                    tools.insert((name.clone(), tool.clone()), RateLimiter::keyed(q));
                }
            }
            if let Some(max) = s.max_in_flight {
                slots.insert(
                    name.clone(),
                    Slots {
                        sem: Arc::new(Semaphore::new(max as usize)),
                        max,
                        waiting: AtomicUsize::new(0),
                        timeout: s.queue_timeout,
                    },
                );
            }
        }
        Limits {
            clock: DefaultClock::default(),
            clients,
            servers,
            tools,
            slots,
        }
    }

    /// Takes one call from every quota that applies, most specific first.
    pub fn check(&self, client: &str, server: &str, tool: Option<&str>) -> Result<(), Limited> {
        let key = client.to_owned();
        if let Some(tool) = tool {
            if let Some(l) = self.tools.get(&(server.to_owned(), tool.to_owned())) {
                l.check_key(&key).map_err(|n| {
                    self.limited(
                        format!("tool `{server}__{tool}` quota for client `{client}`"),
                        n,
                    )
                })?;
            }
        }
        if let Some(l) = self.servers.get(server) {
            l.check_key(&key).map_err(|n| {
                self.limited(format!("server `{server}` quota for client `{client}`"), n)
            })?;
        }
        if let Some(l) = self.clients.get(client) {
            l.check()
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

    /// Waits for a call slot at `server` (when it has a cap), within the bounded queue.
    pub async fn slot(&self, server: &str) -> Result<Option<OwnedSemaphorePermit>, Busy> {
        let Some(s) = self.slots.get(server) else {
            return Ok(None);
        };
        if let Ok(p) = s.sem.clone().try_acquire_owned() {
            return Ok(Some(p));
        }
        let queued = s.waiting.fetch_add(1, Ordering::AcqRel);
        let _leave = Leave(&s.waiting);
        if queued >= s.max as usize * QUEUE_PER_SLOT {
            return Err(Busy::QueueFull {
                server: server.to_owned(),
                max: s.max,
                queued,
            });
        }
        match tokio::time::timeout(s.timeout, s.sem.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Some(p)),
            _ => Err(Busy::Timeout {
                server: server.to_owned(),
                waited: s.timeout,
            }),
        }
    }

    /// Drops per-client limiter state that has refilled completely (idle keys).
    pub fn sweep(&self) {
        for l in self.servers.values().chain(self.tools.values()) {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
        let held = l.slot("s").await.unwrap();
        assert!(held.is_some());
        assert!(matches!(l.slot("s").await, Err(Busy::Timeout { .. })));
        drop(held);
        assert!(l.slot("s").await.unwrap().is_some());
        assert!(l.slot("other").await.unwrap().is_none());
    }
}
