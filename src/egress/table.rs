//! The worker thread that owns the netlink socket and the instance's table
//! (`inet portcullis_<instance>`, see `names.rs`).
//!
//! Everything that touches the kernel goes through this one thread and its one socket, in
//! order: table replacements, pin additions and the periodic watch. One socket for the worker's
//! whole life is also what ownership needs: the table is created with
//! `NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST`, so only this socket may change or delete it
//! (anyone else, root included, gets EPERM, and `nft flush ruleset` passes it by), and when the
//! socket closes (the gateway exits or dies) the kernel keeps the table, still filtering, as an
//! orphan that the next start of the same instance adopts.
//!
//! At start ([`spawn`]) the worker probes whether the kernel has both flags ([`Protection`]:
//! without them it falls back to the watch alone) and claims the instance's table: one that
//! another live socket owns means another gateway runs this instance (refused); one left by an
//! earlier run of this instance (an orphan, or a table without flags) is replaced in one
//! transaction by an empty table of ours, which keeps the leftover sandbox interfaces closed
//! until they are cleaned up; and a table of another instance whose interface prefix equals
//! ours is refused (their rules would judge each other's sandboxes). That ordering is what makes replaying the
//! pin cache during a replacement race-free (no pin can be acknowledged between the snapshot of
//! the cache and the commit of the new table). Netlink calls block, so they live here and never
//! on the async runtime.
//!
//! The watch runs every `watch_interval` (the second line behind ownership, and the only one
//! without it): it reads the table back and, if it is missing or its shape differs from what
//! was programmed (a flushed ruleset, a deleted chain, an added or
//! removed rule), programs it again and reports [`EgressEvent::Restored`]; if that fails it
//! reports [`EgressEvent::RestoreFailed`] with the servers that are now unprotected, so the
//! gateway can stop them (once per loss; the watch keeps retrying, and [`super::Egress::is_enforcing`]
//! stays false until a retry succeeds). It also turns the drop counters into rate-limited
//! [`EgressEvent::Denied`] events (at most one per server per interval, carrying the count and
//! the destinations the NFLOG listener tallied, see `nflog/mod.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::event::EgressEvent;
use super::names::{self, Names};
use super::nflog::Listener;
use super::nft::{Netlink, NftError, Snapshot, TABLE_F_OWNER, TABLE_F_PERSIST};
use super::ruleset::{self, ServerNet, Table};
use super::sets::{Pin, PinCache};
use super::EgressError;
use crate::policy::Server;

/// How the table is protected against changes by anyone but this gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// Created with OWNER | PERSIST: nobody else can change it, and it outlives a crash. The
    /// watch still reads it back every interval.
    Owned,
    /// The kernel lacks the flags (or they were turned off): the watch alone restores what is
    /// changed, within one interval. `reason` says why.
    Watched { reason: String },
}

impl Protection {
    /// `owner` or `watch`, for `/metrics` and `doctor`.
    pub fn mode(&self) -> &'static str {
        match self {
            Protection::Owned => "owner",
            Protection::Watched { .. } => "watch",
        }
    }
}

/// Which rule set the worker programs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Shape {
    /// One table in the host's namespace judging every server's interface (`ruleset::build`).
    #[default]
    Host,
    /// One server's table in its egress agent's namespace (`sidecar_rules::build`); pins are
    /// reported as [`EgressEvent::Pinned`] so the agent can tell the gateway.
    Sidecar {
        agent_uid: u32,
        upstream: Vec<std::net::SocketAddr>,
        /// Ports open to new inbound TCP (standalone agents only, see `sidecar_rules`).
        accept_tcp: Vec<u16>,
    },
}

/// What to claim: the instance's names and how to mark the table.
#[derive(Debug, Clone)]
pub(crate) struct Claim {
    pub shape: Shape,
    pub names: Names,
    /// Use OWNER | PERSIST when the kernel has them.
    pub owned: bool,
    /// The table's comment: who created it (see `instance::lock::comment_for`).
    pub comment: String,
}

/// What the worker found at start.
#[derive(Debug, Clone)]
pub struct Startup {
    pub protection: Protection,
    /// Set when a table of an earlier run of this instance was taken over: what it was.
    pub adopted: Option<String>,
}

pub(crate) enum Cmd {
    /// Sets the desired servers and replaces the table.
    Apply {
        servers: BTreeMap<String, (Server, ServerNet)>,
        reply: oneshot::Sender<Result<(), NftError>>,
    },
    Pin {
        server: String,
        /// The allow list the answer was judged under (see [`super::dns::Pinner::pin`]).
        rules: Arc<[crate::policy::EgressRule]>,
        pins: Vec<Pin>,
        timeout: Duration,
        reply: oneshot::Sender<Result<(), NftError>>,
    },
    Snapshot {
        reply: oneshot::Sender<Result<Option<Snapshot>, NftError>>,
    },
    /// Deletes the table (used on shutdown, after every sandbox is gone).
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

pub(crate) type Spawned = (WorkerHandle, mpsc::Receiver<EgressEvent>, Startup);

/// Starts the worker in `netns` (or the current namespace) and claims `claim`'s table.
pub(crate) fn spawn(
    netns: Option<PathBuf>,
    watch_interval: Duration,
    claim: Claim,
) -> Result<Spawned, EgressError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Cmd>(QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENTS);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Startup, EgressError>>();
    let enforcing = Arc::new(AtomicBool::new(true));
    let flag = enforcing.clone();
    let events = ev_tx.clone();
    std::thread::Builder::new()
        .name("portcullis-nft".into())
        .spawn(move || {
            if let Some(ns) = &netns {
                if let Err(e) = super::netns::enter(ns) {
                    let _ = ready_tx.send(Err(EgressError::Start(NftError::Io(e))));
                    return;
                }
            }
            let mut nl = match Netlink::open(&claim.names.table()) {
                Ok(nl) => nl,
                Err(e) => {
                    let _ = ready_tx.send(Err(EgressError::Start(e)));
                    return;
                }
            };
            // Without CAP_NET_ADMIN nothing below can work. Fail on that here: the log group
            // probe would report it as every group being taken (the kernel answers both with
            // EPERM), which misleads whoever reads the log of a gateway that needs no table.
            if let Err(e) = nl.tables() {
                let _ = ready_tx.send(Err(EgressError::Start(e)));
                return;
            }
            // In the table's namespace, like the table: its drop rules log to this group.
            let log = match Listener::open(claim.names.instance().as_str()) {
                Ok(l) => {
                    tracing::info!(
                        group = l.group,
                        table = %claim.names.table(),
                        "denied packets are logged to NFLOG group {} (destinations named in egress_denied records)",
                        l.group
                    );
                    Some(l)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no NFLOG group: egress denials are counted but their destinations are not named");
                    None
                }
            };
            let mut worker = Worker {
                log,
                shape: claim.shape.clone(),
                nl,
                names: claim.names.clone(),
                flags: 0,
                comment: claim.comment.clone(),
                desired: BTreeMap::new(),
                table: Table::default(),
                cache: PinCache::default(),
                counters: BTreeMap::new(),
                events: ev_tx,
                programmed: false,
                enforcing: flag,
            };
            match worker.claim(claim.owned) {
                Ok(startup) => {
                    let _ = ready_tx.send(Ok(startup));
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            }
            worker.run(rx, watch_interval);
        })
        .map_err(|e| EgressError::Start(NftError::Io(e)))?;
    match ready_rx.recv() {
        Ok(Ok(startup)) => Ok((
            WorkerHandle {
                tx,
                enforcing,
                events,
            },
            ev_rx,
            startup,
        )),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(EgressError::Start(NftError::Io(std::io::Error::other(
            "the netlink worker exited at start",
        )))),
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
    /// The NFLOG listener naming where denied packets went (none when no group could be bound).
    log: Option<Listener>,
    shape: Shape,
    nl: Netlink,
    names: Names,
    /// Table flags of every table this worker creates: OWNER | PERSIST, or none (watch only).
    flags: u32,
    comment: String,
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
    /// Decides the protection and takes the instance's table (see the module comment).
    fn claim(&mut self, owned: bool) -> Result<Startup, EgressError> {
        let wanted = TABLE_F_OWNER | TABLE_F_PERSIST;
        let protection = if !owned {
            Protection::Watched {
                reason: "table flags turned off (PORTCULLIS_EGRESS_TABLE_FLAGS=off)".into(),
            }
        } else if self
            .nl
            .supports_table_flags(wanted)
            .map_err(EgressError::Start)?
        {
            self.flags = wanted;
            Protection::Owned
        } else {
            Protection::Watched {
                reason:
                    "the kernel lacks NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST (Linux 6.9 has both)"
                        .into(),
            }
        };
        let table = self.names.table();
        let prefix = self.names.iface_prefix();
        let mut adopted = None;
        for t in self.nl.tables().map_err(EgressError::Start)? {
            if t.name == table {
                if t.is_owned() && Some(self.nl.port_id()) != t.owner {
                    return Err(EgressError::InUse {
                        table,
                        owner: t.owner.unwrap_or(0),
                        holder: t.comment,
                    });
                }
                adopted = Some(if t.is_orphan() {
                    format!("table inet {table} left by an earlier run of this instance ({}), kept in force since it ended", t.comment.as_deref().unwrap_or("no comment"))
                } else {
                    format!("table inet {table} left by an earlier run of this instance, without owner flags")
                });
                continue;
            }
            if let Some(other) = names::instance_of_table(&t.name) {
                if names::tag_of(&other) == self.names.tag() {
                    return Err(EgressError::NameClash {
                        ours: self.names.instance().to_string(),
                        theirs: other,
                        prefix,
                    });
                }
            }
        }
        if adopted.is_some() {
            // Replaced in one transaction by an empty table of ours: every leftover interface
            // of this instance stays dropped by its catch-all rules, and from here on only this
            // socket can change it.
            self.program().map_err(|source| EgressError::Program {
                server: "*".into(),
                source,
            })?;
        }
        Ok(Startup {
            protection,
            adopted,
        })
    }

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
                        reason: format!(
                            "table inet {} had been lost; programmed again",
                            self.names.table()
                        ),
                    });
                }
                if r.is_err() {
                    // The kernel still holds the previous table (the batch was aborted), so
                    // the desired state goes back to what is actually enforced.
                    self.desired = previous;
                    self.table = self.build();
                }
                let _ = reply.send(r);
            }
            Cmd::Pin {
                server,
                rules,
                pins,
                timeout,
                reply,
            } => {
                let r = self.pin(&server, &rules, &pins, timeout);
                if r.is_ok() && self.shape != Shape::Host {
                    self.emit(EgressEvent::Pinned { server, pins });
                }
                let _ = reply.send(r);
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
        let what = format!("deleting table inet {}", self.names.table());
        self.nl.commit(b, &what)
    }

    fn pin(
        &mut self,
        server: &str,
        rules: &[crate::policy::EgressRule],
        pins: &[Pin],
        timeout: Duration,
    ) -> Result<(), NftError> {
        let Some((programmed, _)) = self.desired.get(server) else {
            return Err(NftError::Io(std::io::Error::other(format!(
                "server `{server}` has no rules programmed"
            ))));
        };
        // The one place that sees every table change and every pin in order: an answer judged
        // under rules that were replaced while it was looked up (a reload) would otherwise pin
        // a destination the new rules removed into the new table.
        if programmed.egress.allow.as_slice() != rules {
            return Err(NftError::Io(std::io::Error::other(format!(
                "server `{server}`'s rules changed while the answer was looked up"
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
        let table = self.build();
        let now = Instant::now();
        self.cache.prune(now);
        let mut b = self.nl.batch();
        b.replace_table(&table, self.flags, Some(&self.comment))?;
        let live_sets: std::collections::BTreeSet<&str> =
            table.sets.iter().map(|s| s.name.as_str()).collect();
        for (set, elems) in self.cache.replay(now) {
            if live_sets.contains(set.as_str()) {
                b.put_elements(&set, &elems)?;
            }
        }
        let what = format!("replacing table inet {}", self.names.table());
        self.nl.commit(b, &what)?;
        self.table = table;
        self.programmed = true;
        self.verify()
    }

    fn verify(&mut self) -> Result<(), NftError> {
        let expected = Snapshot::expected(&self.table);
        match self.nl.snapshot()? {
            Some(s) if s.same_shape(&expected) => Ok(()),
            Some(_) => Err(NftError::Io(std::io::Error::other(format!(
                "read-back of table inet {} differs from what was programmed",
                self.names.table()
            )))),
            None => Err(NftError::Io(std::io::Error::other(format!(
                "table inet {} is missing right after programming it",
                self.names.table()
            )))),
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
        let table = self.names.table();
        let reason = match self.nl.snapshot() {
            Ok(Some(s)) if s.same_shape(&expected) => {
                self.report_denials(&s);
                return;
            }
            Ok(Some(_)) => format!("table inet {table} was altered"),
            Ok(None) => format!("table inet {table} was removed"),
            Err(e) => format!("table inet {table} could not be read back: {e}"),
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
        let mut tally = self.log.as_ref().and_then(|l| l.tally.lock().ok());
        if let Some(t) = tally.as_mut() {
            // Prefixes of servers no longer programmed are not kept.
            t.retain(|k| self.desired.contains_key(k));
        }
        for name in self.desired.keys() {
            let total: u64 = [ruleset::srv_chain(name), ruleset::in_chain(name)]
                .iter()
                .filter_map(|c| s.counters.get(c))
                .sum();
            let last = self.counters.insert(name.clone(), total).unwrap_or(0);
            let logged = tally.as_ref().is_some_and(|t| t.has(name));
            // A log message can arrive just after the counter was read: it goes out with the
            // next report, even one without new packets.
            if total > last || logged {
                let destinations = tally.as_mut().map(|t| t.take(name)).unwrap_or_default();
                let _ = self.events.try_send(EgressEvent::Denied {
                    server: name.clone(),
                    packets: total.saturating_sub(last),
                    destinations,
                });
            }
        }
    }
}

impl Worker {
    fn build(&self) -> Table {
        if let Shape::Sidecar {
            agent_uid,
            upstream,
            accept_tcp,
        } = &self.shape
        {
            // One server per agent; an empty table (before it is prepared) has no chains.
            return match self.desired.values().next() {
                Some((server, _)) => super::sidecar_rules::build(
                    server,
                    *agent_uid,
                    upstream,
                    accept_tcp,
                    self.log_group(),
                ),
                None => Table::default(),
            };
        }
        let pairs: Vec<(&Server, &ServerNet)> =
            self.desired.values().map(|(s, n)| (s, n)).collect();
        ruleset::build(&self.names.iface_prefix(), &pairs, self.log_group())
    }

    fn log_group(&self) -> Option<u16> {
        self.log.as_ref().map(|l| l.group)
    }
}
