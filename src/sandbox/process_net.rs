//! The network namespaces of firewalled `process` servers (gateway running as root).
//!
//! One namespace per server, shared by all its instances (per-session and per-call children
//! join the same one), created with the first instance and removed after the last: a /29 from
//! the pool, a veth pair whose host side the rule set keys on ([`ProcessNet`]), the server's
//! rules and resolver ([`Egress::prepare`]), then the child's confinement helper enters it
//! ([`super::confine`]). If any step fails, what was made is taken down again and the child
//! does not start (fail closed).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::egress::netns::ProcessNet;
use crate::egress::Attachment;
use crate::policy::Server;

use super::firewall::Firewall;
use super::leases::{Lease, Leases};
use super::SandboxError;

/// A server's namespace while any of its children runs.
struct Joined {
    /// Taken out (and dropped on a blocking thread, since removal runs `ip`) at teardown.
    net: Mutex<Option<ProcessNet>>,
    paths: NetPaths,
}

/// Where a child finds its server's namespace and resolver configuration.
#[derive(Debug, Clone)]
pub(super) struct NetPaths {
    pub netns: PathBuf,
    pub resolv_conf: PathBuf,
}

pub(super) struct ProcessNets {
    firewall: Firewall,
    leases: Leases<Arc<Joined>>,
}

impl ProcessNets {
    pub fn new(firewall: Firewall) -> Arc<ProcessNets> {
        Arc::new(ProcessNets {
            firewall,
            leases: Leases::default(),
        })
    }

    pub fn firewall(&self) -> &Firewall {
        &self.firewall
    }

    /// Joins `server`'s namespace (creating it for the first child); returns where it is,
    /// and the child's lease on it.
    pub async fn join(
        self: &Arc<Self>,
        server: &Server,
    ) -> Result<(NetPaths, Lease), SandboxError> {
        // The rules in force, not the possibly older copy a restarting instance holds.
        let current = self.firewall.current(server);
        let server = &*current;
        let joined = self
            .leases
            .acquire(&server.name, || self.create(server))
            .await?;
        let paths = joined.paths.clone();
        drop(joined);
        let nets = self.clone();
        let name = server.name.clone();
        let lease = Lease::new(move || Box::pin(async move { nets.leave(&name).await }));
        // A namespace that already exists is reused without `prepare`, so this is where changed
        // rules are applied and a lost table stops new children.
        self.firewall.check_joined(server).await?;
        Ok((paths, lease))
    }

    async fn create(&self, server: &Server) -> Result<Arc<Joined>, SandboxError> {
        let (net, _) = self
            .firewall
            .attach(
                server,
                |subnet| async move {
                    let name = server.name.clone();
                    let names = self.firewall.names().clone();
                    let made = tokio::task::spawn_blocking(move || {
                        ProcessNet::create(&names, &name, subnet, None)
                    })
                    .await
                    .map_err(|e| format!("namespace setup task: {e}"))?;
                    let net = made.map_err(|e| {
                        format!("cannot create its network namespace (needs root and the `ip` tool): {e}")
                    })?;
                    let attachment = Attachment::Veth {
                        iface: net.iface.clone(),
                        gateway: net.gateway,
                        subnet,
                    };
                    Ok((net, attachment))
                },
                remove_net,
            )
            .await?;
        tracing::info!(server = %server.name, netns = %net.netns, iface = %net.iface, "process sandbox network ready");
        Ok(Arc::new(Joined {
            paths: NetPaths {
                netns: net.path(),
                resolv_conf: net.resolv_conf(),
            },
            net: Mutex::new(Some(net)),
        }))
    }

    async fn teardown(&self, server: &str, joined: Arc<Joined>) {
        let net = joined.net.lock().ok().and_then(|mut n| n.take());
        self.firewall
            .detach(server, async move {
                if let Some(net) = net {
                    remove_net(net).await;
                }
                true
            })
            .await;
    }

    async fn leave(&self, server: &str) {
        self.leases
            .release(server, |j| self.teardown(server, j))
            .await;
    }

    /// Removes every namespace (shutdown, after all children are gone).
    pub async fn shutdown(&self) {
        for (server, j) in self.leases.drain().await {
            self.teardown(&server, j).await;
        }
    }
}

async fn remove_net(net: ProcessNet) {
    // Dropping removes the namespace (and its veth pair) with the `ip` tool: blocking work.
    let _ = tokio::task::spawn_blocking(move || drop(net)).await;
}
