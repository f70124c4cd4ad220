//! The runtimes a running gateway starts servers on, with the Docker engine connected when a
//! policy first needs it: at start-up, or at a reload that adds the first docker server (or
//! finds the engine reachable again after it was not).

use std::sync::Arc;

use super::docker::{self, DockerRuntime};
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
    state: tokio::sync::Mutex<State>,
}

impl Backends {
    /// `scope` is the Docker reconciliation scope (see `serve --docker-scope`).
    pub fn new(scope: &str) -> Backends {
        let docker = DockerState::NotNeeded;
        Backends {
            scope: scope.to_owned(),
            state: tokio::sync::Mutex::new(State {
                runtime: runtimes(&docker),
                docker,
                generation: 0,
            }),
        }
    }

    /// The runtimes servers start on, after connecting to Docker if `policy` has docker servers
    /// and the engine is not connected yet; with the generation of that runtime. A new
    /// generation means docker servers started earlier ran on a runtime that could not start
    /// them, and should be restarted on this one.
    pub async fn for_policy(&self, policy: &Policy) -> (Arc<dyn Runtime>, u64) {
        let mut st = self.state.lock().await;
        let wanted = policy
            .servers
            .values()
            .any(|s| matches!(s.runtime, policy::Runtime::Docker(_)));
        if wanted && !matches!(st.docker, DockerState::Connected(_)) {
            let was_unreachable = matches!(st.docker, DockerState::Unreachable(_));
            st.docker = connect(&self.scope).await;
            if !(was_unreachable && matches!(st.docker, DockerState::Unreachable(_))) {
                st.runtime = runtimes(&st.docker);
                st.generation += 1;
            }
        }
        (st.runtime.clone(), st.generation)
    }

    /// Removes the containers and networks of this gateway's scope; returns how many containers.
    pub async fn shutdown(&self) -> Option<usize> {
        match &self.state.lock().await.docker {
            DockerState::Connected(d) => Some(d.shutdown().await),
            _ => None,
        }
    }
}

// TODO(egress-wire): when the egress module is attached to the runtimes, build them with its
// handle here, so that a runtime created by a reload (Docker connected late) enforces egress
// like the one created at start-up. Reloads stop and start servers only through these runtimes
// (spawn / Instance::kill), and a replaced server's new instances start after the old ones
// reached `Stopped`, i.e. after `kill` returned, so per-server prepare/release there do not
// overlap. Two exceptions: an instance interrupted while still starting is removed in the
// background, and one that does not stop within the bound (router/servers.rs) is left behind.
fn runtimes(docker: &DockerState) -> Arc<dyn Runtime> {
    let docker: Option<Arc<dyn Runtime>> = match docker {
        DockerState::NotNeeded => None,
        DockerState::Connected(d) => Some(Arc::new(d.clone())),
        DockerState::Unreachable(reason) => Some(Arc::new(docker::Unavailable {
            reason: reason.clone(),
        })),
    };
    Arc::new(Runtimes {
        process: Arc::new(ProcessRuntime),
        docker,
    })
}

/// Connects to the engine; an unreachable engine fails docker servers (with the reason) and
/// leaves the others running.
async fn connect(scope: &str) -> DockerState {
    let d = match DockerRuntime::connect_scoped(scope).await {
        Ok(d) => d,
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
    // Nothing of ours runs on it yet, so everything of this scope is a leftover of an earlier
    // gateway.
    if let Err(e) = d.reconcile(|_| false).await {
        tracing::warn!(error = %e, "could not remove leftover containers");
    }
    DockerState::Connected(d)
}
