//! `portcullis serve`: load the policy, start the servers, listen, stop cleanly on a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::access::Access;
use crate::downstream::Listener;
use crate::policy::{self, Policy};
use crate::router::Router;
use crate::sandbox::docker::{self, DockerRuntime};
use crate::sandbox::process::ProcessRuntime;
use crate::sandbox::{Runtime, Runtimes};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Policy file; without it the embedded default policy is used.
    #[arg(long, env = "PORTCULLIS_POLICY")]
    pub policy: Option<PathBuf>,
    /// Overrides gateway.listen from the policy.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Reconciliation scope: at start-up the gateway removes the Docker containers and networks
    /// a previous gateway of the same scope left behind. Gateways sharing one engine need
    /// distinct scopes.
    #[arg(long, env = "PORTCULLIS_DOCKER_SCOPE", default_value = docker::DEFAULT_SCOPE)]
    pub docker_scope: String,
}

pub fn load_policy(path: Option<&PathBuf>) -> anyhow::Result<Policy> {
    match path {
        Some(p) => Ok(policy::load(p)?),
        None => Ok(policy::default_policy()?),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut policy = load_policy(args.policy.as_ref())?;
    if let Some(listen) = args.listen {
        policy.gateway.listen = listen;
    }
    tracing::info!(policy = %policy.origin, servers = policy.servers.len(), "policy loaded");
    let docker = connect_docker(&policy, &args.docker_scope).await;
    let runtimes = Runtimes {
        process: Arc::new(ProcessRuntime),
        docker: docker.runtime(),
    };
    check_listener_safety(&policy)?;
    let access =
        Arc::new(Access::from_policy(&policy).context("setting up client authentication")?);
    let router = Router::start(&policy, Arc::new(runtimes), access.clone());
    let listener = Listener::bind(&policy.gateway, router.clone(), access)
        .await
        .context("starting the listener")?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let scheme = if policy.gateway.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{addr}/mcp");
    tracing::info!(%url, "portcullis listening");
    // The banner goes to stdout so scripts (and people) can pick up the URL.
    println!("Portcullis is listening on {url}");
    println!("Connect Claude Code with:  claude mcp add --transport http portcullis {url}");
    listener.serve(shutdown_signal()).await;
    tracing::info!("shutting down: stopping servers");
    router.shutdown().await;
    if let DockerState::Connected(d) = &docker {
        let removed = d.shutdown().await;
        tracing::info!(removed, "removed this gateway's containers");
    }
    Ok(())
}

enum DockerState {
    NotNeeded,
    Connected(DockerRuntime),
    Unreachable(String),
}

impl DockerState {
    fn runtime(&self) -> Option<Arc<dyn Runtime>> {
        match self {
            DockerState::NotNeeded => None,
            DockerState::Connected(d) => Some(Arc::new(d.clone())),
            DockerState::Unreachable(reason) => Some(Arc::new(docker::Unavailable {
                reason: reason.clone(),
            })),
        }
    }
}

/// Connects to Docker only when the policy has docker servers; an unreachable engine fails those
/// servers (with the reason) and leaves the others running.
async fn connect_docker(policy: &Policy, scope: &str) -> DockerState {
    let wanted = policy
        .servers
        .values()
        .any(|s| matches!(s.runtime, policy::Runtime::Docker(_)));
    if !wanted {
        return DockerState::NotNeeded;
    }
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
    // Nothing is running yet, so everything of this scope is a leftover of an earlier gateway.
    if let Err(e) = d.reconcile(|_| false).await {
        tracing::warn!(error = %e, "could not remove leftover containers");
    }
    DockerState::Connected(d)
}

/// The policy check covers `gateway.listen`; `--listen` can move the listener afterwards, so
/// the rule is enforced again on what will actually be bound.
fn check_listener_safety(policy: &Policy) -> anyhow::Result<()> {
    let addr = policy.gateway.listen;
    if addr.ip().is_loopback() {
        return Ok(());
    }
    let mut missing = Vec::new();
    if policy.gateway.tls.is_none() {
        missing.push("TLS ([gateway.tls] cert and key)");
    }
    if !policy.requires_auth() {
        missing.push("client authentication ([clients.NAME] token_sha256 or [auth.jwt])");
    }
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {addr}: it is not a loopback address, and anything that can reach it could use every tool behind this gateway; configure {} or listen on 127.0.0.1",
        missing.join(" and ")
    )
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
