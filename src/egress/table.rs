//! The worker thread that owns the netlink socket and `table inet portcullis`.
//!
//! Everything that touches the kernel goes through this one thread, in order: table
//! replacements, pin additions and the periodic watch. That ordering is what makes replaying the
//! pin cache during a replacement race-free (no pin can be acknowledged between the snapshot of
//! the cache and the commit of the new table). Netlink calls block, so they live here and never
//! on the async runtime.
//!
//! The watch runs every `watch_interval`: it reads the table back and, if it is missing or its
//! shape differs from what was programmed (a flushed ruleset, a deleted chain, an added or
//! removed rule), programs it again and reports [`EgressEvent::Restored`]; if that fails it
//! reports [`EgressEvent::RestoreFailed`] with the servers that are now unprotected, so the
//! gateway can stop them (once per loss; the watch keeps retrying, and [`super::Egress::is_enforcing`]
//! stays false until a retry succeeds). It also turns the drop counters into rate-limited
//! [`EgressEvent::Denied`] events (at most one per server per interval, carrying the count).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::nft::{Netlink, NftError, Snapshot};
use super::ruleset::{self, ServerNet, Table};
use super::sets::{Pin, PinCache};
use crate::policy::Server;

/// What the gateway should audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressEvent {
    /// Packets from a server's sandbox were dropped since the last report.
    Denied { server: String, packets: u64 },
    /// The table was found missing or altered and was programmed again.
    Restored { reason: String },
    /// The table was found missing or altered and could not be restored: these servers are
    /// without enforcement and must be stopped.
    RestoreFailed { servers: Vec<String>, error: String },
    /// A server's resolver refused `queries` questions over its DNS budget since its last
    /// report (at most one report per server per interval).
    DnsOverBudget {
        server: String,
        queries: u64,
        rate: crate::policy::Rate,
    },
}

pub(crate) enum Cmd {
    /// Sets the desired servers and replaces the table.
    Apply {
        servers: BTreeMap<String, (Server, ServerNet)>,
        reply: oneshot::Sender<Result<(), NftError>>,
    },
    Pin {
        server: String,
        pins: Vec<Pin>,
        timeout: Duration,
        reply: oneshot::Sender<Result<(), NftError>>,
    },
    Snapshot {
        reply: oneshot::Sender<Result<Option<Snapshot>, NftError>>,
    },
    /// Deletes the table (used on shutdown).
    Remove {
        reply: oneshot::Sender<Result<(), NftError>>,
    },
}

pub(crate) struct WorkerHandle {
    pub tx: SyncSender<Cmd>,
    /// False from a failed restore until the table is programmed again.
    pub enforcing: Arc<AtomicBool>,
    /// For events that do not come from the worker (the resolvers' budget reports).
    pub events: mpsc::Sender<EgressEvent>,
}

/// Bounded: a flood of lookups waits here (and then fails closed) instead of growing memory.
const QUEUE: usize = 1024;
const EVENTS: usize = 256;

pub(crate) fn spawn(
    netns: Option<PathBuf>,
    watch_interval: Duration,
) -> Result<(WorkerHandle, mpsc::Receiver<EgressEvent>), NftError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Cmd>(QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENTS);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), NftError>>();
    let enforcing = Arc::new(AtomicBool::new(true));
    let flag = enforcing.clone();
    let events = ev_tx.clone();
    std::thread::Builder::new()
        .name("portcullis-nft".into())
        .spawn(move || {
            if let Some(ns) = &netns {
                if let Err(e) = super::netns::enter(ns) {
                    let _ = ready_tx.send(Err(NftError::Io(e)));
                    return;
                }
            }
            let nl = match Netlink::open() {
                Ok(nl) => nl,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            Worker {
                nl,
                desired: BTreeMap::new(),
                table: Table::default(),
                cache: PinCache::default(),
                counters: BTreeMap::new(),
                events: ev_tx,
                programmed: false,
                enforcing: flag,
            }
            .run(rx, watch_interval);
        })
        .map_err(NftError::Io)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((
            WorkerHandle {
                tx,
                enforcing,
                events,
            },
            ev_rx,
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NftError::Io(std::io::Error::other(
            "the netlink worker exited at start",
        ))),
    }
}

impl WorkerHandle {
    pub fn send(&self, cmd: Cmd) -> Result<(), NftError> {
        self.tx.try_send(cmd).map_err(|e| {
            NftError::Io(std::io::Error::other(match e {
                TrySendError::Full(_) => "the netlink worker is saturated",
                TrySendError::Disconnected(_) => "the netlink worker has stopped",
            }))
        })
    }
}

struct Worker {
    nl: Netlink,
    desired: BTreeMap<String, (Server, ServerNet)>,
    table: Table,
    cache: PinCache,
    /// Last seen drop count per server.
    counters: BTreeMap<String, u64>,
    events: mpsc::Sender<EgressEvent>,
    /// Whether this worker has programmed the table (before that, the watch has nothing to
    /// protect and must not create one).
    programmed: bool,
    enforcing: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Cmd>, interval: Duration) {
        let mut next_watch = Instant::now() + interval;
        loop {
            let wait = next_watch.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Timeout) => {
                    self.watch();
                    next_watch = Instant::now() + interval;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Apply { servers, reply } => {
                let previous = std::mem::replace(&mut self.desired, servers);
                for (name, (old, _)) in &previous {
                    match self.desired.get(name) {
                        None => {
                            self.cache.forget_server(name);
                            self.counters.remove(name);
                        }
                        // Changed rules: pins made under the old ones are not carried over,
                        // so a destination the policy no longer allows closes at once.
                        Some((new, _)) if new != old => self.cache.forget_server(name),
                        Some(_) => {}
                    }
                }
                let r = self.program();
                if r.is_ok() && !self.enforcing.swap(true, Ordering::SeqCst) {
                    // The table was lost and could not be restored; this replacement (a server
                    // added or removed) succeeded, so it is in force again.
                    self.counters.clear();
                    self.emit(EgressEvent::Restored {
                        reason: "table inet portcullis had been lost; programmed again".into(),
                    });
                }
                if r.is_err() {
                    // The kernel still holds the previous table (the batch was aborted), so
                    // the desired state goes back to what is actually enforced.
                    self.desired = previous;
                    self.table = build(&self.desired);
                }
                let _ = reply.send(r);
            }
            Cmd::Pin {
                server,
                pins,
                timeout,
                reply,
            } => {
                let _ = reply.send(self.pin(&server, &pins, timeout));
            }
            Cmd::Snapshot { reply } => {
                let _ = reply.send(self.nl.snapshot());
            }
            Cmd::Remove { reply } => {
                let r = self.remove();
                let _ = reply.send(r);
            }
        }
    }

    fn remove(&mut self) -> Result<(), NftError> {
        self.programmed = false;
        self.desired.clear();
        self.table = Table::default();
        self.cache = PinCache::default();
        let mut b = self.nl.batch();
        b.add_table()?;
        b.del_table()?;
        self.nl.commit(b, "deleting table inet portcullis")
    }

    fn pin(&mut self, server: &str, pins: &[Pin], timeout: Duration) -> Result<(), NftError> {
        if !self.desired.contains_key(server) {
            return Err(NftError::Io(std::io::Error::other(format!(
                "server `{server}` has no rules programmed"
            ))));
        }
        let now = Instant::now();
        let mut b = self.nl.batch();
        for (set, elems) in self.cache.lengthen(server, pins, timeout, now) {
            b.put_elements(&set, &elems)?;
        }
        self.nl
            .commit(b, &format!("pinning addresses for server `{server}`"))?;
        self.cache.record(server, pins, timeout, now);
        Ok(())
    }

    /// Replaces the table with the desired one plus the live pins, then reads it back.
    fn program(&mut self) -> Result<(), NftError> {
        let table = build(&self.desired);
        let now = Instant::now();
        self.cache.prune(now);
        let mut b = self.nl.batch();
        b.replace_table(&table)?;
        let live_sets: std::collections::BTreeSet<&str> =
            table.sets.iter().map(|s| s.name.as_str()).collect();
        for (set, elems) in self.cache.replay(now) {
            if live_sets.contains(set.as_str()) {
                b.put_elements(&set, &elems)?;
            }
        }
        self.nl.commit(b, "replacing table inet portcullis")?;
        self.table = table;
        self.programmed = true;
        self.verify()
    }

    fn verify(&mut self) -> Result<(), NftError> {
        let expected = Snapshot::expected(&self.table);
        match self.nl.snapshot()? {
            Some(s) if s.same_shape(&expected) => Ok(()),
            Some(_) => Err(NftError::Io(std::io::Error::other(
                "read-back of table inet portcullis differs from what was programmed",
            ))),
            None => Err(NftError::Io(std::io::Error::other(
                "table inet portcullis is missing right after programming it",
            ))),
        }
    }

    fn emit(&self, ev: EgressEvent) {
        // A full queue means the consumer is behind: dropping a report is better than blocking
        // the thread that answers DNS pins.
        let _ = self.events.try_send(ev);
    }

    fn watch(&mut self) {
        if !self.programmed {
            return;
        }
        self.cache.prune(Instant::now());
        let expected = Snapshot::expected(&self.table);
        let reason = match self.nl.snapshot() {
            Ok(Some(s)) if s.same_shape(&expected) => {
                self.report_denials(&s);
                return;
            }
            Ok(Some(_)) => "table inet portcullis was altered".to_string(),
            Ok(None) => "table inet portcullis was removed".to_string(),
            Err(e) => format!("table inet portcullis could not be read back: {e}"),
        };
        match self.program() {
            Ok(()) => {
                // Counters restart from zero in the new table.
                self.counters.clear();
                self.enforcing.store(true, Ordering::SeqCst);
                self.emit(EgressEvent::Restored { reason });
            }
            Err(e) => {
                // Cleared before the event goes out, so no sandbox starts in between. Reported
                // once per loss: the watch keeps trying every interval, and no sandbox can
                // start meanwhile, so repeating it would only flood the audit log.
                if self.enforcing.swap(false, Ordering::SeqCst) {
                    self.emit(EgressEvent::RestoreFailed {
                        servers: self.desired.keys().cloned().collect(),
                        error: format!("{reason}; re-programming failed: {e}"),
                    });
                }
            }
        }
    }

    fn report_denials(&mut self, s: &Snapshot) {
        for name in self.desired.keys() {
            let total: u64 = [ruleset::srv_chain(name), ruleset::in_chain(name)]
                .iter()
                .filter_map(|c| s.counters.get(c))
                .sum();
            let last = self.counters.insert(name.clone(), total).unwrap_or(0);
            if total > last {
                self.emit(EgressEvent::Denied {
                    server: name.clone(),
                    packets: total - last,
                });
            }
        }
    }
}

fn build(desired: &BTreeMap<String, (Server, ServerNet)>) -> Table {
    let pairs: Vec<(&Server, &ServerNet)> = desired.values().map(|(s, n)| (s, n)).collect();
    ruleset::build(&pairs)
}
