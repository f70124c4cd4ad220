//! Downstream sessions: the id a client got at initialize, what it negotiated, its streams.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::event_stream::EventStream;
use crate::access::Identity;

/// Finished POST streams kept for resumption, per session.
const MAX_RETAINED_STREAMS: usize = 64;
/// How long a finished POST stream stays resumable.
const RETAIN_FINISHED: Duration = Duration::from_secs(120);
/// Longest interval between sweeps of expired POST streams.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

pub struct Session {
    pub id: Arc<str>,
    pub protocol: &'static str,
    /// Who created the session; only they may use it.
    pub identity: Identity,
    /// Messages not tied to a request (list changes, relayed requests with no open POST).
    pub standalone: Arc<EventStream>,
    /// The session's digest as the audit log writes it; labels its streams' metrics.
    tag: Arc<str>,
    /// POST streams by number, which is also their order of creation.
    streams: Mutex<Retained>,
    next_stream: AtomicU64,
    last_seen: Mutex<Instant>,
    /// Whether the router knows the session: always for `/mcp` (created by initialize), only
    /// after the client's initialize for a legacy `/sse` session (created by its GET).
    pub initialized: std::sync::atomic::AtomicBool,
    /// Whether the client did more than initialize and list: called, read, answered a server,
    /// or held a stream open. Sessions that never do expire sooner (health checks).
    engaged: std::sync::atomic::AtomicBool,
}

impl Session {
    fn new(id: Arc<str>, protocol: &'static str, identity: Identity) -> Session {
        let tag: Arc<str> = Arc::from(crate::router::audit_trail::session_tag(&id));
        Session {
            id,
            protocol,
            identity,
            standalone: EventStream::new(0, tag.clone()),
            tag,
            streams: Mutex::new(Retained {
                streams: BTreeMap::new(),
                swept: Instant::now(),
            }),
            next_stream: AtomicU64::new(1),
            last_seen: Mutex::new(Instant::now()),
            initialized: std::sync::atomic::AtomicBool::new(true),
            engaged: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Notes that the client uses the session for more than a health check.
    pub fn engage(&self) {
        self.engaged.store(true, Ordering::Relaxed);
    }

    fn is_engaged(&self) -> bool {
        self.engaged.load(Ordering::Relaxed)
    }

    pub fn touch(&self) {
        if let Ok(mut t) = self.last_seen.lock() {
            *t = Instant::now();
        }
    }

    fn idle_for(&self) -> Duration {
        self.last_seen
            .lock()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }

    /// A new stream for the response to one POST.
    ///
    /// This runs on every streamed request, so the expiry sweep (which looks at every retained
    /// stream) runs at most once per `SWEEP_EVERY`; when the table is full in between, the
    /// oldest finished stream (the first one in creation order) makes room.
    pub fn open_stream(&self) -> Arc<EventStream> {
        let n = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let stream = EventStream::new(n, self.tag.clone());
        if let Ok(mut r) = self.streams.lock() {
            let now = Instant::now();
            if now.duration_since(r.swept) >= SWEEP_EVERY {
                r.swept = now;
                r.streams
                    .retain(|_, s| s.closed_for().is_none_or(|d| d < RETAIN_FINISHED));
            }
            if r.streams.len() >= MAX_RETAINED_STREAMS {
                let oldest_closed = r
                    .streams
                    .iter()
                    .find(|(_, s)| s.is_closed())
                    .map(|(k, _)| *k);
                if let Some(k) = oldest_closed {
                    r.streams.remove(&k);
                }
            }
            r.streams.insert(n, stream.clone());
        }
        stream
    }

    /// The stream an event id belongs to (0 is the standalone stream).
    pub fn stream(&self, number: u64) -> Option<Arc<EventStream>> {
        if number == 0 {
            return Some(self.standalone.clone());
        }
        let r = self.streams.lock().ok()?;
        let s = r.streams.get(&number)?;
        // Between sweeps an expired stream may still be in the table; it is gone all the same.
        if s.closed_for().is_some_and(|d| d >= RETAIN_FINISHED) {
            return None;
        }
        Some(s.clone())
    }

    fn close_all(&self) {
        self.standalone.close();
        if let Ok(r) = self.streams.lock() {
            for s in r.streams.values() {
                s.close();
            }
        }
    }
}

/// Finished POST streams kept for resumption, and when expired ones were last dropped.
struct Retained {
    streams: BTreeMap<u64, Arc<EventStream>>,
    swept: Instant,
}

/// Why a session was expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No request for `session_idle_timeout`.
    Idle,
    /// Only initialize and lists, then nothing for `unused_session_timeout`.
    Unused,
}

impl Expiry {
    pub fn label(self) -> &'static str {
        match self {
            Expiry::Idle => "idle",
            Expiry::Unused => "unused",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("too many open sessions (limit {0}); close unused sessions or raise gateway.max_sessions")]
pub struct TooManySessions(pub usize);

pub struct Sessions {
    map: RwLock<HashMap<Arc<str>, Arc<Session>>>,
    max: usize,
}

impl Sessions {
    pub fn new(max: usize) -> Sessions {
        Sessions {
            map: RwLock::new(HashMap::new()),
            max,
        }
    }

    pub fn create(
        &self,
        protocol: &'static str,
        identity: Identity,
    ) -> Result<Arc<Session>, TooManySessions> {
        let mut m = self.map.write().map_err(|_| TooManySessions(self.max))?;
        if m.len() >= self.max {
            return Err(TooManySessions(self.max));
        }
        let id: Arc<str> = Arc::from(new_session_id());
        let s = Arc::new(Session::new(id.clone(), protocol, identity));
        m.insert(id, s.clone());
        crate::metrics::global().sessions(1);
        Ok(s)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.map.read().ok()?.get(id).cloned()
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        let s = self.map.write().ok()?.remove(id)?;
        crate::metrics::global().sessions(-1);
        s.close_all();
        Some(s)
    }

    /// Removes sessions idle longer than `limit`, and sessions never used for more than
    /// initialize and lists idle longer than `unused`; returns their ids with the reason.
    pub fn expire(&self, limit: Duration, unused: Duration) -> Vec<(Arc<str>, Expiry)> {
        let why = |s: &Session| {
            let idle = s.idle_for();
            if idle > limit {
                Some(Expiry::Idle)
            } else if idle > unused && !s.is_engaged() {
                Some(Expiry::Unused)
            } else {
                None
            }
        };
        let Ok(mut m) = self.map.write() else {
            return Vec::new();
        };
        let stale: Vec<(Arc<str>, Expiry)> = m
            .iter()
            .filter_map(|(k, s)| why(s).map(|w| (k.clone(), w)))
            .collect();
        for (k, why) in &stale {
            if let Some(s) = m.remove(k) {
                let metrics = crate::metrics::global();
                metrics.sessions(-1);
                metrics.session_expired(why.label());
                s.close_all();
            }
        }
        stale
    }

    /// Removes the sessions `doomed` picks, closing their streams; returns their ids.
    pub fn remove_where(&self, doomed: impl Fn(&Session) -> bool) -> Vec<Arc<str>> {
        let Ok(mut m) = self.map.write() else {
            return Vec::new();
        };
        let stale: Vec<Arc<str>> = m
            .iter()
            .filter(|(_, s)| doomed(s))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &stale {
            if let Some(s) = m.remove(k) {
                crate::metrics::global().sessions(-1);
                s.close_all();
            }
        }
        stale
    }

    pub fn drain(&self) -> Vec<Arc<str>> {
        let Ok(mut m) = self.map.write() else {
            return Vec::new();
        };
        m.drain()
            .map(|(k, s)| {
                crate::metrics::global().sessions(-1);
                s.close_all();
                k
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.map.read().map(|m| m.len()).unwrap_or(0)
    }
}

/// 256 bits from the OS CSPRNG, hex-encoded: unguessable, and visible ASCII as the spec asks.
fn new_session_id() -> String {
    let mut buf = [0u8; 32];
    if getrandom::getrandom(&mut buf).is_err() {
        // Without OS randomness there is no safe session id; refuse rather than guess.
        // Failing here is effectively impossible on Linux (getrandom(2) blocks until seeded).
        std::process::abort();
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anon() -> Identity {
        Identity {
            client: Arc::from("anonymous"),
        }
    }

    #[test]
    fn a_full_stream_table_drops_the_oldest_finished_stream_only() {
        let s = Session::new(Arc::from("s"), "2025-11-25", anon());
        let streams: Vec<_> = (0..MAX_RETAINED_STREAMS).map(|_| s.open_stream()).collect();
        streams[5].close();
        streams[9].close();
        let newest = s.open_stream();
        assert!(
            s.stream(streams[5].number).is_none(),
            "oldest finished stream kept"
        );
        assert!(
            s.stream(streams[9].number).is_some(),
            "a newer finished stream was dropped"
        );
        assert!(
            s.stream(streams[0].number).is_some(),
            "an open stream was dropped"
        );
        assert!(s.stream(newest.number).is_some());
        let more = s.open_stream();
        assert!(s.stream(streams[9].number).is_none());
        assert!(s.stream(more.number).is_some());
        // With every stream still open there is nothing to drop: the table grows rather than
        // forget a stream that a client may still be reading.
        let open = Session::new(Arc::from("o"), "2025-11-25", anon());
        let all: Vec<_> = (0..=MAX_RETAINED_STREAMS)
            .map(|_| open.open_stream())
            .collect();
        assert!(all.iter().all(|st| open.stream(st.number).is_some()));
    }

    #[test]
    fn sessions_used_only_for_lists_expire_first() {
        let s = Sessions::new(10);
        let checked = s.create("2025-11-25", anon()).unwrap();
        let used = s.create("2025-11-25", anon()).unwrap();
        used.engage();
        std::thread::sleep(Duration::from_millis(30));
        let gone = s.expire(Duration::from_secs(60), Duration::from_millis(10));
        assert_eq!(gone, vec![(checked.id.clone(), Expiry::Unused)]);
        assert!(s.get(&used.id).is_some());
        let gone = s.expire(Duration::from_millis(10), Duration::from_millis(10));
        assert_eq!(gone, vec![(used.id.clone(), Expiry::Idle)]);
    }

    #[test]
    fn ids_are_random_and_capacity_is_enforced() {
        let s = Sessions::new(2);
        let a = s.create("2025-11-25", anon()).unwrap();
        let b = s.create("2025-11-25", anon()).unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 64);
        assert!(s.create("2025-11-25", anon()).is_err());
        assert!(s.remove(&a.id).is_some());
        assert!(s.get(&a.id).is_none());
        assert!(s.create("2025-11-25", anon()).is_ok());
    }
}
