//! The `docker` runtime: each server instance is a hardened container created through the Docker
//! Engine API (never the docker CLI), with MCP over the container's attached stdio.
//!
//! Every container carries ownership labels (see `labels`) so that reconciliation can remove what
//! a crashed gateway left behind without touching anything else on the engine.

pub mod attach;
mod bridges;
mod images;
mod instance;
pub mod labels;
pub mod own_container;
mod reconcile;
mod sidecars;
mod spawn;
pub mod spec;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::errors::Error as ApiError;
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, InspectContainerOptions, RemoveContainerOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

pub use bridges::Joined;
pub use images::ResolvedImage;
pub use reconcile::Reconciled;
pub use spec::Network;

use super::firewall::Firewall;
use super::leases::Lease;
use super::{BoxFuture, Instance, Runtime, SandboxError, SpawnContext, Spawned};
use crate::policy::Server;

/// Upper bound for ordinary API calls (inspect, list, start, remove).
pub(crate) const API_TIMEOUT: Duration = Duration::from_secs(30);
/// Creating a container can be slow on a loaded engine (overlay setup).
pub(crate) const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Reaching the engine at all.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The reconciliation scope used when the operator names none.
pub const DEFAULT_SCOPE: &str = "default";

/// One failed Docker API call.
#[derive(Debug, thiserror::Error)]
pub enum DockerFailure {
    #[error("{op}: {source}")]
    Api {
        op: &'static str,
        #[source]
        source: ApiError,
    },
    #[error("{op}: no answer from the Docker engine within {}s", limit.as_secs())]
    Timeout { op: &'static str, limit: Duration },
}

impl DockerFailure {
    fn is_not_found(&self) -> bool {
        matches!(
            self,
            DockerFailure::Api {
                source: ApiError::DockerResponseServerError {
                    status_code: 404,
                    ..
                },
                ..
            }
        )
    }
}

/// Runs one API call with a deadline, so a wedged engine can never hang the gateway.
pub(crate) async fn timed<T>(
    op: &'static str,
    limit: Duration,
    call: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, DockerFailure> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(DockerFailure::Api { op, source }),
        Err(_) => Err(DockerFailure::Timeout { op, limit }),
    }
}

/// Attaching to a container's stdin, stdout and stderr as streams, without past output: done
/// before the container starts, so not one byte it writes is missed.
pub(crate) fn stdio_attach() -> bollard::query_parameters::AttachContainerOptions {
    AttachContainerOptionsBuilder::new()
        .stdin(true)
        .stdout(true)
        .stderr(true)
        .stream(true)
        .logs(false)
        .build()
}

/// The engine's self-description, for `doctor` and the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    pub version: String,
    pub api_version: String,
}

/// A connection to the Docker engine plus the bookkeeping of what this process started.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// Random per process: labels tell which gateway created a container.
    gateway: Arc<str>,
    scope: Arc<str>,
    /// Containers this process created and has not removed yet: id -> server.
    started: Arc<Mutex<HashMap<String, String>>>,
    /// Networks of firewalled servers; `None`: no firewall, so servers with egress rules are
    /// refused (fail closed).
    bridges: Option<Arc<bridges::Bridges>>,
    /// Sidecar mode: an egress agent per firewalled server instead of bridges judged by the
    /// gateway's own table.
    sidecars: Option<Arc<sidecars::Sidecars>>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("gateway", &self.gateway)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl DockerRuntime {
    /// Connects to the local engine (`DOCKER_HOST` or `/var/run/docker.sock`) in the default
    /// reconciliation scope.
    pub async fn connect() -> Result<DockerRuntime, SandboxError> {
        Self::connect_scoped(DEFAULT_SCOPE).await
    }

    /// Connects and negotiates the API version: the engine may be older than bollard's default.
    pub async fn connect_scoped(scope: &str) -> Result<DockerRuntime, SandboxError> {
        let unreachable = |reason: String| SandboxError::EngineUnreachable { reason };
        let docker =
            Docker::connect_with_local_defaults().map_err(|e| unreachable(e.to_string()))?;
        let docker = match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {}s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        };
        Ok(DockerRuntime {
            docker,
            gateway: random_hex(8).into(),
            scope: scope.into(),
            started: Arc::default(),
            bridges: None,
            sidecars: None,
        })
    }

    /// Enforces egress rules through `firewall`: servers with rules get their own bridge
    /// network, programmed before their containers start.
    /// In sidecar mode (`[egress] mode`, see `egress::mode`) each such server gets an egress
    /// agent container instead, whose table lives in the server's own namespace.
    pub fn with_firewall(mut self, firewall: Firewall) -> DockerRuntime {
        let mode = crate::egress::mode::resolve(firewall.settings().mode);
        tracing::info!(mode = mode.mode.as_str(), reason = %mode.reason, "egress mode of docker servers");
        if mode.mode == crate::policy::EgressMode::Sidecar {
            self.sidecars = Some(Arc::new(sidecars::Sidecars::new(
                self.docker.clone(),
                firewall,
                self.scope.clone(),
                self.gateway.clone(),
            )));
            return self;
        }
        self.bridges = Some(Arc::new(bridges::Bridges::new(
            self.docker.clone(),
            firewall,
            self.scope.clone(),
            self.gateway.clone(),
        )));
        self
    }

    /// Applies `server`'s changed egress rules (a reload) to its running agent in sidecar
    /// mode; `None` in host mode, where the gateway's own table holds them
    /// ([`Firewall::reprogram`]).
    pub async fn apply_egress_sidecar(
        &self,
        server: &Server,
    ) -> Option<Result<bool, SandboxError>> {
        match &self.sidecars {
            Some(s) => Some(s.apply(server).await),
            None => None,
        }
    }

    /// This process's instance id, as found in the `io.portcullis.gateway` label.
    pub fn gateway_id(&self) -> &str {
        &self.gateway
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The underlying API client (doctor, tests).
    pub fn api(&self) -> &Docker {
        &self.docker
    }

    pub async fn engine(&self) -> Result<EngineInfo, SandboxError> {
        let v = timed("version", API_TIMEOUT, self.docker.version())
            .await
            .map_err(|e| SandboxError::EngineUnreachable {
                reason: e.to_string(),
            })?;
        Ok(EngineInfo {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
        })
    }

    /// Looks an image up locally; `Ok(None)` when it is missing (it is never pulled).
    pub async fn image(&self, image: &str) -> Result<Option<ResolvedImage>, SandboxError> {
        images::resolve(&self.docker, image)
            .await
            .map_err(|e| SandboxError::EngineUnreachable {
                reason: e.to_string(),
            })
    }

    /// Removes the containers and networks of this scope that `keep` does not claim (it sees each
    /// object's labels). Objects without Portcullis's owner label are never looked at.
    pub async fn reconcile(
        &self,
        keep: impl Fn(&HashMap<String, String>) -> bool + Sync,
    ) -> Result<Reconciled, SandboxError> {
        reconcile::run(self, &keep)
            .await
            .map_err(|e| SandboxError::EngineUnreachable {
                reason: e.to_string(),
            })
    }

    /// Removes every container this process started and has not removed yet, including any the
    /// engine created after a call timed out on our side (found by this process's label).
    /// Returns how many were removed.
    pub async fn shutdown(&self) -> usize {
        self.shutdown_all().await.0
    }

    /// [`Self::shutdown`], then removes the sandbox networks and their egress rules; returns
    /// the containers removed and whether everything (containers and networks) is gone.
    pub async fn shutdown_all(&self) -> (usize, bool) {
        if let Some(s) = &self.sidecars {
            s.begin_shutdown();
        }
        let removed = self.remove_containers().await;
        let containers_gone = self.started.lock().map(|s| s.is_empty()).unwrap_or(false);
        let networks_gone = match &self.bridges {
            Some(b) => b.shutdown().await,
            None => true,
        } && match &self.sidecars {
            Some(s) => s.shutdown().await,
            None => true,
        };
        (removed, containers_gone && networks_gone)
    }

    async fn remove_containers(&self) -> usize {
        let tracked = self.remove_tracked().await;
        let gateway = self.gateway.clone();
        let untracked = self
            .reconcile(|l| l.get(labels::GATEWAY).map(String::as_str) != Some(&*gateway))
            .await
            .map(|r| r.containers.len())
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not list this gateway's containers at shutdown");
                0
            });
        tracked + untracked
    }

    async fn remove_tracked(&self) -> usize {
        let ids: Vec<String> = match self.started.lock() {
            Ok(s) => s.keys().cloned().collect(),
            Err(_) => return 0,
        };
        let removals = ids.iter().map(|id| async move {
            match remove(&self.docker, id).await {
                Ok(()) => {
                    self.forget(id);
                    true
                }
                Err(e) => {
                    tracing::warn!(container = %short(id), error = %e, "could not remove container at shutdown");
                    false
                }
            }
        });
        futures_util::future::join_all(removals)
            .await
            .into_iter()
            .filter(|ok| *ok)
            .count()
    }

    fn track(&self, id: &str, server: &str) {
        if let Ok(mut s) = self.started.lock() {
            s.insert(id.to_owned(), server.to_owned());
        }
    }

    /// The network a container of `server` joins, and its lease on it.
    async fn network(&self, server: &Server) -> Result<(Network, Option<Lease>), SandboxError> {
        if server.egress.allow.is_empty() {
            return Ok((Network::None, None));
        }
        if let Some(sidecars) = &self.sidecars {
            let (agent, lease) = sidecars.join(server).await?;
            return Ok((Network::Container { agent }, Some(lease)));
        }
        let Some(bridges) = &self.bridges else {
            return Err(SandboxError::Egress {
                server: server.name.clone(),
                reason: "this Docker runtime has no egress firewall (DockerRuntime::with_firewall)"
                    .into(),
            });
        };
        let (joined, lease) = bridges.join(server).await?;
        Ok((
            Network::Bridge {
                network: joined.network,
                resolver: joined.resolver,
            },
            Some(lease),
        ))
    }

    fn forget(&self, id: &str) {
        if let Ok(mut s) = self.started.lock() {
            s.remove(id);
        }
    }
}

impl Runtime for DockerRuntime {
    fn spawn<'a>(
        &'a self,
        server: &'a Server,
        ctx: &'a SpawnContext,
    ) -> BoxFuture<'a, Result<Spawned, SandboxError>> {
        Box::pin(self.spawn_container(server, ctx))
    }

    fn stop_server<'a>(&'a self, server: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let ids: Vec<String> = match self.started.lock() {
                Ok(s) => s
                    .iter()
                    .filter(|(_, srv)| srv.as_str() == server)
                    .map(|(id, _)| id.clone())
                    .collect(),
                Err(_) => return 0,
            };
            let mut stopped = 0;
            for id in &ids {
                // The instance's own wait sees the container gone; it then releases the lease.
                match remove(&self.docker, id).await {
                    Ok(()) => stopped += 1,
                    Err(e) => {
                        tracing::error!(container = %short(id), %server, error = %e, "could not stop a container")
                    }
                }
            }
            stopped
        })
    }
}

/// Stands in for the Docker runtime when the engine could not be reached at start-up, so docker
/// servers fail with the reason while process servers keep working.
pub struct Unavailable {
    pub reason: String,
}

impl Runtime for Unavailable {
    fn spawn<'a>(
        &'a self,
        _server: &'a Server,
        _ctx: &'a SpawnContext,
    ) -> BoxFuture<'a, Result<Spawned, SandboxError>> {
        Box::pin(async move {
            Err(SandboxError::EngineUnreachable {
                reason: self.reason.clone(),
            })
        })
    }
}

/// Force-removes a container (kills it first); an already removed container counts as success.
/// When another request is already removing it, waits until it is gone: "in progress" is not
/// "done", and a gateway that exits while the other request is in flight (a supervisor's kill
/// racing the shutdown sweep) would otherwise leave the container behind.
async fn remove(docker: &Docker, id: &str) -> Result<(), DockerFailure> {
    let removed = timed(
        "container remove",
        API_TIMEOUT,
        docker.remove_container(
            id,
            Some(
                RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build(),
            ),
        ),
    )
    .await;
    match removed {
        Err(e) if e.is_not_found() => Ok(()),
        // 409: removal already in progress (a concurrent kill or reconcile).
        Err(DockerFailure::Api {
            source:
                ApiError::DockerResponseServerError {
                    status_code: 409, ..
                },
            ..
        }) => wait_gone(docker, id).await,
        other => other,
    }
}

/// Waits until the engine no longer knows container `id`, at most `API_TIMEOUT`.
async fn wait_gone(docker: &Docker, id: &str) -> Result<(), DockerFailure> {
    const POLL: Duration = Duration::from_millis(50);
    let deadline = tokio::time::Instant::now() + API_TIMEOUT;
    loop {
        match timed(
            "container inspect",
            API_TIMEOUT,
            docker.inspect_container(id, None::<InspectContainerOptions>),
        )
        .await
        {
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
            Ok(_) if tokio::time::Instant::now() >= deadline => {
                return Err(DockerFailure::Timeout {
                    op: "container remove",
                    limit: API_TIMEOUT,
                })
            }
            Ok(_) => tokio::time::sleep(POLL).await,
        }
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::getrandom(&mut buf).is_err() {
        // Uniqueness, not secrecy, is what matters here; fall back to time and pid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        return format!("{:x}{:x}", t, std::process::id())
            .chars()
            .rev()
            .take(bytes * 2)
            .collect();
    }
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::instance::describe_exit;
    use super::*;

    #[test]
    fn exit_reasons_read_well() {
        assert_eq!(describe_exit(Some(3)), "exited with status 3");
        assert_eq!(
            describe_exit(Some(137)),
            "exited with status 137 (killed by signal 9)"
        );
        assert_eq!(describe_exit(None), "stopped");
    }

    #[test]
    fn random_names_are_hex() {
        let r = random_hex(4);
        assert_eq!(r.len(), 8);
        assert!(r.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
