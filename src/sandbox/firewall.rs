//! The egress service as the runtimes see it: one [`Egress`] shared by the docker and process
//! runtimes, for this gateway's instance.
//!
//! A gateway running as root starts it at once ([`Firewall::claim`]): that is where a second
//! gateway of the same instance is refused (the table is owned by the first one's socket),
//! where a table left by an earlier run of this instance is taken over, and where that run's
//! leftover namespaces and interfaces are removed. Reading the table list is all it does to
//! nftables then; the table itself is created when the first firewalled sandbox needs it (or
//! was left by the earlier run). Otherwise the service starts on first need, and a policy reload
//! that adds the first server with rules gets enforcement without a restart. A failed start is
//! not cached: the next sandbox tries again, and until then no firewalled sandbox starts (fail
//! closed).
//!
//! For hot reload: [`Firewall::reprogram`] applies a server's changed rules to its running
//! sandboxes; removing a server is [`super::Runtime::stop_server`], after which its network
//! and rules go away with its last instance. A reload that changes only a server's rules keeps
//! its instances, whose supervisors still hold the server as it was when they started: so the
//! rules in force are also kept here ([`Firewall::set_policy`]), and every join of a server's
//! network or agent takes them from here ([`Firewall::current`]), never the older copy a
//! restarting instance brings (which would put the old rules back).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::egress::leftovers::Removed;
use crate::egress::subnets::PoolLock;
use crate::egress::{Attachment, Egress, EgressError, EgressOptions, Names, Prepared};
use crate::policy::{Egress as EgressRules, EgressSettings, Policy, Server};

use super::SandboxError;

/// Bounded: a flood of agent reports is dropped (denials are summed anyway) rather than grown.
const SIDECAR_EVENTS: usize = 256;

struct Inner {
    settings: EgressSettings,
    options: EgressOptions,
    /// Serializes starts.
    start: tokio::sync::Mutex<()>,
    running: watch::Sender<Option<Egress>>,
    /// Reports of sidecar mode's egress agents (each agent has its own table, so they do not
    /// come from the service above); consumed by the same audit loop (`cli::egress_watch`).
    sidecar_tx: tokio::sync::mpsc::Sender<crate::egress::EgressEvent>,
    sidecar_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<crate::egress::EgressEvent>>>,
    /// Each server's rules in the policy in force, once a reload replaced the first policy
    /// (empty until then: every server's own copy is current).
    in_force: std::sync::Mutex<BTreeMap<String, EgressRules>>,
}

/// Cheap to clone; every clone shares the one service.
#[derive(Clone)]
pub struct Firewall {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Firewall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Firewall")
            .field("running", &self.running().is_some())
            .finish_non_exhaustive()
    }
}

impl Firewall {
    /// Programs the current network namespace (the normal case).
    pub fn new(settings: &EgressSettings) -> Firewall {
        Self::with_options(settings, EgressOptions::default())
    }

    /// For a command that starts servers once and stops them (`doctor --start`, `tools lock`):
    /// an instance of its own (`LABEL-PID`), so that the table and sandboxes it makes never
    /// touch a running gateway's, and no persistent table outlives it.
    pub fn transient(settings: &EgressSettings, label: &str) -> Firewall {
        let names = crate::instance::InstanceId::parse(&format!("{label}-{}", std::process::id()))
            .map(crate::egress::Names::new)
            .unwrap_or_default();
        Self::with_options(
            settings,
            EgressOptions {
                names,
                table_flags: false,
                ..Default::default()
            },
        )
    }

    pub fn with_options(settings: &EgressSettings, options: EgressOptions) -> Firewall {
        let (sidecar_tx, sidecar_rx) = tokio::sync::mpsc::channel(SIDECAR_EVENTS);
        Firewall {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                options,
                start: tokio::sync::Mutex::new(()),
                running: watch::channel(None).0,
                sidecar_tx,
                sidecar_rx: std::sync::Mutex::new(Some(sidecar_rx)),
                in_force: std::sync::Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// Records the rules of every server in `policy` as the ones in force (a reload, before
    /// any server of the new policy starts).
    pub fn set_policy(&self, policy: &Policy) {
        let rules = policy
            .servers
            .iter()
            .map(|(n, s)| (n.clone(), s.egress.clone()))
            .collect();
        match self.inner.in_force.lock() {
            Ok(mut m) => *m = rules,
            Err(p) => *p.into_inner() = rules,
        }
    }

    /// `server` with the rules in force: its own, unless a reload changed them in place
    /// since its instance's copy was taken.
    pub fn current<'a>(&self, server: &'a Server) -> Cow<'a, Server> {
        let m = match self.inner.in_force.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        match m.get(&server.name) {
            Some(rules) if *rules != server.egress => {
                let mut s = server.clone();
                s.egress = rules.clone();
                Cow::Owned(s)
            }
            _ => Cow::Borrowed(server),
        }
    }

    /// Where egress agents send their reports (sidecar mode).
    pub fn sidecar_reporter(&self) -> tokio::sync::mpsc::Sender<crate::egress::EgressEvent> {
        self.inner.sidecar_tx.clone()
    }

    /// The agents' reports; only the first caller gets them.
    pub fn take_sidecar_events(
        &self,
    ) -> Option<tokio::sync::mpsc::Receiver<crate::egress::EgressEvent>> {
        self.inner.sidecar_rx.lock().ok()?.take()
    }

    pub fn settings(&self) -> &EgressSettings {
        &self.inner.settings
    }

    /// The names of this gateway instance's objects.
    pub fn names(&self) -> &Names {
        &self.inner.options.names
    }

    /// The running service, starting it if needed; `server` names who asked, for the error.
    pub async fn egress(&self, server: &str) -> Result<Egress, SandboxError> {
        self.start().await.map_err(|e| SandboxError::Egress {
            server: server.to_owned(),
            reason: format!(
                "{e} (programming nftables needs root with CAP_NET_ADMIN and the nf_tables kernel module)"
            ),
        })
    }

    async fn start(&self) -> Result<Egress, EgressError> {
        if let Some(e) = self.running() {
            return Ok(e);
        }
        let _starting = self.inner.start.lock().await;
        if let Some(e) = self.running() {
            return Ok(e);
        }
        let e =
            Egress::start_with_settings(&self.inner.settings, self.inner.options.clone()).await?;
        let table = self.names().table();
        crate::metrics::global().egress_protection(e.protection().mode());
        match e.protection() {
            crate::egress::Protection::Owned => {
                tracing::info!(%table, "egress firewall started: the table is owned by this gateway (NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST): nobody else can change it, and it stays in force if the gateway dies")
            }
            crate::egress::Protection::Watched { reason } => {
                tracing::error!(%table, %reason, "!!! egress firewall started WITHOUT table ownership: anyone with CAP_NET_ADMIN can change the table, and changes are undone only by the read-back watch (within one interval) !!!")
            }
        }
        self.inner.running.send_replace(Some(e.clone()));
        Ok(e)
    }

    /// Starts the service now (a gateway running as root does so at start-up) and removes the
    /// leftovers of an earlier run of this instance. Call only while holding the instance's
    /// lock. Fails when another live gateway owns this instance's table, or when another
    /// instance's table would share this one's interface names.
    pub async fn claim(&self) -> Result<(Egress, Removed), EgressError> {
        let e = self.start().await?;
        if let Some(what) = &e.startup().adopted {
            tracing::warn!(table = %self.names().table(), "took over {what}");
        }
        let names = self.names().clone();
        let removed =
            tokio::task::spawn_blocking(move || crate::egress::leftovers::remove(&names, None))
                .await
                .unwrap_or_default();
        if !removed.is_empty() {
            tracing::warn!(namespaces = ?removed.namespaces, interfaces = ?removed.interfaces, processes = ?removed.processes, "removed the leftovers of an earlier run of this instance");
        }
        Ok((e, removed))
    }

    /// Takes a subnet for `server`, lets `make` build the attachment on it (a Docker network, a
    /// namespace) and programs the server's rules and resolver for it. Fail closed: if any step
    /// fails, what `make` built goes to `unmake`, the subnet is freed, and nothing is left.
    pub async fn attach<T, Make, MakeFut, Unmake, UnmakeFut>(
        &self,
        server: &Server,
        make: Make,
        unmake: Unmake,
    ) -> Result<(T, Prepared), SandboxError>
    where
        Make: FnOnce((Ipv4Addr, u8)) -> MakeFut,
        MakeFut: Future<Output = Result<(T, Attachment), String>>,
        Unmake: FnOnce(T) -> UnmakeFut,
        UnmakeFut: Future<Output = ()>,
    {
        let failed = |reason: String| SandboxError::Egress {
            server: server.name.clone(),
            reason,
        };
        let egress = self.egress(&server.name).await?;
        // Held until the subnet's interface carries its address, so another gateway of this
        // namespace choosing at the same moment sees it.
        let pool_lock = PoolLock::acquire()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let name = server.name.clone();
        let e = egress.clone();
        let subnet = tokio::task::spawn_blocking(move || e.allocate_subnet(&name))
            .await
            .map_err(|e| failed(format!("subnet allocation task: {e}")))?
            .map_err(|e| failed(e.to_string()))?;
        let made = make(subnet).await;
        drop(pool_lock);
        let (made, attachment) = match made {
            Ok(m) => m,
            Err(reason) => {
                egress.free_subnet(&server.name);
                return Err(failed(reason));
            }
        };
        match egress.prepare(server, attachment).await {
            Ok(p) => Ok((made, p)),
            Err(e) => {
                unmake(made).await;
                egress.free_subnet(&server.name);
                Err(failed(e.to_string()))
            }
        }
    }

    /// Undoes [`Self::attach`] once `server`'s last sandbox is gone: its rules and resolver
    /// first, then the attachment (`unmake`, which says whether it went), then its subnet.
    pub async fn detach(&self, server: &str, unmake: impl Future<Output = bool>) -> bool {
        let egress = self.running();
        if let Some(e) = &egress {
            if let Err(err) = e.release(server).await {
                tracing::warn!(%server, error = %err, "could not remove the server's egress rules; its interface stays dropped by the table");
            }
        }
        let gone = unmake.await;
        if let Some(e) = &egress {
            e.free_subnet(server);
        }
        gone
    }

    /// Makes sure a server joining an existing network runs under its current rules: the
    /// network may have been made for the rules before a reload (an instance of the old
    /// policy still being removed), so they are re-programmed in place if they differ. Then
    /// checks that the table is in force ([`Self::check_enforcing`]).
    pub async fn check_joined(&self, server: &Server) -> Result<(), SandboxError> {
        self.reprogram(server)
            .await
            .map_err(|e| SandboxError::Egress {
                server: server.name.clone(),
                reason: e.to_string(),
            })?;
        self.check_enforcing(&server.name)
    }

    /// Fails when the table could not be restored after tampering: no sandbox starts until
    /// it is in force again.
    pub fn check_enforcing(&self, server: &str) -> Result<(), SandboxError> {
        match self.running() {
            Some(e) if !e.is_enforcing() => Err(SandboxError::Egress {
                server: server.to_owned(),
                reason: format!("table inet {} was altered and could not be restored; no firewalled sandbox starts until it is", self.names().table()),
            }),
            _ => Ok(()),
        }
    }

    pub fn running(&self) -> Option<Egress> {
        self.inner.running.borrow().clone()
    }

    /// Resolves once the service has started (at once if it has).
    pub async fn started(&self) -> Egress {
        let mut rx = self.inner.running.subscribe();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The sender lives in `inner`, which `self` holds: this cannot end.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Applies `server`'s changed egress rules to its running sandboxes (policy reload);
    /// `Ok(false)` when none runs (its rules are programmed when its first sandbox starts).
    /// Moving a server between "no rules" and "some rules" changes its network, which needs a
    /// restart of its instances ([`super::Runtime::stop_server`]).
    pub async fn reprogram(&self, server: &Server) -> Result<bool, EgressError> {
        match self.running() {
            Some(e) => e.reprogram(server).await,
            None => Ok(false),
        }
    }

    /// Deletes the table, if this gateway programmed it. Call only once every sandbox is gone:
    /// a sandbox interface left without the table would be unfiltered, so the table stays (it
    /// outlives the gateway, and the next start of this instance removes both) while any
    /// interface of this instance is still there.
    pub async fn shutdown(&self) {
        if let Some(e) = self.running() {
            let table = self.names().table();
            let (names, ns) = (self.names().clone(), self.inner.options.netns.clone());
            let left = tokio::task::spawn_blocking(move || {
                crate::egress::leftovers::interfaces(&names, ns.as_deref())
            })
            .await;
            match left {
                Ok(Ok(left)) if left.is_empty() => {}
                Ok(Ok(left)) => {
                    tracing::warn!(%table, interfaces = ?left, "sandbox interfaces of this instance are still there: the egress table stays, so they stay closed (the next start of this instance removes both)");
                    return;
                }
                Ok(Err(err)) => {
                    tracing::warn!(%table, error = %err, "cannot list this instance's interfaces: the egress table stays");
                    return;
                }
                Err(_) => return,
            }
            match e.remove_table().await {
                Ok(()) => tracing::info!(%table, "egress firewall removed"),
                Err(e) => tracing::warn!(%table, error = %e, "could not remove the egress table"),
            }
        }
    }
}
