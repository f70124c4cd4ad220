//! The egress service as the runtimes see it: one [`Egress`] shared by the docker and process
//! runtimes, started when the first firewalled sandbox needs it.
//!
//! Starting on first need (rather than at gateway start) means a gateway whose servers have no
//! egress rules never touches the host's nftables, and a policy reload that adds the first
//! server with rules gets enforcement without a restart. A failed start is not cached: the
//! next sandbox tries again, and until then no firewalled sandbox starts (fail closed).
//!
//! For hot reload: [`Firewall::reprogram`] applies a server's changed rules to its running
//! sandboxes; removing a server is [`super::Runtime::stop_server`], after which its network
//! and rules go away with its last instance.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;

use tokio::sync::watch;

use crate::egress::{Attachment, Egress, EgressError, EgressOptions, Prepared};
use crate::policy::{EgressSettings, Server};

use super::SandboxError;

struct Inner {
    settings: EgressSettings,
    options: EgressOptions,
    /// Serializes starts.
    start: tokio::sync::Mutex<()>,
    running: watch::Sender<Option<Egress>>,
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

    pub fn with_options(settings: &EgressSettings, options: EgressOptions) -> Firewall {
        Firewall {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                options,
                start: tokio::sync::Mutex::new(()),
                running: watch::channel(None).0,
            }),
        }
    }

    pub fn settings(&self) -> &EgressSettings {
        &self.inner.settings
    }

    /// The running service, starting it if needed; `server` names who asked, for the error.
    pub async fn egress(&self, server: &str) -> Result<Egress, SandboxError> {
        if let Some(e) = self.running() {
            return Ok(e);
        }
        let _starting = self.inner.start.lock().await;
        if let Some(e) = self.running() {
            return Ok(e);
        }
        match Egress::start_with_settings(&self.inner.settings, self.inner.options.clone()).await
        {
            Ok(e) => {
                tracing::info!("egress firewall started: table inet portcullis is programmed for firewalled sandboxes");
                self.inner.running.send_replace(Some(e.clone()));
                Ok(e)
            }
            Err(e) => Err(SandboxError::Egress {
                server: server.to_owned(),
                reason: format!(
                    "{e} (programming nftables needs root with CAP_NET_ADMIN and the nf_tables kernel module)"
                ),
            }),
        }
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
        let subnet = egress
            .allocate_subnet(&server.name)
            .map_err(|e| failed(e.to_string()))?;
        let (made, attachment) = match make(subnet).await {
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
                reason: "table inet portcullis was altered and could not be restored; no firewalled sandbox starts until it is".into(),
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
    /// a sandbox interface left without the table would be unfiltered.
    pub async fn shutdown(&self) {
        if let Some(e) = self.running() {
            match e.remove_table().await {
                Ok(()) => tracing::info!("egress firewall removed (table inet portcullis)"),
                Err(e) => tracing::warn!(error = %e, "could not remove table inet portcullis"),
            }
        }
    }
}
