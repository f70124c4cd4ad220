//! The runtimes a running gateway starts servers on, with the Docker engine connected when a
//! policy first needs it: at start-up, or at a reload that adds the first docker server (or
//! finds the engine reachable again after it was not).
//!
//! Both runtimes share one egress [`Firewall`] (started by the first server with egress rules),
//! also in a runtime created by a reload. Reloads stop and start servers only through these
//! runtimes (spawn / `Instance::kill`), and a replaced server's new instances start after the
//! old ones' `kill` returned, which is after their network and rules were released; a start
//! that still finds the old network (an instance interrupted while starting, removed in the
//! background) re-programs the server's rules on it before the sandbox starts.

use std::sync::Arc;

use super::docker::{self, DockerRuntime};
use super::firewall::Firewall;
use super::process::ProcessRuntime;
use super::{Runtime, Runtimes};
use crate::policy::{self, Policy};

enum DockerState {
    NotNeeded,
    Connected(DockerRuntime),
    Unreachable(String),
}

struct State {
    docker: DockerState,
    runtime: Arc<dyn Runtime>,
    /// Counts the times `runtime` was replaced.
    generation: u64,
}

pub struct Backends {
    scope: String,
    firewall: Firewall,
    process: Arc<ProcessRuntime>,
    state: tokio::sync::Mutex<State>,
}

impl Backends {
    /// `scope` is the Docker reconciliation scope (see `serve --docker-scope`, by default the
    /// instance id); `firewall` is made from the policy's `[egress]` settings at start-up (a
    /// reload keeps them, see `policy::diff`) for this gateway's instance.
    pub fn new(scope: &str, firewall: Firewall) -> Backends {
        let process = Arc::new(ProcessRuntime::new(firewall.clone()));
        let docker = DockerState::NotNeeded;
        Backends {
            scope: scope.to_owned(),
            state: tokio::sync::Mutex::new(State {
                runtime: runtimes(&docker, &process),
                docker,
                generation: 0,
            }),
            firewall,
            process,
        }
    }

    /// The egress firewall both runtimes enforce through (events, reprogramming).
    pub fn firewall(&self) -> &Firewall {
        &self.firewall
    }

    /// Stops every running instance of `server` on the current runtimes (its egress
    /// enforcement was lost); returns how many.
    pub async fn stop_server(&self, server: &str) -> usize {
        let runtime = self.state.lock().await.runtime.clone();
        runtime.stop_server(server).await
    }

    /// Applies `server`'s changed egress rules (a reload that changed only them) to what runs
    /// now, without touching its instances: the running egress agent in sidecar mode, the
    /// gateway's table otherwise. `Ok(false)`: nothing of it runs (its next instance starts
    /// under the rules in force, see [`Firewall::current`]). Call after
    /// [`Firewall::set_policy`].
    pub async fn apply_egress(&self, server: &policy::Server) -> Result<bool, super::SandboxError> {
        if matches!(server.runtime, policy::Runtime::Docker(_)) {
            let docker = match &self.state.lock().await.docker {
                DockerState::Connected(d) => Some(d.clone()),
                _ => None,
            };
            if let Some(r) = match &docker {
                Some(d) => d.apply_egress_sidecar(server).await,
                None => None,
            } {
                return r;
            }
        }
        // Host mode: the gateway's table takes the new rules in place, instances kept. What
        // once let a removed host's address through after such an update (a lookup judged by
        // the old rules pinning into the new table) is closed in `Egress::update` and the
        // netlink worker's pin check; `tests/egress_reload.rs` races lookups against the
        // change, and `tests/egress_gateway.rs` checks it with real containers.
        self.firewall
            .reprogram(server)
            .await
            .map_err(|e| super::SandboxError::Egress {
                server: server.name.clone(),
                reason: e.to_string(),
            })
    }

    /// The runtimes servers start on, after connecting to Docker if `policy` has docker servers
    /// and the engine is not connected yet; with the generation of that runtime. A new
    /// generation means docker servers started earlier ran on a runtime that could not start
    /// them, and should be restarted on this one.
    pub async fn for_policy(&self, policy: &Policy) -> (Arc<dyn Runtime>, u64) {
        // Process servers started from now on hide this policy's secrets; their modes are the
        // second line, for a child without a mount view.
        self.process.set_hidden(super::hidden::hidden_paths(policy));
        if crate::egress::netns::is_root() {
            for e in super::hidden::exposures(policy) {
                tracing::error!(
                    server = %e.server,
                    uid = e.uid,
                    path = %e.path.display(),
                    "{} is readable by the server's user ({}); its mount view covers it, but fix the mode: `chmod go-rwx {}` (or close a directory above it)",
                    e.what,
                    e.why,
                    e.path.display()
                );
            }
        }
        let mut st = self.state.lock().await;
        let wanted = policy
            .servers
            .values()
            .any(|s| matches!(s.runtime, policy::Runtime::Docker(_)));
        if wanted && !matches!(st.docker, DockerState::Connected(_)) {
            let was_unreachable = matches!(st.docker, DockerState::Unreachable(_));
            st.docker = connect(&self.scope, &self.firewall).await;
            if !(was_unreachable && matches!(st.docker, DockerState::Unreachable(_))) {
                st.runtime = runtimes(&st.docker, &self.process);
                st.generation += 1;
            }
        }
        (st.runtime.clone(), st.generation)
    }

    /// Removes the containers and networks of this gateway's scope and the process servers'
    /// namespaces, then the egress table if nothing is left that it must keep closed; returns
    /// how many containers were removed (`None`: Docker was not connected). Call after the
    /// router has stopped every server.
    pub async fn shutdown(&self) -> Option<usize> {
        let (removed, mut clean) = match &self.state.lock().await.docker {
            DockerState::Connected(d) => {
                let (n, clean) = d.shutdown_all().await;
                (Some(n), clean)
            }
            _ => (None, true),
        };
        clean &= self.process.shutdown().await;
        if clean {
            self.firewall.shutdown().await;
        } else {
            tracing::warn!(table = %self.firewall.names().table(), "some sandboxes could not be removed: the egress table stays, so their interfaces stay closed");
        }
        removed
    }
}

fn runtimes(docker: &DockerState, process: &Arc<ProcessRuntime>) -> Arc<dyn Runtime> {
    let docker: Option<Arc<dyn Runtime>> = match docker {
        DockerState::NotNeeded => None,
        DockerState::Connected(d) => Some(Arc::new(d.clone())),
        DockerState::Unreachable(reason) => Some(Arc::new(docker::Unavailable {
            reason: reason.clone(),
        })),
    };
    Arc::new(Runtimes {
        process: process.clone(),
        docker,
    })
}

/// Connects to the engine; an unreachable engine fails docker servers (with the reason) and
/// leaves the others running.
async fn connect(scope: &str, firewall: &Firewall) -> DockerState {
    let d = match DockerRuntime::connect_scoped(scope).await {
        Ok(d) => d.with_firewall(firewall.clone()),
        Err(e) => {
            tracing::error!(error = %e, "docker servers will not start");
            return DockerState::Unreachable(e.to_string());
        }
    };
    match d.engine().await {
        Ok(info) => {
            tracing::info!(engine = %info.version, api = %info.api_version, gateway = d.gateway_id(), scope, "connected to Docker")
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the Docker engine's version"),
    }
    // Nothing of ours runs on it yet, so everything of this scope (containers, then the sandbox
    // networks they were on) is a leftover of an earlier gateway.
    if let Err(e) = d.reconcile(|_| false).await {
        tracing::warn!(error = %e, "could not remove leftover containers and networks");
    }
    DockerState::Connected(d)
}
