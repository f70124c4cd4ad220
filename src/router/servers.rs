//! The servers behind the router and their instances, per lifecycle.
//!
//! A `shared` server is one supervised upstream for everyone. A `per-session` or `per-call`
//! server (sandboxed runtimes) gets a fresh instance per client session or per call, taken
//! from a warm pool of instances that have already started and completed the MCP handshake,
//! so that isolation does not put a container start on the critical path. The catalog of such
//! a server is read from a bootstrap instance at start-up.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::policy::{Lifecycle, Policy, Server};
use crate::sandbox::{Purpose, Runtime};
use crate::upstream::{StartOptions, State, Upstream, UpstreamEvent};

pub(super) struct Dedicated {
    server: Server,
    runtime: Arc<dyn Runtime>,
    events: mpsc::Sender<UpstreamEvent>,
    policy_hash: String,
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
    Shared(Arc<Upstream>),
    Dedicated(Arc<Dedicated>),
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
    slots: BTreeMap<Arc<str>, Slot>,
    instances: Mutex<HashMap<u64, Registered>>,
}

/// An instance the router started. The state outlives the `Upstream`: an instance whose last
/// handle is gone (a closed session's, a finished per-call lease's) is still being stopped by
/// its supervisor, and shutdown must wait for that too.
struct Registered {
    up: Weak<Upstream>,
    state: watch::Receiver<State>,
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
    ) -> Servers {
        let me = Servers {
            slots: BTreeMap::new(),
            instances: Mutex::new(HashMap::new()),
        };
        let policy_hash = policy_hash(policy);
        let mut slots = BTreeMap::new();
        for server in policy.servers.values() {
            let name: Arc<str> = Arc::from(server.name.as_str());
            let slot = match server.lifecycle {
                Lifecycle::Shared => {
                    let up = Upstream::start(
                        server.clone(),
                        runtime.clone(),
                        events.clone(),
                        StartOptions {
                            policy_hash: policy_hash.clone(),
                            ..StartOptions::default()
                        },
                    );
                    me.register(&up);
                    Slot::Shared(up)
                }
                Lifecycle::PerSession | Lifecycle::PerCall => {
                    let pool_target = match &server.runtime {
                        crate::policy::Runtime::Docker(d) => d.pool,
                        _ => 0,
                    };
                    let d = Arc::new(Dedicated {
                        server: server.clone(),
                        runtime: runtime.clone(),
                        events: events.clone(),
                        policy_hash: policy_hash.clone(),
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
                    me.register(&boot);
                    if let Ok(mut b) = d.bootstrap.lock() {
                        *b = Some(boot);
                    }
                    Slot::Dedicated(d)
                }
            };
            slots.insert(name, slot);
        }
        Servers { slots, ..me }
    }

    fn register(&self, up: &Arc<Upstream>) {
        if let Ok(mut m) = self.instances.lock() {
            if m.len() > 64 && m.len().is_power_of_two() {
                m.retain(|_, r| !r.finished());
            }
            m.insert(
                up.instance(),
                Registered {
                    up: Arc::downgrade(up),
                    state: up.watch_state(),
                },
            );
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.slots.keys()
    }

    pub fn is_shared(&self, server: &str) -> bool {
        matches!(self.slots.get(server), Some(Slot::Shared(_)))
    }

    /// The live instance with id `instance`.
    pub fn instance(&self, instance: u64) -> Option<Arc<Upstream>> {
        self.instances.lock().ok()?.get(&instance)?.up.upgrade()
    }

    /// Whether lists from `instance` define the catalog of its server.
    pub fn is_catalog_source(&self, server: &str, instance: u64) -> bool {
        match self.slots.get(server) {
            Some(Slot::Shared(up)) => up.instance() == instance,
            Some(Slot::Dedicated(d)) => d
                .bootstrap
                .lock()
                .ok()
                .and_then(|b| b.as_ref().map(|u| u.instance() == instance))
                .unwrap_or(false),
            None => false,
        }
    }

    /// Called once the catalog has been read from the bootstrap instance of a dedicated server:
    /// the instance joins the warm pool (or stops) and the pool fills up.
    pub fn catalog_loaded(&self, server: &str) {
        let Some(Slot::Dedicated(d)) = self.slots.get(server) else {
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
        if let Some(Slot::Dedicated(d)) = self.slots.get(server) {
            if let Ok(mut e) = d.last_error.lock() {
                *e = Some(reason.to_owned());
            }
        }
    }

    fn refill(&self, d: &Arc<Dedicated>) {
        let have =
            d.pool.lock().map(|p| p.len()).unwrap_or(0) + d.pool_starting.load(Ordering::Acquire);
        for _ in have..d.pool_target {
            d.pool_starting.fetch_add(1, Ordering::AcqRel);
            let up = d.launch(Purpose::Pool, None, false);
            self.register(&up);
            let d = d.clone();
            tokio::spawn(async move {
                let ready = up.ready(d.server.startup_timeout).await.is_ok();
                d.pool_starting.fetch_sub(1, Ordering::AcqRel);
                if ready {
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
        match self.slots.get(server)? {
            Slot::Shared(up) => Some(Lease {
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
                self.register(&up);
                up
            }
        }
    }

    /// Stops the instances dedicated to `session`.
    pub fn close_session(&self, session: &str) {
        for slot in self.slots.values() {
            if let Slot::Dedicated(d) = slot {
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
        self.slots
            .values()
            .filter_map(|slot| match slot {
                Slot::Shared(up) => Some(up.clone()),
                Slot::Dedicated(d) => d.sessions.lock().ok().and_then(|s| s.get(session).cloned()),
            })
            .collect()
    }

    pub fn readiness(&self) -> Vec<(String, Result<(), String>)> {
        self.slots
            .iter()
            .map(|(name, slot)| {
                let state = match slot {
                    Slot::Shared(up) => match up.state() {
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
