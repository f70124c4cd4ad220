//! `portcullis serve`: load the policy, start the servers, listen, stop cleanly on a signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::access::Access;
use crate::audit::{AuditConfig, AuditEvent, AuditLog, Kind, RedactStrings};
use crate::downstream::Listener;
use crate::policy::{self, Policy};
use crate::router::audit_trail::AuditTrail;
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
    /// Overrides [audit] dir from the policy.
    #[arg(long, env = "PORTCULLIS_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Overrides [gateway] state_dir from the policy (where OAuth token caches are kept).
    #[arg(long, env = "PORTCULLIS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// For a gateway in a Docker container whose port is published only on the host's loopback
    /// (compose `127.0.0.1:8811:8811`): allows a non-loopback --listen (`0.0.0.0:8811`) without
    /// TLS and client authentication. Verified through the Docker API before listening (own
    /// network namespace, every host binding on loopback); then only loopback and the host side
    /// of the container's bridge networks may connect, so other containers are refused.
    #[arg(long, env = "PORTCULLIS_PUBLISHED_ON_HOST_LOOPBACK")]
    pub published_on_host_loopback: bool,
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
    if let Some(dir) = args.state_dir {
        policy.set_state_dir(dir);
    }
    tracing::info!(policy = %policy.origin, servers = policy.servers.len(), "policy loaded");
    let published = match check_listener_safety(&policy, args.published_on_host_loopback)? {
        Exposure::Direct => None,
        Exposure::PublishedOnHostLoopback => Some(
            super::container_listener::verify(policy.gateway.listen)
                .await
                .context("refusing to listen with --published-on-host-loopback")?,
        ),
    };
    let audit_log = open_audit(&policy).await?;
    let trail = AuditTrail::new(audit_log.clone());
    let sinks = match &audit_log {
        Some(log) if !policy.audit.sinks.is_empty() => Some(
            crate::audit::sinks::Sinks::start(log.dir(), &policy.audit.sinks, Default::default())
                .context("starting the audit sinks")?,
        ),
        _ => None,
    };
    trail
        .record(AuditEvent::new(Kind::GatewayStart).detail(format!(
            "portcullis {} pid {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        )))
        .await?;
    trail
        .record(AuditEvent::new(Kind::PolicyLoad).detail(format!(
            "{} ({} servers: {})",
            policy.origin,
            policy.servers.len(),
            policy.servers.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
        .await?;
    let docker = connect_docker(&policy, &args.docker_scope).await;
    let runtimes = Runtimes {
        process: Arc::new(ProcessRuntime),
        docker: docker.runtime(),
    };
    let access =
        Arc::new(Access::from_policy(&policy).context("setting up client authentication")?);
    let router = Router::start(&policy, Arc::new(runtimes), access.clone(), trail.clone());
    let listener = Listener::bind(&policy.gateway, router.clone(), access, trail.clone())
        .await
        .context("starting the listener")?;
    // In a container, clients connect to the published host address, not the bound one.
    let (listener, addr) = match published {
        Some(p) => {
            let bound = listener.local_addr().context("reading the bound address")?;
            let addr = p.host_addrs.first().copied().unwrap_or(bound);
            (listener.only_from(p.peers), addr)
        }
        None => {
            let addr = listener.local_addr().context("reading the bound address")?;
            (listener, addr)
        }
    };
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
    let _ = trail
        .record(AuditEvent::new(Kind::GatewayStop).detail("signal"))
        .await;
    if let Some(log) = &audit_log {
        if let Err(e) = log.shutdown().await {
            tracing::error!(error = %e, "audit log did not close cleanly");
        }
    }
    if let Some(s) = sinks {
        // Give sinks a moment to ship the final checkpoint; they resume from their cursors.
        s.stop(std::time::Duration::from_secs(3)).await;
    }
    Ok(())
}

/// Opens the audit log when the policy has it on, with every secret value the policy can name
/// in its redaction set.
async fn open_audit(policy: &Policy) -> anyhow::Result<Option<Arc<AuditLog>>> {
    if !policy.audit.enabled {
        tracing::warn!("audit log disabled by the policy ([audit] enabled = false)");
        return Ok(None);
    }
    let config = AuditConfig::from_policy(&policy.audit);
    let dir = config.dir.clone();
    // Opening scans and may repair the existing log: file I/O, kept off the async workers.
    let log = tokio::task::spawn_blocking(move || AuditLog::open(&config, None))
        .await
        .context("audit log start-up task")?
        .with_context(|| format!("opening the audit log in {}", dir.display()))?;
    let mut secrets = Vec::new();
    for server in policy.servers.values() {
        for (name, source) in &server.secrets {
            if let Ok(v) = crate::secrets::resolve(name, source) {
                // Arguments are JSON text: a secret appears there escaped as well as plain.
                let escaped = serde_json::to_string(&v).unwrap_or_default();
                secrets.push(escaped.trim_matches('"').to_owned());
                secrets.push(v);
            }
        }
    }
    let policy_secrets = RedactStrings(secrets);
    // OAuth tokens are obtained later; the live set covers them from the moment they arrive.
    log.set_redactor(Arc::new(move |text: &str| {
        let text = crate::audit::Redact::redact(&policy_secrets, text);
        crate::secrets::live().redact(&text).into_owned()
    }));
    tracing::info!(dir = %log.dir().display(), key_id = log.key_id(), log_id = log.log_id(), "audit log open");
    Ok(Some(Arc::new(log)))
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

/// How the listener may be reached.
enum Exposure {
    /// Loopback, or secured by TLS and client authentication.
    Direct,
    /// Off loopback with neither; allowed only after `container_listener::verify`.
    PublishedOnHostLoopback,
}

/// The policy check covers `gateway.listen`; `--listen` can move the listener afterwards, so
/// the rule is enforced again on what will actually be bound.
fn check_listener_safety(
    policy: &Policy,
    published_on_host_loopback: bool,
) -> anyhow::Result<Exposure> {
    let addr = policy.gateway.listen;
    if addr.ip().is_loopback() {
        return Ok(Exposure::Direct);
    }
    let mut missing = Vec::new();
    if policy.gateway.tls.is_none() {
        missing.push("TLS ([gateway.tls] cert and key)");
    }
    if !policy.requires_auth() {
        missing.push("client authentication ([clients.NAME] token_sha256 or [auth.jwt])");
    }
    if published_on_host_loopback {
        return Ok(Exposure::PublishedOnHostLoopback);
    }
    if missing.is_empty() {
        return Ok(Exposure::Direct);
    }
    anyhow::bail!(
        "refusing to listen on {addr}: it is not a loopback address, and anything that can reach it could use every tool behind this gateway; configure {} or listen on 127.0.0.1 (in a container whose port is published only on the host's loopback, add --published-on-host-loopback)",
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
