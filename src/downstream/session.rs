//! Downstream sessions: the id a client got at initialize, what it negotiated, its streams.
//!
//! The table keeps a count of sessions per client. Creating a session checks the client's own
//! quota first; when the gateway-wide limit is reached, an idle session is evicted to make room
//! ([`super::eviction`]). A session is idle when no request of its own is being handled and no
//! stream of it is open or unfinished, so eviction never cuts off work in progress.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::event_stream::EventStream;
use crate::access::{Identity, Limited, SessionLimit};
use crate::mcp::{ClientCaps, Request, RequestContext};
use crate::router::Inbound;

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
    /// What the client's initialize declared.
    caps: std::sync::OnceLock<ClientCaps>,
    /// Whether the client did more than initialize and list: called, read, answered a server,
    /// or held a stream open. Sessions that never do expire sooner (health checks).
    engaged: std::sync::atomic::AtomicBool,
    /// Requests of this session being handled now ([`InUse`] guards).
    in_flight: AtomicUsize,
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
            caps: std::sync::OnceLock::new(),
            engaged: std::sync::atomic::AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Records the capabilities the client's initialize declared (the first time only).
    pub fn set_caps(&self, caps: ClientCaps) {
        let _ = self.caps.set(caps);
    }

    /// One request of this session in the router's model.
    pub fn inbound(&self, request: Request) -> Inbound {
        let caps = self.caps.get().copied().unwrap_or_default();
        let context = RequestContext::of_session(self.protocol, caps, request.params.as_deref());
        Inbound {
            identity: self.identity.clone(),
            session: self.id.clone(),
            request,
            context,
        }
    }

    /// Whether the session has work in progress: a request being handled, a stream a client
    /// reads, or a POST stream whose answer is not written yet. Such a session is never evicted.
    pub fn busy(&self) -> bool {
        if self.in_flight.load(Ordering::Acquire) > 0 || self.standalone.is_attached() {
            return true;
        }
        self.streams.lock().is_ok_and(|r| {
            r.streams
                .values()
                .any(|s| !s.is_closed() || s.is_attached())
        })
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

    pub(super) fn idle_for(&self) -> Duration {
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

/// Why a session was not created.
#[derive(Debug)]
pub enum Refused {
    /// The gateway holds `max_sessions` sessions and none of them may be evicted.
    GatewayFull(usize),
    /// The client holds as many sessions as its quota allows.
    ClientLimit {
        client: Arc<str>,
        limit: SessionLimit,
    },
    /// The client opens sessions faster than its `session_rate`.
    Rate(Limited),
}

/// Where a client's session quota comes from, for a refusal's advice.
pub(super) fn quota_source(client: &str, limit: SessionLimit) -> String {
    if limit.set {
        format!("clients.{client}.max_sessions")
    } else {
        format!("the default: 256, at most half of gateway.max_sessions; set clients.{client}.max_sessions to change it")
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::GatewayFull(max) => write!(f, "too many open sessions (limit {max}), and every one is in use; close unused sessions or raise gateway.max_sessions"),
            Refused::ClientLimit { client, limit } => {
                let source = quota_source(client, *limit);
                write!(f, "client `{client}` already has {} open sessions, its limit ({source}); end sessions it no longer uses (HTTP DELETE) before opening more", limit.max)
            }
            Refused::Rate(l) => {
                let secs = l.retry_after.as_secs_f64().ceil().max(1.0);
                write!(f, "rate limited: {}; retry in {secs}s", l.scope)
            }
        }
    }
}

/// A new session, and the idle session closed to make room for it (to be closed in the router).
pub struct Created {
    pub session: Arc<Session>,
    pub evicted: Option<Arc<Session>>,
}

/// A request of a session being handled: while one lives, the session is busy (not evicted).
pub struct InUse(Arc<Session>);

impl std::ops::Deref for InUse {
    type Target = Arc<Session>;
    fn deref(&self) -> &Arc<Session> {
        &self.0
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Default)]
struct Table {
    map: HashMap<Arc<str>, Arc<Session>>,
    per_client: HashMap<Arc<str>, usize>,
}

impl Table {
    fn insert(&mut self, s: Arc<Session>) {
        self.map.insert(s.id.clone(), s.clone());
        let n = self
            .per_client
            .entry(s.identity.client.clone())
            .or_default();
        *n += 1;
        let metrics = crate::metrics::global();
        metrics.sessions(1);
        metrics.client_sessions(&s.identity.client, *n);
    }

    /// Takes a session out of the table and closes its streams.
    fn take(&mut self, id: &str) -> Option<Arc<Session>> {
        let s = self.map.remove(id)?;
        let client = &s.identity.client;
        let left = match self.per_client.get_mut(client) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            self.per_client.remove(client);
        }
        let metrics = crate::metrics::global();
        metrics.sessions(-1);
        metrics.client_sessions(client, left);
        s.close_all();
        Some(s)
    }
}

pub struct Sessions {
    table: RwLock<Table>,
    max: usize,
}

impl Sessions {
    pub fn new(max: usize) -> Sessions {
        Sessions {
            table: RwLock::new(Table::default()),
            max,
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, Table> {
        match self.table.write() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        }
    }

    /// Creates a session for `identity` within its quota (`limit`) and creation rate (`rate`,
    /// asked only when the quota allows, so refusals take nothing from it). When the gateway is
    /// full, the idle session [`super::eviction::victim`] picks makes room.
    pub fn create(
        &self,
        protocol: &'static str,
        identity: Identity,
        limit: SessionLimit,
        rate: impl FnOnce() -> Result<(), Limited>,
    ) -> Result<Created, Refused> {
        let mut t = self.write();
        let client = identity.client.clone();
        let held = t.per_client.get(&client).copied().unwrap_or(0);
        if held >= limit.max {
            return Err(Refused::ClientLimit { client, limit });
        }
        rate().map_err(Refused::Rate)?;
        let evicted = if t.map.len() >= self.max {
            let victim = super::eviction::victim(t.map.values(), &t.per_client, &client)
                .ok_or(Refused::GatewayFull(self.max))?;
            t.take(&victim)
        } else {
            None
        };
        let id: Arc<str> = Arc::from(new_session_id());
        let s = Arc::new(Session::new(id, protocol, identity));
        t.insert(s.clone());
        Ok(Created {
            session: s,
            evicted,
        })
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.table.read().ok()?.map.get(id).cloned()
    }

    /// The session `id`, marked busy until the guard drops. Marked under the table's lock, so
    /// an eviction either sees the request or happened before it (and the request gets 404).
    pub fn enter(&self, id: &str) -> Option<InUse> {
        let t = self.table.read().ok()?;
        let s = t.map.get(id)?.clone();
        s.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(InUse(s))
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.write().take(id)
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
        let mut t = self.write();
        let stale: Vec<(Arc<str>, Expiry)> = t
            .map
            .iter()
            .filter_map(|(k, s)| why(s).map(|w| (k.clone(), w)))
            .collect();
        for (k, why) in &stale {
            if t.take(k).is_some() {
                crate::metrics::global().session_expired(why.label());
            }
        }
        stale
    }

    /// Removes the sessions `doomed` picks, closing their streams; returns their ids.
    pub fn remove_where(&self, doomed: impl Fn(&Session) -> bool) -> Vec<Arc<str>> {
        let mut t = self.write();
        let stale: Vec<Arc<str>> = t
            .map
            .iter()
            .filter(|(_, s)| doomed(s))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &stale {
            t.take(k);
        }
        stale
    }

    pub fn drain(&self) -> Vec<Arc<str>> {
        self.remove_where(|_| true)
    }

    pub fn len(&self) -> usize {
        self.table.read().map(|t| t.map.len()).unwrap_or(0)
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
pub(super) mod tests {
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

    pub(in crate::downstream) fn who(client: &str) -> Identity {
        Identity {
            client: Arc::from(client),
        }
    }

    /// Opens a session for `client` with quota `max` and no creation rate.
    pub(in crate::downstream) fn open(
        s: &Sessions,
        client: &str,
        max: usize,
    ) -> Result<Created, Refused> {
        let limit = SessionLimit { max, set: false };
        s.create("2025-11-25", who(client), limit, || Ok(()))
    }

    #[test]
    fn sessions_used_only_for_lists_expire_first() {
        let s = Sessions::new(10);
        let checked = open(&s, "anonymous", 10).unwrap().session;
        let used = open(&s, "anonymous", 10).unwrap().session;
        used.engage();
        std::thread::sleep(Duration::from_millis(30));
        let gone = s.expire(Duration::from_secs(60), Duration::from_millis(10));
        assert_eq!(gone, vec![(checked.id.clone(), Expiry::Unused)]);
        assert!(s.get(&used.id).is_some());
        let gone = s.expire(Duration::from_millis(10), Duration::from_millis(10));
        assert_eq!(gone, vec![(used.id.clone(), Expiry::Idle)]);
    }

    #[test]
    fn ids_are_random_and_the_client_quota_comes_before_the_rate() {
        let s = Sessions::new(10);
        let a = open(&s, "bob", 2).unwrap().session;
        let b = open(&s, "bob", 2).unwrap().session;
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 64);
        let limit = SessionLimit { max: 2, set: true };
        let refused = s.create("2025-11-25", who("bob"), limit, || {
            panic!("a refused session took from the creation rate")
        });
        let Err(e) = refused else {
            panic!("over quota")
        };
        let text = e.to_string();
        assert!(
            text.contains("client `bob` already has 2 open sessions")
                && text.contains("clients.bob.max_sessions"),
            "{text}"
        );
        assert!(
            open(&s, "alice", 2).is_ok(),
            "another client has its own quota"
        );
        assert!(s.remove(&a.id).is_some());
        assert!(s.get(&a.id).is_none());
        assert!(open(&s, "bob", 2).is_ok());
    }

    #[test]
    fn a_full_gateway_evicts_an_idle_session_and_never_a_busy_one() {
        let s = Sessions::new(2);
        let first = open(&s, "bob", 5).unwrap().session;
        let second = open(&s, "bob", 5).unwrap().session;
        let calling = s.enter(&first.id).unwrap();
        let _reading = second.standalone.attach(None).unwrap();
        assert!(matches!(open(&s, "alice", 5), Err(Refused::GatewayFull(2))));
        drop(calling);
        let made = open(&s, "alice", 5).unwrap();
        let evicted = made.evicted.expect("an idle session made room");
        assert_eq!(evicted.id, first.id);
        assert!(s.get(&first.id).is_none() && s.get(&second.id).is_some());
        assert_eq!(s.len(), 2);
    }
}
