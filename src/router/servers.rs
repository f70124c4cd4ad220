//! The servers behind the router and their instances, per lifecycle.
//!
//! A `shared` server is one supervised upstream for everyone. A `per-session` or `per-call`
//! server (sandboxed runtimes) gets a fresh instance per client session or per call, taken
//! from a warm pool of instances that have already started and completed the MCP handshake,
//! so that isolation does not put a container start on the critical path. The catalog of such
//! a server is read from a bootstrap instance at start-up.
//!
//! A policy reload replaces slots: a removed or replaced slot is retired (no new work, its
//! instances stop once their calls in flight end, or are stopped after a grace period), and a
//! replacing slot starts its instances only when the retired ones are gone.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::policy::diff::ServerChanges;
use crate::policy::{Lifecycle, Policy, Server};
use crate::sandbox::{Purpose, Runtime};
use crate::upstream::{StartOptions, State, Upstream, UpstreamEvent};

/// How long a retired instance that is still busy may finish its calls before it is stopped.
const STOP_WAIT: Duration = Duration::from_secs(10);

static NEXT_SLOT: AtomicU64 = AtomicU64::new(1);

pub(super) struct Dedicated {
    server: Server,
    runtime: Arc<dyn Runtime>,
    events: mpsc::Sender<UpstreamEvent>,
    policy_hash: String,
    pins: Arc<crate::sandbox::ImagePins>,
    /// The slot this belongs to; its instances are registered under it.
    slot: u64,
    start_after: Option<watch::Receiver<bool>>,
    /// Set when a reload removed or replaced the server: the pool is no longer refilled.
    retired: AtomicBool,
    pool: Mutex<VecDeque<Arc<Upstream>>>,
    pool_target: usize,
    /// Instances started for the pool that have not joined it yet.
    pool_starting: AtomicUsize,
    sessions: Mutex<HashMap<Arc<str>, Arc<Upstream>>>,
    /// The instance whose lists define this server's catalog, until they are loaded.
    bootstrap: Mutex<Option<Arc<Upstream>>>,
    catalog_loaded: AtomicBool,
    last_error: Mutex<Option<String>>,
}

pub(super) enum Slot {
    Shared { slot: u64, up: Arc<Upstream> },
    Dedicated(Arc<Dedicated>),
}

impl Slot {
    fn id(&self) -> u64 {
        match self {
            Slot::Shared { slot, .. } => *slot,
            Slot::Dedicated(d) => d.slot,
        }
    }
}

/// An instance lent for one request. A single-use instance is stopped when the lease ends.
pub(super) struct Lease {
    pub up: Arc<Upstream>,
    single_use: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.single_use {
            self.up.shutdown();
        }
    }
}

pub(super) struct Servers {
    slots: RwLock<BTreeMap<Arc<str>, Arc<Slot>>>,
    instances: Mutex<HashMap<u64, Registered>>,
    /// What servers started from now on run on (a reload may connect Docker late).
    runtime: RwLock<Arc<dyn Runtime>>,
    events: mpsc::Sender<UpstreamEvent>,
    /// Images docker servers must run (from the lock file), read at every start.
    pins: Arc<crate::sandbox::ImagePins>,
}

/// An instance the router started. The state outlives the `Upstream`: an instance whose last
/// handle is gone (a closed session's, a finished per-call lease's) is still being stopped by
/// its supervisor, and shutdown must wait for that too.
struct Registered {
    up: Weak<Upstream>,
    state: watch::Receiver<State>,
    slot: u64,
}

impl Registered {
    fn finished(&self) -> bool {
        self.up.strong_count() == 0 && matches!(*self.state.borrow(), State::Stopped)
    }
}

impl Servers {
    pub fn start(
        policy: &Policy,
        runtime: Arc<dyn Runtime>,
        events: mpsc::Sender<UpstreamEvent>,
        pins: Arc<crate::sandbox::ImagePins>,
    ) -> Servers {
        let me = Servers {
            slots: RwLock::new(BTreeMap::new()),
            instances: Mutex::new(HashMap::new()),
            runtime: RwLock::new(runtime),
            events,
            pins,
        };
        let policy_hash = policy_hash(policy);
        let slots: BTreeMap<Arc<str>, Arc<Slot>> = policy
            .servers
            .values()
            .map(|s| (Arc::from(s.name.as_str()), me.open(s, &policy_hash, None)))
            .collect();
        if let Ok(mut s) = me.slots.write() {
            *s = slots;
        }
        me
    }

    /// Starts a slot for `server`; its instances start once `start_after` reads `true`.
    fn open(
        &self,
        server: &Server,
        policy_hash: &str,
        start_after: Option<watch::Receiver<bool>>,
    ) -> Arc<Slot> {
        let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
        let runtime = match self.runtime.read() {
            Ok(r) => r.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let slot = match server.lifecycle {
            Lifecycle::Shared => {
                let up = Upstream::start(
                    server.clone(),
                    runtime,
                    self.events.clone(),
                    StartOptions {
                        policy_hash: policy_hash.to_owned(),
                        start_after,
                        image_pins: Some(self.pins.clone()),
                        ..StartOptions::default()
                    },
                );
                self.register(&up, slot);
                Slot::Shared { slot, up }
            }
            Lifecycle::PerSession | Lifecycle::PerCall => {
                let pool_target = match &server.runtime {
                    crate::policy::Runtime::Docker(d) => d.pool,
                    _ => 0,
                };
                let d = Arc::new(Dedicated {
                    server: server.clone(),
                    runtime,
                    events: self.events.clone(),
                    policy_hash: policy_hash.to_owned(),
                    pins: self.pins.clone(),
                    slot,
                    start_after,
                    retired: AtomicBool::new(false),
                    pool: Mutex::new(VecDeque::new()),
                    pool_target,
                    pool_starting: AtomicUsize::new(0),
                    sessions: Mutex::new(HashMap::new()),
                    bootstrap: Mutex::new(None),
                    catalog_loaded: AtomicBool::new(false),
                    last_error: Mutex::new(None),
                });
                // Restarts until the catalog has been read once.
                let boot = d.launch(Purpose::Pool, None, true);
                self.register(&boot, slot);
                if let Ok(mut b) = d.bootstrap.lock() {
                    *b = Some(boot);
                }
                Slot::Dedicated(d)
            }
        };
        Arc::new(slot)
    }

    /// Applies the server part of a reloaded policy: retires removed and replaced slots, opens
    /// new ones. `runtime`, when given, is what servers started from now on run on. Returns one
    /// future per retired slot that resolves when its instances have stopped (after at most
    /// `drain(server)` for calls in flight, then a bounded stop).
    pub fn replace(
        &self,
        policy: &Policy,
        changes: &ServerChanges,
        runtime: Option<Arc<dyn Runtime>>,
        drain: &dyn Fn(&str) -> Duration,
    ) -> Vec<impl Future<Output = ()> + Send + 'static> {
        if let Some(rt) = runtime {
            match self.runtime.write() {
                Ok(mut r) => *r = rt,
                Err(p) => *p.into_inner() = rt,
            }
        }
        let hash = policy_hash(policy);
        let mut retiring = Vec::new();
        let mut slots = match self.slots.write() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        for name in &changes.removed {
            if let Some(old) = slots.remove(name.as_str()) {
                retiring.push(self.retire(old, drain(name), None));
            }
        }
        for (name, _) in &changes.restarted {
            let Some(server) = policy.servers.get(name) else {
                continue;
            };
            let (open, gate) = watch::channel(false);
            let new = self.open(server, &hash, Some(gate));
            match slots.insert(Arc::from(name.as_str()), new) {
                Some(old) => retiring.push(self.retire(old, drain(name), Some(open))),
                None => {
                    let _ = open.send(true);
                }
            }
        }
        for name in &changes.added {
            if let Some(server) = policy.servers.get(name) {
                slots.insert(Arc::from(name.as_str()), self.open(server, &hash, None));
            }
        }
        retiring
    }

    /// Takes `slot` out of service. Its idle instances stop now; busy ones stop when their last
    /// call ends (the lease held the last reference), or after `drain`. Then `open` is set, so
    /// that a replacing slot starts.
    fn retire(
        &self,
        slot: Arc<Slot>,
        drain: Duration,
        open: Option<watch::Sender<bool>>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let id = slot.id();
        let members: Vec<(Weak<Upstream>, watch::Receiver<State>)> = self
            .instances
            .lock()
            .map(|m| {
                m.values()
                    .filter(|r| r.slot == id)
                    .map(|r| (r.up.clone(), r.state.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if let Slot::Dedicated(d) = &*slot {
            d.retired.store(true, Ordering::Release);
            let idle: Vec<Arc<Upstream>> = d
                .pool
                .lock()
                .map(|mut p| p.drain(..).collect())
                .unwrap_or_default();
            let boot = d.bootstrap.lock().ok().and_then(|mut b| b.take());
            for up in idle.iter().chain(boot.iter()) {
                up.shutdown();
            }
            // Session instances stop when the last call holding one ends.
            if let Ok(mut s) = d.sessions.lock() {
                s.clear();
            }
        }
        drop(slot);
        async move {
            let stopped = |members: &[(Weak<Upstream>, watch::Receiver<State>)]| {
                let waits = members.iter().map(|(_, rx)| {
                    let mut rx = rx.clone();
                    async move {
                        let _ = rx.wait_for(|s| matches!(s, State::Stopped)).await;
                    }
                });
                futures_util::future::join_all(waits)
            };
            if tokio::time::timeout(drain, stopped(&members))
                .await
                .is_err()
            {
                for (up, _) in &members {
                    if let Some(up) = up.upgrade() {
                        up.shutdown();
                    }
                }
                let _ = tokio::time::timeout(STOP_WAIT, stopped(&members)).await;
            }
            if let Some(open) = open {
                let _ = open.send(true);
            }
        }
    }

    fn slot(&self, server: &str) -> Option<Arc<Slot>> {
        self.slots.read().ok()?.get(server).cloned()
    }

    fn all_slots(&self) -> Vec<(Arc<str>, Arc<Slot>)> {
        self.slots
            .read()
            .map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }

    fn register(&self, up: &Arc<Upstream>, slot: u64) {
        if let Ok(mut m) = self.instances.lock() {
            if m.len() > 64 && m.len().is_power_of_two() {
                m.retain(|_, r| !r.finished());
            }
            m.insert(
                up.instance(),
                Registered {
                    up: Arc::downgrade(up),
                    state: up.watch_state(),
                    slot,
                },
            );
        }
    }

    /// The image pins every start reads.
    pub fn pins(&self) -> &crate::sandbox::ImagePins {
        &self.pins
    }

    pub fn len(&self) -> usize {
        self.slots.read().map(|s| s.len()).unwrap_or(0)
    }

    pub fn names(&self) -> Vec<Arc<str>> {
        self.slots
            .read()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_shared(&self, server: &str) -> bool {
        self.slot(server)
            .is_some_and(|s| matches!(*s, Slot::Shared { .. }))
    }

    /// The live instance with id `instance`.
    pub fn instance(&self, instance: u64) -> Option<Arc<Upstream>> {
        self.instances.lock().ok()?.get(&instance)?.up.upgrade()
    }

    /// Whether lists from `instance` define the catalog of its server.
    pub fn is_catalog_source(&self, server: &str, instance: u64) -> bool {
        let Some(slot) = self.slot(server) else {
            return false;
        };
        match &*slot {
            Slot::Shared { up, .. } => up.instance() == instance,
            Slot::Dedicated(d) => d
                .bootstrap
                .lock()
                .ok()
                .and_then(|b| b.as_ref().map(|u| u.instance() == instance))
                .unwrap_or(false),
        }
    }

    /// Called once the catalog has been read from the bootstrap instance of a dedicated server:
    /// the instance joins the warm pool (or stops) and the pool fills up.
    pub fn catalog_loaded(&self, server: &str) {
        let Some(slot) = self.slot(server) else {
            return;
        };
        let Slot::Dedicated(d) = &*slot else {
            return;
        };
        d.catalog_loaded.store(true, Ordering::Release);
        let boot = d.bootstrap.lock().ok().and_then(|mut b| b.take());
        if let Some(boot) = boot {
            let joined = d.pool_target > 0
                && d.pool
                    .lock()
                    .map(|mut p| {
                        p.push_back(boot.clone());
                        true
                    })
                    .unwrap_or(false);
            if !joined {
                boot.shutdown();
            }
        }
        self.refill(d);
    }

    pub fn note_error(&self, server: &str, reason: &str) {
        if let Some(slot) = self.slot(server) {
            if let Slot::Dedicated(d) = &*slot {
                if let Ok(mut e) = d.last_error.lock() {
                    *e = Some(reason.to_owned());
                }
            }
        }
    }

    fn refill(&self, d: &Arc<Dedicated>) {
        if d.retired.load(Ordering::Acquire) {
            return;
        }
        let have =
            d.pool.lock().map(|p| p.len()).unwrap_or(0) + d.pool_starting.load(Ordering::Acquire);
        for _ in have..d.pool_target {
            d.pool_starting.fetch_add(1, Ordering::AcqRel);
            let up = d.launch(Purpose::Pool, None, false);
            self.register(&up, d.slot);
            let d = d.clone();
            tokio::spawn(async move {
                let ready = up.ready(d.server.startup_timeout).await.is_ok();
                d.pool_starting.fetch_sub(1, Ordering::AcqRel);
                if ready && !d.retired.load(Ordering::Acquire) {
                    if let Ok(mut p) = d.pool.lock() {
                        p.push_back(up);
                    }
                } else {
                    up.shutdown();
                }
            });
        }
    }

    /// The instance that serves `session` at `server` for one request.
    pub fn acquire(&self, server: &str, session: &Arc<str>) -> Option<Lease> {
        let slot = self.slot(server)?;
        match &*slot {
            Slot::Shared { up, .. } => Some(Lease {
                up: up.clone(),
                single_use: false,
            }),
            Slot::Dedicated(d) => {
                let per_call = d.server.lifecycle == Lifecycle::PerCall;
                if !per_call {
                    let mut sessions = d.sessions.lock().ok()?;
                    if let Some(up) = sessions.get(session) {
                        if !matches!(up.state(), State::Stopped) {
                            return Some(Lease {
                                up: up.clone(),
                                single_use: false,
                            });
                        }
                    }
                    let up = self.take_warm(d, session, true);
                    sessions.insert(session.clone(), up.clone());
                    drop(sessions);
                    self.refill(d);
                    return Some(Lease {
                        up,
                        single_use: false,
                    });
                }
                let up = self.take_warm(d, session, false);
                self.refill(d);
                Some(Lease {
                    up,
                    single_use: true,
                })
            }
        }
    }

    fn take_warm(&self, d: &Arc<Dedicated>, session: &Arc<str>, restart: bool) -> Arc<Upstream> {
        let warm = d.pool.lock().ok().and_then(|mut p| {
            while let Some(up) = p.pop_front() {
                if matches!(up.state(), State::Ready(_)) {
                    return Some(up);
                }
                up.shutdown();
            }
            None
        });
        match warm {
            Some(up) => {
                let _ = up.source().owner.set(session.clone());
                up
            }
            None => {
                let purpose = if restart {
                    Purpose::Session
                } else {
                    Purpose::Call
                };
                let up = d.launch(purpose, Some(session.clone()), restart);
                self.register(&up, d.slot);
                up
            }
        }
    }

    /// Stops the instances dedicated to `session`.
    pub fn close_session(&self, session: &str) {
        for (_, slot) in self.all_slots() {
            if let Slot::Dedicated(d) = &*slot {
                if let Some(up) = d.sessions.lock().ok().and_then(|mut s| s.remove(session)) {
                    up.shutdown();
                }
            }
        }
    }

    /// Every running instance (for broadcasts such as log levels).
    pub fn live(&self) -> Vec<Arc<Upstream>> {
        self.instances
            .lock()
            .map(|m| m.values().filter_map(|r| r.up.upgrade()).collect())
            .unwrap_or_default()
    }

    /// Instances a session's notifications concern: shared ones and its own.
    pub fn for_session(&self, session: &str) -> Vec<Arc<Upstream>> {
        self.all_slots()
            .into_iter()
            .filter_map(|(_, slot)| match &*slot {
                Slot::Shared { up, .. } => Some(up.clone()),
                Slot::Dedicated(d) => d.sessions.lock().ok().and_then(|s| s.get(session).cloned()),
            })
            .collect()
    }

    pub fn readiness(&self) -> Vec<(String, Result<(), String>)> {
        self.all_slots()
            .into_iter()
            .map(|(name, slot)| {
                let state = match &*slot {
                    Slot::Shared { up, .. } => match up.state() {
                        State::Ready(_) => Ok(()),
                        State::Starting => Err("starting".to_owned()),
                        State::Down { reason } => Err(reason),
                        State::Stopped => Err("stopped".to_owned()),
                    },
                    Slot::Dedicated(d) if d.catalog_loaded.load(Ordering::Acquire) => Ok(()),
                    Slot::Dedicated(d) => Err(d
                        .last_error
                        .lock()
                        .ok()
                        .and_then(|e| e.clone())
                        .unwrap_or_else(|| "loading its catalog".to_owned())),
                };
                (name.to_string(), state)
            })
            .collect()
    }

    /// Stops every instance and waits (bounded) until each supervisor has stopped its server,
    /// including instances no one holds any more that are still being stopped, so that the
    /// runtime's final sweep does not race their removal.
    pub async fn shutdown(&self) {
        let all = self.live();
        for up in &all {
            up.shutdown();
        }
        let states: Vec<watch::Receiver<State>> = self
            .instances
            .lock()
            .map(|m| m.values().map(|r| r.state.clone()).collect())
            .unwrap_or_default();
        let waits = futures_util::future::join_all(states.into_iter().map(|mut rx| async move {
            let _ = rx.wait_for(|s| matches!(s, State::Stopped)).await;
        }));
        let _ = tokio::time::timeout(Duration::from_secs(10), waits).await;
    }
}

impl Dedicated {
    fn launch(&self, purpose: Purpose, owner: Option<Arc<str>>, restart: bool) -> Arc<Upstream> {
        Upstream::start(
            self.server.clone(),
            self.runtime.clone(),
            self.events.clone(),
            StartOptions {
                owner,
                purpose,
                restart,
                policy_hash: self.policy_hash.clone(),
                start_after: self.start_after.clone(),
                image_pins: Some(self.pins.clone()),
            },
        )
    }
}

/// A short, stable fingerprint of the policy, for labels and the audit log.
fn policy_hash(policy: &Policy) -> String {
    use sha2::{Digest, Sha256};
    let text = format!("{:?}", policy.servers);
    hex::encode(&Sha256::digest(text.as_bytes())[..8])
}
