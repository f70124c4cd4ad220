//! The bridge networks of firewalled containers (docker servers with egress rules).
//!
//! One network per server, shared by all its containers, created with the first container and
//! removed after the last one: a /29 from the pool, a bridge named `pc<tag><hash>` with
//! inter-container traffic off ([`network::create`]), then the server's rules and resolver
//! ([`crate::egress::Egress::prepare`]), all **before** the container is created. If any step
//! fails, what was made is taken down again and the container is not created (fail closed).
//! Networks carry the same owner/scope labels as containers, so reconciliation removes the
//! leftovers of a gateway that died.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bollard::Docker;

use super::labels;
use crate::egress::network::{self, NetworkSpec};
use crate::policy::Server;
use crate::sandbox::firewall::Firewall;
use crate::sandbox::leases::{Lease, Leases};
use crate::sandbox::SandboxError;

/// A server's network while any of its containers exists.
struct Bridge {
    spec: NetworkSpec,
    resolver: IpAddr,
}

/// Where a firewalled container attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub network: String,
    /// The container's only DNS server: the server's pinning resolver on the bridge gateway.
    pub resolver: IpAddr,
}

pub(super) struct Bridges {
    docker: Docker,
    firewall: Firewall,
    scope: Arc<str>,
    gateway: Arc<str>,
    leases: Leases<Arc<Bridge>>,
}

impl Bridges {
    pub fn new(docker: Docker, firewall: Firewall, scope: Arc<str>, gateway: Arc<str>) -> Bridges {
        Bridges {
            docker,
            firewall,
            scope,
            gateway,
            leases: Leases::default(),
        }
    }

    /// Joins `server`'s network (creating and programming it for the first container).
    pub async fn join(self: &Arc<Self>, server: &Server) -> Result<(Joined, Lease), SandboxError> {
        // The rules in force, not the possibly older copy a restarting instance holds.
        let current = self.firewall.current(server);
        let server = &*current;
        let bridge = self
            .leases
            .acquire(&server.name, || self.create(server))
            .await?;
        let joined = Joined {
            network: bridge.spec.name.clone(),
            resolver: bridge.resolver,
        };
        let bridges = self.clone();
        let name = server.name.clone();
        let lease = Lease::new(move || Box::pin(async move { bridges.leave(&name).await }));
        // A network that already exists is reused without `prepare`, so this is where changed
        // rules are applied and a lost table stops new containers.
        self.firewall.check_joined(server).await?;
        Ok((joined, lease))
    }

    fn spec(&self, server: &str, subnet: (Ipv4Addr, u8)) -> NetworkSpec {
        NetworkSpec {
            name: format!("portcullis-{}-{server}", self.scope),
            server: server.to_owned(),
            iface: self.firewall.names().iface(server),
            subnet,
            labels: labels::for_network(server, &self.gateway, &self.scope),
        }
    }

    async fn create(&self, server: &Server) -> Result<Arc<Bridge>, SandboxError> {
        let (spec, prepared) = self
            .firewall
            .attach(
                server,
                |subnet| async move {
                    let spec = self.spec(&server.name, subnet);
                    match network::create(&self.docker, &spec).await {
                        Ok(attachment) => Ok((spec, attachment)),
                        Err(e) => Err(e.to_string()),
                    }
                },
                |spec| async move {
                    self.remove_network(&spec).await;
                },
            )
            .await?;
        tracing::info!(server = %server.name, network = %spec.name, iface = %prepared.iface, resolver = %prepared.resolver, "container network ready behind the egress firewall");
        Ok(Arc::new(Bridge {
            spec,
            resolver: prepared.resolver.ip(),
        }))
    }

    async fn remove_network(&self, spec: &NetworkSpec) -> bool {
        match network::remove(&self.docker, spec).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(network = %spec.name, error = %e, "could not remove a sandbox network; reconciliation removes it later");
                false
            }
        }
    }

    async fn teardown(&self, server: &str, bridge: Arc<Bridge>) -> bool {
        self.firewall
            .detach(server, self.remove_network(&bridge.spec))
            .await
    }

    async fn leave(&self, server: &str) {
        self.leases
            .release(server, |b| async move {
                self.teardown(server, b).await;
            })
            .await;
    }

    /// Removes every network and its rules (shutdown, after every container is gone); whether
    /// all went.
    pub async fn shutdown(&self) -> bool {
        let mut clean = true;
        for (server, b) in self.leases.drain().await {
            clean &= self.teardown(&server, b).await;
        }
        clean
    }
}
