//! Session refusals audited once per burst: a client that floods the gateway with `initialize`
//! gets every refusal it asked for, but the audit log gets one record when the burst starts and
//! one summary (how many, over how long) when it ends, not one record per attempt.
//!
//! A burst is the refusals of one client for one cause with no pause longer than [`QUIET`]. The
//! table holds one entry per client and cause while a burst lasts; clients are the policy's, so
//! it stays small whoever floods.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A pause this long ends a burst.
pub const QUIET: Duration = Duration::from_secs(10);

/// Why a session (or a `subscriptions/listen` stream) was refused, for grouping refusals into
/// bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    ClientLimit,
    Rate,
    GatewayFull,
    /// A 2026-07-28 client holds as many listen streams as its session quota.
    ListenLimit,
}

impl Cause {
    pub fn describe(self) -> &'static str {
        match self {
            Cause::ClientLimit => "its session quota (max_sessions)",
            Cause::Rate => "its session creation rate (session_rate)",
            Cause::GatewayFull => "the gateway's session limit (gateway.max_sessions)",
            Cause::ListenLimit => "its limit of listen streams (max_sessions)",
        }
    }

    /// The `reason` label of the refusal in `/metrics`.
    pub fn metric(self) -> &'static str {
        match self {
            Cause::ClientLimit => "session_quota",
            Cause::Rate => "session_rate",
            Cause::GatewayFull => "max_sessions",
            Cause::ListenLimit => "listen_quota",
        }
    }

    /// What was refused.
    pub fn what(self) -> &'static str {
        match self {
            Cause::ListenLimit => "subscriptions/listen streams",
            _ => "sessions",
        }
    }
}

struct Burst {
    since: Instant,
    last: Instant,
    refused: u64,
}

/// A burst that ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Ended {
    pub client: Arc<str>,
    pub cause: Cause,
    /// Every refusal of the burst, the first (already audited) included.
    pub refused: u64,
    pub lasted: Duration,
}

#[derive(Default)]
pub struct Bursts {
    open: Mutex<HashMap<(Arc<str>, Cause), Burst>>,
}

impl Bursts {
    /// Counts one refusal; true when it starts a burst (audit it now).
    pub fn note(&self, client: &Arc<str>, cause: Cause) -> bool {
        self.note_at(client, cause, Instant::now())
    }

    fn note_at(&self, client: &Arc<str>, cause: Cause, now: Instant) -> bool {
        let Ok(mut open) = self.open.lock() else {
            return true;
        };
        match open.get_mut(&(client.clone(), cause)) {
            Some(b) if now.duration_since(b.last) <= QUIET => {
                b.refused += 1;
                b.last = now;
                false
            }
            _ => {
                open.insert(
                    (client.clone(), cause),
                    Burst {
                        since: now,
                        last: now,
                        refused: 1,
                    },
                );
                true
            }
        }
    }

    /// Takes out the bursts that have ended (every one when `all`, as at shutdown).
    pub fn ended(&self, all: bool) -> Vec<Ended> {
        self.ended_at(all, Instant::now())
    }

    fn ended_at(&self, all: bool, now: Instant) -> Vec<Ended> {
        let Ok(mut open) = self.open.lock() else {
            return Vec::new();
        };
        let done: Vec<(Arc<str>, Cause)> = open
            .iter()
            .filter(|(_, b)| all || now.duration_since(b.last) > QUIET)
            .map(|(k, _)| k.clone())
            .collect();
        done.into_iter()
            .filter_map(|k| {
                let b = open.remove(&k)?;
                Some(Ended {
                    client: k.0,
                    cause: k.1,
                    refused: b.refused,
                    lasted: b.last.duration_since(b.since),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_starts_a_burst_and_a_pause_ends_it() {
        let b = Bursts::default();
        let bob: Arc<str> = Arc::from("bob");
        let t0 = Instant::now();
        assert!(b.note_at(&bob, Cause::ClientLimit, t0));
        for i in 1..100 {
            assert!(!b.note_at(&bob, Cause::ClientLimit, t0 + Duration::from_millis(i)));
        }
        let t99 = t0 + Duration::from_millis(99);
        assert!(
            b.note_at(&bob, Cause::Rate, t99),
            "another cause is another burst"
        );
        let later = t0 + Duration::from_millis(99) + QUIET;
        assert!(b.ended_at(false, later).is_empty(), "not quiet long enough");
        let mut ended = b.ended_at(false, later + Duration::from_millis(1));
        ended.sort_by_key(|e| e.refused);
        assert_eq!(ended.len(), 2);
        assert_eq!(
            (ended[1].refused, ended[1].cause),
            (100, Cause::ClientLimit)
        );
        assert_eq!(ended[1].lasted, Duration::from_millis(99));
        assert!(
            b.note_at(&bob, Cause::ClientLimit, later),
            "a new burst starts"
        );
        assert_eq!(
            b.ended_at(true, later).len(),
            1,
            "shutdown ends every burst"
        );
    }
}
