//! `portcullis serve`: load the policy, start the servers, listen, stop cleanly on a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::access::Access;
use crate::downstream::Listener;
use crate::policy::{self, Policy};
use crate::router::Router;
use crate::sandbox::process::ProcessRuntime;
use crate::sandbox::Runtimes;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Policy file; without it the embedded default policy is used.
    #[arg(long, env = "PORTCULLIS_POLICY")]
    pub policy: Option<PathBuf>,
    /// Overrides gateway.listen from the policy.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Overrides [audit] dir from the policy.
    #[arg(long, env = "PORTCULLIS_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
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
    if let Some(dir) = args.audit_dir {
        policy.audit.dir = dir;
    }
    tracing::info!(policy = %policy.origin, servers = policy.servers.len(), "policy loaded");
    let runtimes = Runtimes {
        process: Arc::new(ProcessRuntime),
        docker: None,
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
    Ok(())
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
