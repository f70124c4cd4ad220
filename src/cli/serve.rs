//! `portcullis serve`: load the policy, start the servers, listen, reload the policy on SIGHUP
//! or when its file changes, stop cleanly on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::access::Access;
use crate::audit::{AuditConfig, AuditEvent, AuditLog, Kind};
use crate::downstream::Listener;
use crate::policy::{self, Policy};
use crate::reload::{self, Overrides, Reloader};
use crate::router::audit_trail::AuditTrail;
use crate::router::{ActiveLock, Router};
use crate::sandbox::backends::Backends;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Policy file; without it the embedded default policy is used.
    #[arg(long, env = "PORTCULLIS_POLICY")]
    pub policy: Option<PathBuf>,
    /// Overrides gateway.listen from the policy.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// This gateway's instance id (overrides [gateway] instance): every kernel and Docker object
    /// it makes is named from it, and it cleans up only its own instance's leftovers. Default:
    /// derived from the state directory. A second start with an id in use is refused.
    #[arg(long, env = "PORTCULLIS_INSTANCE")]
    pub instance: Option<String>,
    /// This gateway's name in a fleet of replicas: written in every audit record, log line
    /// and metric. A replica without --instance (or [gateway] instance) takes it as its
    /// instance id, so replicas sharing a host or Docker engine keep to their own objects.
    #[arg(long, env = "PORTCULLIS_REPLICA")]
    pub replica: Option<String>,
    /// Where the other replicas of the fleet reach this one with requests they forward to it (a
    /// retry or task handle whose state lives here): `http://HOST:PORT`. Default: this
    /// gateway's own listener when it has a definite address (not 0.0.0.0).
    #[arg(long, env = "PORTCULLIS_REPLICA_URL")]
    pub replica_url: Option<String>,
    /// Reconciliation scope: at start-up the gateway removes the Docker containers and networks
    /// a previous gateway of the same scope left behind. Default: the instance id, so gateways
    /// sharing one engine keep to their own.
    #[arg(long, env = "PORTCULLIS_DOCKER_SCOPE")]
    pub docker_scope: Option<String>,
    /// Overrides [audit] dir from the policy.
    #[arg(long, env = "PORTCULLIS_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
    /// Overrides [gateway] state_dir from the policy (where OAuth token caches are kept).
    #[arg(long, env = "PORTCULLIS_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How often the policy file is checked for changes (each change is reloaded).
    #[arg(long, env = "PORTCULLIS_WATCH_INTERVAL", default_value = "1s", value_parser = policy::units::parse_duration)]
    pub watch_interval: Duration,
    /// Do not watch the policy file; reload only on SIGHUP.
    #[arg(long, env = "PORTCULLIS_NO_WATCH")]
    pub no_watch: bool,
    /// For a gateway in a Docker container whose port is published only on the host's loopback
    /// (compose `127.0.0.1:8811:8811`): allows a non-loopback --listen (`0.0.0.0:8811`) without
    /// TLS and client authentication. Verified through the Docker API before listening (own
    /// network namespace, every host binding on loopback); then only loopback and the host side
    /// of the container's bridge networks may connect, so other containers are refused.
    #[arg(long, env = "PORTCULLIS_PUBLISHED_ON_HOST_LOOPBACK")]
    pub published_on_host_loopback: bool,
    /// The devcontainer kit: listen on this Unix socket for the workspace's egress agent
    /// (`egress-agent --connect`) and give it the policy's `[workspace]` rules. Put it in a
    /// volume that only the gateway and the agent mount.
    #[arg(long, env = "PORTCULLIS_WORKSPACE_AGENT_SOCKET")]
    pub workspace_agent_socket: Option<PathBuf>,
    #[command(flatten)]
    pub gate: super::policy_gate::PolicyGateArgs,
}

pub fn load_policy(path: Option<&PathBuf>) -> anyhow::Result<Policy> {
    match path {
        Some(p) => Ok(policy::load(p)?),
        None => Ok(policy::default_policy()?),
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        listen: args.listen,
        audit_dir: args.audit_dir.clone(),
        state_dir: args.state_dir.clone(),
        published_on_host_loopback: args.published_on_host_loopback,
        instance: args.instance.clone(),
        replica: args.replica.clone(),
        gate: args.gate.gate()?,
    };
    if let Some(name) = &args.replica {
        crate::fleet::replica::set(name).map_err(anyhow::Error::msg)?;
    }
    if let Some(url) = &args.replica_url {
        crate::fleet::replica::set_url(url).map_err(anyhow::Error::msg)?;
    }
    let admitted = reload::load(args.policy.as_ref(), &overrides).map_err(refused)?;
    let (policy, sha256) = (admitted.policy.clone(), admitted.sha256.clone());
    let serial = admitted.signed.as_ref().map(|s| s.serial);
    tracing::info!(policy = %policy.origin, servers = policy.servers.len(), %sha256, ?serial, "policy loaded");
    // A fleet key that cannot be read would leave this replica unable to open what the others
    // issued: refuse to start rather than serve half a fleet.
    if let Some(r) = &policy.gateway.fleet_key {
        crate::secrets::resolve("fleet_key", r).context("reading [gateway] fleet_key")?;
    }
    // Before anything is touched: this instance is ours, or the start is refused.
    let mut held = super::instance::hold(&policy, args.policy.as_deref()).await?;
    let instance = held.id.clone();
    let published = match policy.listener_exposure() {
        None => None,
        Some(_) if args.published_on_host_loopback => Some(
            super::container_listener::verify(policy.gateway.listen)
                .await
                .context("refusing to listen with --published-on-host-loopback")?,
        ),
        Some(why) => anyhow::bail!(
            "{why} (in a container whose port is published only on the host's loopback, add --published-on-host-loopback)"
        ),
    };
    if let Some(t) = &policy.telemetry {
        crate::telemetry::init(t).context("starting trace export ([telemetry])")?;
        tracing::info!(endpoint = %t.endpoint, sampling = t.sampling, "trace spans are exported over OTLP");
    }
    let audit_log = open_audit(&policy).await?;
    let trail = AuditTrail::new(audit_log.clone());
    trail.set_policy_serial(serial);
    // SIEM sinks and witnesses read the log the same way; witnesses keep only its seals.
    let outlets: Vec<crate::policy::AuditSink> = policy
        .audit
        .sinks
        .iter()
        .chain(&policy.audit.witnesses)
        .cloned()
        .collect();
    let sinks = match &audit_log {
        Some(log) if !outlets.is_empty() => Some(
            crate::audit::sinks::Sinks::start(log.dir(), &outlets, Default::default())
                .context("starting the audit sinks and witnesses")?,
        ),
        _ => None,
    };
    trail
        .record(AuditEvent::new(Kind::GatewayStart).detail(format!(
            "portcullis {} pid {} instance {instance}",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        )))
        .await?;
    if let Some(what) = held.took_over() {
        trail
            .record(AuditEvent::new(Kind::Firewall).detail(what))
            .await?;
    }
    trail
        .record(AuditEvent::new(Kind::PolicyLoad).detail(admitted.describe(&overrides.gate)))
        .await?;
    super::egress_watch::warn_about_policy(&policy);
    crate::upstream::stderr::set_default_rate(policy.gateway.server_log_rate);
    let scope = args
        .docker_scope
        .clone()
        .unwrap_or_else(|| instance.to_string());
    let backends = Arc::new(Backends::new(&scope, held.firewall.clone()));
    let egress_watch = super::egress_watch::spawn(backends.clone(), trail.clone());
    let _workspace_agent = workspace_agent(args.workspace_agent_socket.as_deref(), &policy, &held)?;
    let (runtime, runtime_generation) = backends.for_policy(&policy).await;
    let access =
        Arc::new(Access::from_policy(&policy).context("setting up client authentication")?);
    let lock = match policy.gateway.lock.clone() {
        Some(settings) => {
            let origin = policy.origin.clone();
            let lock = tokio::task::spawn_blocking(move || ActiveLock::load(&settings, &origin))
                .await
                .context("lock file loading task")??;
            tracing::info!(lock = %lock.settings.path.display(), mode = lock.settings.mode.as_str(), servers = lock.lock.servers.len(), "tool lock in force");
            Some(lock)
        }
        None => None,
    };
    let router = Router::start_locked(&policy, runtime, access.clone(), trail.clone(), lock);
    let listener = Listener::bind(
        &policy.gateway,
        router.clone(),
        access.clone(),
        trail.clone(),
    )
    .await
    .context("starting the listener")?;
    let admin = match policy.gateway.admin_listen {
        Some(addr) => {
            let l = Listener::bind_admin(
                &policy.gateway,
                addr,
                router.clone(),
                access.clone(),
                trail.clone(),
            )
            .await
            .context("starting the admin listener (gateway.admin_listen)")?;
            let bound = l.local_addr().context("reading the admin address")?;
            tracing::info!(%bound, "admin listener: /health, /ready, /metrics");
            // It holds no sessions; it stops with the process.
            Some((bound, tokio::spawn(l.serve(std::future::pending()))))
        }
        None => None,
    };
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
    let watch = match (&args.policy, args.no_watch) {
        (Some(path), false) => Some((path.clone(), args.watch_interval)),
        _ => None,
    };
    let reloader = Reloader::new(
        args.policy.clone(),
        overrides,
        admitted,
        runtime_generation,
        reload::Parts {
            router: router.clone(),
            access,
            trail: trail.clone(),
            audit_log: audit_log.clone(),
            sessions: listener.sessions(),
            backends: backends.clone(),
        },
    );
    reload::triggers::start(Arc::new(reloader), watch).context("listening for SIGHUP")?;
    let base = super::client_config::base_url(&policy, addr);
    let url = format!("{base}/mcp");
    held.set_listener(&url);
    let stop = shutdown_signal();
    tracing::info!(%url, %instance, "portcullis listening");
    // The banner goes to stdout so scripts (and people) can pick up the URL; the command is the
    // one `client-config claude` prints, token header included when clients must authenticate.
    println!("Portcullis is listening on {url}");
    let auth_env = policy.requires_auth().then_some("PORTCULLIS_TOKEN");
    println!(
        "Connect Claude Code with:  {}",
        super::client_config::claude_command(
            "portcullis",
            &base,
            super::client_config::Transport::Http,
            super::client_config::Scope::User,
            auth_env,
        )
    );
    if auth_env.is_some() {
        println!("  (export PORTCULLIS_TOKEN=<the client's token> before starting Claude Code)");
    }
    if let Some((bound, _)) = &admin {
        println!("Admin endpoints (/ready, /metrics) on http://{bound}");
    }
    listener.serve(stop).await;
    if let Some((_, task)) = admin {
        task.abort();
    }
    tracing::info!("shutting down: stopping servers");
    router.shutdown().await;
    if let Some(removed) = backends.shutdown().await {
        tracing::info!(removed, "removed this gateway's containers");
    }
    egress_watch.abort();
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
    // The instance is free once everything of it is gone.
    drop(held);
    Ok(())
}

/// A refused policy as the binary's edge reports it: the policy's own diagnostics stay a
/// `PolicyError` (printed as they are, one `FILE:LINE:COL: error:` per line).
fn refused(e: reload::Refused) -> anyhow::Error {
    match e {
        reload::Refused::Policy(p) => p.into(),
        other => other.into(),
    }
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
    log.set_redactor(Arc::new(crate::secrets::audit_redactor(
        crate::secrets::redaction_values(policy),
    )));
    tracing::info!(dir = %log.dir().display(), key_id = log.key_id(), log_id = log.log_id(), "audit log open");
    Ok(Some(Arc::new(log)))
}

/// SIGTERM and SIGINT, watched from the moment this is called, not from the first poll of the
/// returned future: called before the banner, so a stop that comes right after the gateway
/// said it listens is a clean stop (final checkpoint, containers removed), never the default
/// disposition's kill. CI once saw a gateway stopped right after start die of SIGTERM.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM/SIGINT; only Ctrl-C stops the gateway");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

/// Starts the workspace agent's socket when the kit asks for it (`egress::workspace`).
fn workspace_agent(
    socket: Option<&std::path::Path>,
    policy: &Policy,
    held: &super::instance::Held,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let (socket, egress) = match (socket, &policy.workspace) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            tracing::warn!("the policy has [workspace] rules, but no --workspace-agent-socket: nothing enforces them here (the devcontainer kit sets it)");
            return Ok(None);
        }
        (Some(_), None) => anyhow::bail!(
            "--workspace-agent-socket needs a [workspace] section in the policy: without it the workspace's agent would have no rules to enforce"
        ),
        (Some(s), Some(w)) => (s, w),
    };
    let rules = crate::egress::workspace::WorkspaceRules {
        instance: held.firewall.names().instance().to_string(),
        settings: policy.egress.clone(),
        egress: egress.clone(),
    };
    let task = crate::egress::workspace::listen(socket, rules, held.firewall.sidecar_reporter())
        .context("starting the workspace's egress agent socket")?;
    Ok(Some(task))
}
