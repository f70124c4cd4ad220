//! The egress service of one gateway instance: per-server reference counts over the table
//! worker and the resolvers (see the module's contract in `egress/mod.rs`). Every change to the
//! desired state goes through one async lock, so the table the worker programs is always the
//! whole set of prepared servers, never a partial update.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::ruleset::ServerNet;
use super::table::{self, Cmd, WorkerHandle};
use super::{
    dns, dns_budget, dns_cache, dns_upstream, netns, ruleset, sets, subnets, Attachment,
    EgressError, EgressEvent, EgressOptions, Names, NftError, Prepared, Protection, Snapshot,
    Startup,
};
use crate::policy::{EgressSettings, Policy, Server};
use crate::sandbox::BoxFuture;

struct Entry {
    net: ServerNet,
    server: Server,
    refs: usize,
    prepared: Prepared,
    resolver: dns::Resolver,
}

struct Inner {
    worker: WorkerHandle,
    startup: Startup,
    settings: EgressSettings,
    options: EgressOptions,
    /// Serializes prepare/release so desired-state updates never interleave.
    state: tokio::sync::Mutex<BTreeMap<String, Entry>>,
    events: Mutex<Option<mpsc::Receiver<EgressEvent>>>,
    stats: Arc<Mutex<dns::Stats>>,
    slots: Mutex<BTreeMap<String, u32>>,
}

/// The egress service. Cheap to clone.
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

struct WorkerPinner {
    tx: std::sync::mpsc::SyncSender<Cmd>,
}

impl dns::Pinner for WorkerPinner {
    fn pin(
        &self,
        server: &str,
        rules: Arc<[crate::policy::EgressRule]>,
        pins: Vec<sets::Pin>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<(), String>> {
        let server = server.to_string();
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.tx
                .try_send(Cmd::Pin {
                    server,
                    rules,
                    pins,
                    timeout,
                    reply,
                })
                .map_err(|e| e.to_string())?;
            match tokio::time::timeout(Duration::from_secs(2), rx).await {
                Ok(Ok(r)) => r.map_err(|e| e.to_string()),
                Ok(Err(_)) => Err("the nftables worker is gone".into()),
                Err(_) => Err("the nftables worker did not answer in time".into()),
            }
        })
    }
}

impl Egress {
    /// Starts the worker in the current network namespace.
    pub async fn start(policy: &Policy) -> Result<Egress, EgressError> {
        Self::start_with(policy, EgressOptions::default()).await
    }

    pub async fn start_with(
        policy: &Policy,
        options: EgressOptions,
    ) -> Result<Egress, EgressError> {
        Self::start_with_settings(&policy.egress, options).await
    }

    /// Starts the worker with the gateway-wide `[egress]` settings.
    pub async fn start_with_settings(
        settings: &EgressSettings,
        options: EgressOptions,
    ) -> Result<Egress, EgressError> {
        let ns = options.netns.clone();
        let interval = options.watch_interval;
        let claim = table::Claim {
            shape: options.shape.clone(),
            names: options.names.clone(),
            owned: options.table_flags,
            comment: options.comment.clone(),
        };
        let (worker, events, startup) =
            tokio::task::spawn_blocking(move || table::spawn(ns, interval, claim))
                .await
                .map_err(|_| EgressError::WorkerGone)??;
        Ok(Egress {
            inner: Arc::new(Inner {
                worker,
                startup,
                settings: settings.clone(),
                options,
                state: tokio::sync::Mutex::new(BTreeMap::new()),
                events: Mutex::new(Some(events)),
                stats: Arc::new(Mutex::new(dns::Stats::default())),
                slots: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// Whether the table is known to be in force. False after a tamper restore failed, until a
    /// later one succeeds; no sandbox may start meanwhile.
    pub fn is_enforcing(&self) -> bool {
        self.inner
            .worker
            .enforcing
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How the table is protected, and what was taken over at start.
    pub fn startup(&self) -> &Startup {
        &self.inner.startup
    }

    pub fn protection(&self) -> &Protection {
        &self.inner.startup.protection
    }

    /// The names of this service's instance.
    pub fn names(&self) -> &Names {
        &self.inner.options.names
    }

    /// The event stream; only the first caller gets it.
    pub fn take_events(&self) -> Option<mpsc::Receiver<EgressEvent>> {
        self.inner.events.lock().ok()?.take()
    }

    /// A /29 for `server` (the same one while it is held): the first slot of the pool that
    /// this service does not hold and that no interface of its namespace has an address in.
    /// Blocking (it lists the namespace's addresses): call it off the async workers. Callers
    /// that share the namespace with other gateways hold a [`subnets::PoolLock`] until the
    /// subnet's interface has its address.
    pub fn allocate_subnet(&self, server: &str) -> Result<(Ipv4Addr, u8), EgressError> {
        let pool = self.inner.settings.network_pool;
        let exhausted = |why: String| EgressError::PoolExhausted {
            server: server.to_string(),
            pool: format!("{}/{}", pool.0, pool.1),
            why,
        };
        let mut slots = self
            .inner
            .slots
            .lock()
            .map_err(|_| exhausted("allocation state poisoned".into()))?;
        if let Some(s) = slots.get(server) {
            return ruleset::subnet_slot(pool, *s).ok_or_else(|| exhausted("slot gone".into()));
        }
        let present = subnets::interface_addrs(self.inner.options.netns.as_deref())
            .map_err(|e| exhausted(format!("cannot list the addresses in use: {e}")))?;
        let ours: std::collections::BTreeSet<u32> = slots.values().copied().collect();
        let slot =
            subnets::first_free(pool, &ours, &present).map_err(|e| exhausted(e.to_string()))?;
        let subnet =
            ruleset::subnet_slot(pool, slot).ok_or_else(|| exhausted("slot gone".into()))?;
        slots.insert(server.to_string(), slot);
        Ok(subnet)
    }

    pub fn free_subnet(&self, server: &str) {
        if let Ok(mut slots) = self.inner.slots.lock() {
            slots.remove(server);
        }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, NftError>>) -> Cmd,
    ) -> Result<T, NftError> {
        let (tx, rx) = oneshot::channel();
        self.inner.worker.send(make(tx))?;
        rx.await
            .map_err(|_| NftError::Io(std::io::Error::other("the nftables worker is gone")))?
    }

    async fn apply(
        &self,
        state: &BTreeMap<String, Entry>,
        extra: Option<(&Server, &ServerNet)>,
        without: Option<&str>,
    ) -> Result<(), NftError> {
        let mut servers: BTreeMap<String, (Server, ServerNet)> = state
            .iter()
            .filter(|(n, _)| Some(n.as_str()) != without)
            .map(|(n, e)| (n.clone(), (e.server.clone(), e.net.clone())))
            .collect();
        if let Some((s, n)) = extra {
            servers.insert(s.name.clone(), (s.clone(), n.clone()));
        }
        self.call(|reply| Cmd::Apply { servers, reply }).await
    }

    /// Programs `server`'s rules on `attach` and starts its resolver. Fail closed: on error,
    /// nothing of this server is left programmed and the sandbox must not be started.
    pub async fn prepare(
        &self,
        server: &Server,
        attach: Attachment,
    ) -> Result<Prepared, EgressError> {
        let sidecar = attach == Attachment::Sidecar;
        let net = attach.net(&server.name);
        if !sidecar && !self.names().owns_iface(&net.iface) {
            return Err(EgressError::BadInterface {
                server: server.name.clone(),
                iface: net.iface,
                prefix: self.names().iface_prefix(),
            });
        }
        let mut state = self.inner.state.lock().await;
        if let Some(e) = state.get(&server.name) {
            if e.net != net {
                return Err(EgressError::OtherAttachment {
                    server: server.name.clone(),
                    current: e.net.iface.clone(),
                    asked: net.iface,
                });
            }
            if e.server != *server {
                self.update(&mut state, server).await?;
            }
            let Some(e) = state.get_mut(&server.name) else {
                return Err(EgressError::WorkerGone);
            };
            e.refs += 1;
            return Ok(e.prepared.clone());
        }
        let program_err = |source| EgressError::Program {
            server: server.name.clone(),
            source,
        };
        self.apply(&state, Some((server, &net)), None)
            .await
            .map_err(program_err)?;
        let addr = SocketAddr::from((net.gateway, self.inner.options.resolver_port));
        let resolver = match self.start_resolver(server, addr).await {
            Ok(r) => r,
            Err(source) => {
                // Take the rules back out; if even that fails the table keeps this interface
                // closed anyway (the instance's catch-all drop of `pc<tag>*`).
                let _ = self.apply(&state, None, Some(&server.name)).await;
                return Err(EgressError::Resolver {
                    server: server.name.clone(),
                    addr,
                    source,
                });
            }
        };
        let prepared = Prepared {
            server: server.name.clone(),
            iface: net.iface.clone(),
            resolver: resolver.addr,
        };
        state.insert(
            server.name.clone(),
            Entry {
                net,
                server: server.clone(),
                refs: 1,
                prepared: prepared.clone(),
                resolver,
            },
        );
        Ok(prepared)
    }

    /// Re-programs a prepared server after its policy changed (hot reload): its rules are
    /// replaced in the table and its resolver answers by the new list, without touching its
    /// network or its sandboxes. Pins of the old rules are dropped, so a removed destination
    /// closes at once (connections already open survive). Returns `false` when the server has
    /// nothing prepared (its rules are programmed when its first sandbox starts).
    pub async fn reprogram(&self, server: &Server) -> Result<bool, EgressError> {
        let mut state = self.inner.state.lock().await;
        match state.get(&server.name) {
            None => Ok(false),
            Some(e) if e.server == *server => Ok(true),
            Some(_) => self.update(&mut state, server).await.map(|()| true),
        }
    }

    async fn update(
        &self,
        state: &mut BTreeMap<String, Entry>,
        server: &Server,
    ) -> Result<(), EgressError> {
        let Some(e) = state.get(&server.name) else {
            return Ok(());
        };
        let net = e.net.clone();
        // The resolver judges by the new rules before the new table is programmed: judging by
        // the old ones meanwhile pinned a removed name's address into the new table (the
        // worker now also refuses pins judged by a list it no longer has). No cached answer
        // is repeated across the change: its pins go with the old rules.
        e.resolver.begin_rules_change(server);
        let applied = self.apply(state, Some((server, &net)), None).await;
        let Some(e) = state.get_mut(&server.name) else {
            return Ok(());
        };
        if applied.is_ok() {
            e.server = server.clone();
        } else {
            // The kernel kept the old table: the resolver goes back to the old rules.
            e.resolver.begin_rules_change(&e.server);
        }
        e.resolver.end_rules_change();
        applied.map_err(|source| EgressError::Program {
            server: server.name.clone(),
            source,
        })
    }

    /// Whether `server` has rules programmed (a sandbox of it runs or is starting).
    pub async fn is_prepared(&self, server: &str) -> bool {
        self.inner.state.lock().await.contains_key(server)
    }

    async fn start_resolver(
        &self,
        server: &Server,
        addr: SocketAddr,
    ) -> std::io::Result<dns::Resolver> {
        let ns = self.inner.options.netns.clone();
        let (udp, tcp, upstream) = tokio::task::spawn_blocking(move || {
            netns::in_netns(ns.as_deref(), move || {
                let udp = std::net::UdpSocket::bind(addr)?;
                let tcp = std::net::TcpListener::bind(addr)?;
                let mut up = Vec::new();
                for _ in 0..8 {
                    up.push(std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?);
                }
                Ok((udp, tcp, up))
            })
        })
        .await
        .map_err(|_| std::io::Error::other("resolver setup task failed"))??;
        let settings = &self.inner.settings;
        let ctx = dns::Ctx {
            upstream: dns_upstream::UpstreamPool::new(upstream)?,
            server: server.name.clone(),
            allow: std::sync::RwLock::new(Arc::new(dns::Allow::of(server))),
            settings: settings.clone(),
            pinner: Arc::new(WorkerPinner {
                tx: self.inner.worker.tx.clone(),
            }),
            stats: self.inner.stats.clone(),
            cache: dns_cache::Cache::default(),
            budget: Arc::new(dns_budget::Budget::new(server.egress.dns_rate_in(settings))),
        };
        let reports = dns::Reports {
            events: self.inner.worker.events.clone(),
            every: self.inner.options.watch_interval,
        };
        dns::Resolver::serve(ctx, udp, tcp, reports)
    }

    /// Drops one reference; the last one removes the server's rules, pins and resolver.
    pub async fn release(&self, server: &str) -> Result<(), EgressError> {
        let mut state = self.inner.state.lock().await;
        let Some(e) = state.get_mut(server) else {
            return Ok(());
        };
        e.refs = e.refs.saturating_sub(1);
        if e.refs > 0 {
            return Ok(());
        }
        let r = self.apply(&state, None, Some(server)).await;
        // The resolver goes either way: its sandbox is gone.
        state.remove(server);
        r.map_err(|source| EgressError::Program {
            server: server.to_string(),
            source,
        })
    }

    /// The table as read back from the kernel (`None`: it does not exist).
    pub async fn snapshot(&self) -> Result<Option<Snapshot>, EgressError> {
        self.call(|reply| Cmd::Snapshot { reply })
            .await
            .map_err(|source| EgressError::Program {
                server: "*".into(),
                source,
            })
    }

    /// Dropped packets per server since the table was last programmed.
    pub async fn denied(&self) -> Result<BTreeMap<String, u64>, EgressError> {
        let snap = self.snapshot().await?.unwrap_or_default();
        let state = self.inner.state.lock().await;
        Ok(state
            .keys()
            .map(|n| {
                let total = [ruleset::srv_chain(n), ruleset::in_chain(n)]
                    .iter()
                    .filter_map(|c| snap.counters.get(c))
                    .sum();
                (n.clone(), total)
            })
            .collect())
    }

    /// Resolver latency samples (query received -> answer sent, pins acknowledged).
    pub fn latencies(&self) -> Vec<Duration> {
        self.inner
            .stats
            .lock()
            .map(|s| s.samples.clone())
            .unwrap_or_default()
    }

    /// Pin latency samples (elements sent until the kernel's acknowledgement).
    pub fn pin_latencies(&self) -> Vec<Duration> {
        self.inner
            .stats
            .lock()
            .map(|s| s.pin_samples.clone())
            .unwrap_or_default()
    }

    pub fn clear_latencies(&self) {
        if let Ok(mut s) = self.inner.stats.lock() {
            s.samples.clear();
            s.pin_samples.clear();
        }
    }

    /// Deletes the table. Only for teardown: without the table, this instance's sandbox
    /// interfaces are no longer filtered, so callers stop every sandbox first.
    pub async fn remove_table(&self) -> Result<(), EgressError> {
        let mut state = self.inner.state.lock().await;
        state.clear();
        self.call(|reply| Cmd::Remove { reply })
            .await
            .map_err(|source| EgressError::Program {
                server: "*".into(),
                source,
            })
    }
}
