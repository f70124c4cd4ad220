//! The resolver's cache: what one server's sandbox asked recently, so that a repeated question
//! is answered without asking the upstream resolvers again.
//!
//! Contract:
//! - Each server's resolver has its own cache, keyed by the queried name (lower-case, without
//!   the trailing dot), so the key is (server, name) and no server sees another's answers. It
//!   holds at most [`MAX_ENTRIES`] names; when full, expired entries go first, then the one
//!   closest to expiry.
//! - An address answer is kept until `received + TTL handed out`, and that TTL is already at
//!   most the pin's lifetime minus one second: a kept answer never outlives its pin. A hit hands
//!   out the whole seconds left, so the client's own cache never outlives the pin either. A hit
//!   never pins anything; it only repeats what is still pinned.
//! - A negative answer (NXDOMAIN, NODATA, or an answer whose every address the policy filtered
//!   out) is kept for the negative TTL of the upstream's SOA record, and never longer than
//!   [`NEGATIVE_MAX`] (so without an SOA, [`NEGATIVE_MAX`]).
//! - Failures (SERVFAIL, timeouts, a failed pin, an exhausted budget) are never kept.
//! - Rules change in two steps, [`Cache::begin_change`] before the table is replaced (the old
//!   pins go with it) and [`Cache::end_change`] once the resolver answers by the new rules:
//!   each empties the cache, and in between nothing is served or stored. A question judged
//!   under the old rules cannot store its answer afterwards.
//! - A question asked again while it is being forwarded waits for that answer ([`Cache::join`])
//!   instead of being forwarded too; the wait is bounded by the upstream timeouts.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData};
use tokio::sync::watch;

/// Names kept per server.
pub const MAX_ENTRIES: usize = 1024;
/// The longest a negative answer is kept.
pub const NEGATIVE_MAX: Duration = Duration::from_secs(5);

/// What a question was answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub code: ResponseCode,
    /// Pinned addresses (only with NOERROR).
    pub addrs: Vec<Ipv4Addr>,
    /// Until when it may be repeated; the TTL handed out counts down to it.
    pub until: Instant,
    /// Whether it may be kept (failures are only shared with the questions that waited for it).
    pub keep: bool,
}

impl Outcome {
    /// Addresses pinned for at least one second longer than the client may keep them, for
    /// `client_ttl` seconds from `received`.
    pub fn addresses(addrs: Vec<Ipv4Addr>, received: Instant, client_ttl: u32) -> Outcome {
        Outcome {
            code: ResponseCode::NoError,
            addrs,
            until: received + Duration::from_secs(u64::from(client_ttl)),
            keep: true,
        }
    }

    /// NXDOMAIN, NODATA (NOERROR without addresses) or REFUSED by the address filter, kept for
    /// the negative TTL of `upstream`.
    pub fn negative(code: ResponseCode, upstream: &Message, received: Instant) -> Outcome {
        Outcome {
            code,
            addrs: Vec::new(),
            until: received + negative_ttl(upstream),
            keep: true,
        }
    }

    /// An answer that is not kept.
    pub fn failure(code: ResponseCode) -> Outcome {
        Outcome {
            code,
            addrs: Vec::new(),
            until: Instant::now(),
            keep: false,
        }
    }

    /// The TTL to hand out at `now`: the whole seconds left.
    pub fn ttl_at(&self, now: Instant) -> u32 {
        u32::try_from(self.until.saturating_duration_since(now).as_secs()).unwrap_or(u32::MAX)
    }
}

/// RFC 2308: the smaller of the SOA record's TTL and its MINIMUM field, capped here.
fn negative_ttl(upstream: &Message) -> Duration {
    upstream
        .name_servers()
        .iter()
        .find_map(|r| match r.data() {
            RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
            _ => None,
        })
        .map_or(NEGATIVE_MAX, |s| {
            Duration::from_secs(u64::from(s)).min(NEGATIVE_MAX)
        })
}

/// The cache key of a queried name.
pub(crate) fn key(name: &Name) -> String {
    let n = name.to_ascii().to_ascii_lowercase();
    n.strip_suffix('.').map(str::to_owned).unwrap_or(n)
}

/// Whose turn it is to forward a question.
pub(crate) enum Turn {
    /// Forward it, then hand the outcome to [`Lead::finish`].
    Lead(Lead),
    /// Another question for the same name is being forwarded: wait for its outcome.
    Wait(watch::Receiver<Option<Outcome>>),
}

/// The question being forwarded for a name; whoever waits for it is told on `finish` (or, if
/// it is dropped unfinished, sees the channel close).
pub(crate) struct Lead {
    tx: watch::Sender<Option<Outcome>>,
}

impl Lead {
    pub fn finish(self, cache: &Cache, key: &str, outcome: Outcome) {
        let _ = self.tx.send(Some(outcome));
        if let Ok(mut f) = cache.forwarding.lock() {
            if f.get(key)
                .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
            {
                f.remove(key);
            }
        }
    }
}

/// Waits for the question being forwarded; `None` if it was abandoned.
pub(crate) async fn wait(mut rx: watch::Receiver<Option<Outcome>>) -> Option<Outcome> {
    let v = rx.wait_for(Option::is_some).await.ok()?;
    v.clone()
}

#[derive(Default)]
struct Entries {
    names: HashMap<String, Outcome>,
    /// Odd while the server's rules change.
    generation: u64,
}

#[derive(Default)]
pub(crate) struct Cache {
    entries: Mutex<Entries>,
    /// Names being forwarded right now.
    forwarding: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
}

impl Cache {
    /// Taken before a question is judged; an answer is stored only under the same generation.
    pub fn generation(&self) -> u64 {
        self.entries.lock().map_or(1, |e| e.generation)
    }

    /// The kept outcome for `key`, if it is still valid at `now`.
    pub fn get(&self, key: &str, now: Instant) -> Option<Outcome> {
        let e = self.entries.lock().ok()?;
        if e.generation % 2 == 1 {
            return None;
        }
        e.names.get(key).filter(|o| o.until > now).cloned()
    }

    /// Keeps `outcome` for `key` when it may be kept and the rules have not changed since
    /// `generation` was taken.
    pub fn put(&self, generation: u64, key: &str, outcome: &Outcome, now: Instant) {
        if !outcome.keep || outcome.until <= now {
            return;
        }
        let Ok(mut e) = self.entries.lock() else {
            return;
        };
        if e.generation != generation || generation % 2 == 1 {
            return;
        }
        if e.names.len() >= MAX_ENTRIES && !e.names.contains_key(key) {
            e.names.retain(|_, o| o.until > now);
            if e.names.len() >= MAX_ENTRIES {
                let soonest = e
                    .names
                    .iter()
                    .min_by_key(|(_, o)| o.until)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    e.names.remove(&k);
                }
            }
        }
        e.names.insert(key.to_owned(), outcome.clone());
    }

    /// Forward the question for `key`, or wait for the one already being forwarded.
    pub fn join(&self, key: &str) -> Turn {
        let Ok(mut f) = self.forwarding.lock() else {
            // Poisoned: nobody can be waited for; forward alone.
            return Turn::Lead(Lead {
                tx: watch::channel(None).0,
            });
        };
        if let Some(rx) = f.get(key) {
            if rx.has_changed().is_ok() {
                return Turn::Wait(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(None);
        f.insert(key.to_owned(), rx);
        Turn::Lead(Lead { tx })
    }

    /// The server's rules are about to change: nothing is served or stored until
    /// [`Cache::end_change`].
    pub fn begin_change(&self) {
        self.bump(true);
    }

    /// The resolver answers by the new rules: start empty.
    pub fn end_change(&self) {
        self.bump(false);
    }

    fn bump(&self, to_odd: bool) {
        if let Ok(mut e) = self.entries.lock() {
            e.names.clear();
            if (e.generation % 2 == 1) != to_odd {
                e.generation += 1;
            } else {
                // Already in that state (a change begun twice, or ended without a begin):
                // move on anyway, so answers judged before this call cannot be stored.
                e.generation += 2;
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.names.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::SOA;
    use hickory_proto::rr::Record;

    fn ip(h: u8) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, h)
    }

    #[test]
    fn an_address_answer_counts_down_and_expires_with_its_ttl() {
        let c = Cache::default();
        let g = c.generation();
        let t0 = Instant::now();
        let o = Outcome::addresses(vec![ip(10)], t0, 29);
        c.put(g, "api.example.test", &o, t0);
        let hit = c.get("api.example.test", t0 + Duration::from_millis(2500));
        assert_eq!(hit.as_ref().map(|o| o.addrs.clone()), Some(vec![ip(10)]));
        assert_eq!(hit.unwrap().ttl_at(t0 + Duration::from_millis(2500)), 26);
        assert!(c
            .get("api.example.test", t0 + Duration::from_secs(29))
            .is_none());
        assert!(c.get("other.example.test", t0).is_none());
    }

    #[test]
    fn failures_and_ttl_zero_answers_are_not_kept() {
        let c = Cache::default();
        let g = c.generation();
        let t0 = Instant::now();
        c.put(g, "a", &Outcome::failure(ResponseCode::ServFail), t0);
        c.put(g, "b", &Outcome::addresses(vec![ip(14)], t0, 0), t0);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn negative_answers_are_kept_briefly_whatever_the_soa_says() {
        let t0 = Instant::now();
        let none = Message::new();
        let o = Outcome::negative(ResponseCode::NXDomain, &none, t0);
        assert_eq!(o.until, t0 + NEGATIVE_MAX);
        let soa = |ttl: u32, minimum: u32| {
            let mut m = Message::new();
            let n = Name::from_ascii("example.test.").unwrap();
            m.add_name_server(Record::from_rdata(
                n.clone(),
                ttl,
                RData::SOA(SOA::new(n.clone(), n, 1, 60, 60, 60, minimum)),
            ));
            m
        };
        let long = Outcome::negative(ResponseCode::NXDomain, &soa(86_400, 3_600), t0);
        assert_eq!(long.until, t0 + NEGATIVE_MAX);
        let short = Outcome::negative(ResponseCode::NoError, &soa(2, 300), t0);
        assert_eq!(short.until, t0 + Duration::from_secs(2));
    }

    #[test]
    fn the_cache_holds_a_bounded_number_of_names() {
        let c = Cache::default();
        let g = c.generation();
        let t0 = Instant::now();
        for i in 0..MAX_ENTRIES + 500 {
            // The first one lives longest; the others expire in order.
            let ttl = if i == 0 { 100 } else { 10 + (i % 50) as u32 };
            c.put(
                g,
                &format!("n{i}.wild.example.test"),
                &Outcome::addresses(vec![ip(10)], t0, ttl),
                t0,
            );
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        assert!(c.get("n0.wild.example.test", t0).is_some());
        let last = format!("n{}.wild.example.test", MAX_ENTRIES + 499);
        assert!(c.get(&last, t0).is_some(), "the newest answer is kept");
    }

    #[test]
    fn a_rules_change_empties_the_cache_and_refuses_answers_judged_before_it() {
        let c = Cache::default();
        let t0 = Instant::now();
        let before = c.generation();
        c.put(before, "a", &Outcome::addresses(vec![ip(10)], t0, 29), t0);
        c.begin_change();
        assert!(c.get("a", t0).is_none());
        let during = c.generation();
        c.put(during, "b", &Outcome::addresses(vec![ip(10)], t0, 29), t0);
        c.put(before, "c", &Outcome::addresses(vec![ip(10)], t0, 29), t0);
        assert_eq!(c.len(), 0, "nothing is stored while the rules change");
        c.end_change();
        c.put(during, "b", &Outcome::addresses(vec![ip(10)], t0, 29), t0);
        assert_eq!(
            c.len(),
            0,
            "an answer judged under the old rules is not stored"
        );
        let after = c.generation();
        c.put(after, "d", &Outcome::addresses(vec![ip(10)], t0, 29), t0);
        assert!(c.get("d", t0).is_some());
        // A second end (say a reload that failed and put the old rules back) starts over too.
        c.end_change();
        assert!(c.get("d", t0).is_none());
        c.put(after, "e", &Outcome::addresses(vec![ip(10)], t0, 29), t0);
        assert_eq!(c.len(), 0);
    }

    #[tokio::test]
    async fn a_question_asked_while_it_is_forwarded_waits_for_that_answer() {
        let c = Cache::default();
        let Turn::Lead(lead) = c.join("api") else {
            panic!("the first question leads");
        };
        let Turn::Wait(rx) = c.join("api") else {
            panic!("the second one waits");
        };
        assert!(matches!(c.join("other"), Turn::Lead(_)));
        let waiter = tokio::spawn(wait(rx));
        let o = Outcome::addresses(vec![ip(10)], Instant::now(), 5);
        lead.finish(&c, "api", o.clone());
        assert_eq!(waiter.await.unwrap(), Some(o));
        assert!(
            matches!(c.join("api"), Turn::Lead(_)),
            "the next question leads again"
        );
        // An abandoned lead releases its waiters.
        let Turn::Lead(_dropped) = c.join("gone") else {
            panic!("leads");
        };
        let Turn::Wait(rx) = c.join("gone") else {
            panic!("waits");
        };
        drop(_dropped);
        assert_eq!(wait(rx).await, None);
        assert!(matches!(c.join("gone"), Turn::Lead(_)));
    }
}
