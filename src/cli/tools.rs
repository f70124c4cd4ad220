//! `portcullis tools lock` and `tools diff`: start every server of a policy as the gateway
//! would (same runtimes, sandboxes, secrets and egress rules), read what each offers, and write
//! it to the lock file or compare it with the lock file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use crate::guard::lock::{ImageLock, List, Lock, ServerLock, LISTS};
use crate::policy::{self, Policy};
use crate::sandbox::backends::Backends;
use crate::upstream::{StartOptions, Upstream};

/// How long a server's lists may take to read once it is up.
const LIST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long stopping the servers may take before the command gives up waiting.
const STOP_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, clap::Subcommand)]
pub enum ToolsCommand {
    /// Start every server of the policy and write what each offers (tools, prompts, resource
    /// templates, server name and version, image) to the lock file.
    Lock(LockArgs),
    /// Start every server and show what differs from the lock file (exit 1 when anything does).
    Diff(DiffArgs),
}

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    pub target: Target,
    /// Approve what the servers offer now over an existing lock file (all servers, or only
    /// `--server`).
    #[arg(long)]
    pub update: bool,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct Target {
    /// The policy file.
    #[arg(long)]
    pub policy: PathBuf,
    /// The lock file; default the policy's `[gateway] lock`, else POLICY.lock.
    #[arg(long)]
    pub lock: Option<PathBuf>,
    /// Only this server.
    #[arg(long)]
    pub server: Option<String>,
    /// Docker reconciliation scope of the servers this command starts (distinct from a running
    /// gateway's, whose containers it must not remove).
    #[arg(long, default_value = "tools-lock")]
    pub docker_scope: String,
}

pub fn run(cmd: ToolsCommand) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cmd {
        ToolsCommand::Lock(args) => rt.block_on(lock(args)),
        ToolsCommand::Diff(args) => rt.block_on(diff(args)),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            if e.downcast_ref::<policy::PolicyError>().is_some() {
                eprintln!("{e}");
            } else {
                eprintln!("error: {e:#}");
            }
            // 2: the command could not do its job (1 means "differences found" for diff).
            ExitCode::from(2)
        }
    }
}

/// The lock file a policy uses: `--lock`, else `[gateway] lock`, else POLICY.lock.
pub fn lock_path(policy_path: &Path, policy: &Policy, explicit: Option<&PathBuf>) -> PathBuf {
    if let Some(p) = explicit {
        return p.clone();
    }
    if let Some(l) = &policy.gateway.lock {
        return l.path.clone();
    }
    let mut name = policy_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

fn load(target: &Target) -> anyhow::Result<(Policy, PathBuf)> {
    let policy = policy::load(&target.policy)?;
    if let Some(s) = &target.server {
        if !policy.servers.contains_key(s) {
            anyhow::bail!(
                "server `{s}` is not in {}; the policy has: {}",
                target.policy.display(),
                policy
                    .servers
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let path = lock_path(&target.policy, &policy, target.lock.as_ref());
    Ok((policy, path))
}

async fn lock(args: LockArgs) -> anyhow::Result<ExitCode> {
    let (policy, path) = load(&args.target)?;
    let existing = if path.exists() {
        Some(Lock::read(&path)?)
    } else {
        None
    };
    if existing.is_some() && !args.update {
        anyhow::bail!(
            "{} exists; see what changed with `portcullis tools diff --policy {}` and approve it with `portcullis tools lock --update --policy {}`",
            path.display(),
            args.target.policy.display(),
            args.target.policy.display()
        );
    }
    if existing.is_none() && args.target.server.is_some() {
        anyhow::bail!(
            "{} does not exist yet; lock every server first (without --server)",
            path.display()
        );
    }
    let observed = observe(&policy, &args.target).await?;
    let mut next = existing
        .clone()
        .unwrap_or_else(|| Lock::new(&args.target.policy.display().to_string()));
    next.portcullis_lock = crate::guard::lock::FORMAT;
    match &args.target.server {
        Some(s) => {
            if let Some(entry) = observed.servers.get(s) {
                next.servers.insert(s.clone(), entry.clone());
            }
        }
        None => next.servers = observed.servers.clone(),
    }
    let before = existing.unwrap_or_else(|| Lock::new(""));
    let changes = crate::guard::review::diff(&before, &next, args.target.server.as_deref());
    if changes.is_empty() {
        println!("{}: nothing changed", path.display());
    } else {
        print!("{changes}");
    }
    next.write(&path)?;
    let counts: usize = next
        .servers
        .values()
        .map(|s| LISTS.iter().map(|l| s.list(*l).len()).sum::<usize>())
        .sum();
    println!(
        "wrote {} ({} servers, {counts} definitions); review it and commit it next to the policy",
        path.display(),
        next.servers.len()
    );
    Ok(ExitCode::SUCCESS)
}

async fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let (policy, path) = load(&args.target)?;
    let locked = Lock::read(&path)?;
    let observed = observe(&policy, &args.target).await?;
    let text = crate::guard::review::diff(&locked, &observed, args.target.server.as_deref());
    if text.is_empty() {
        println!("no differences from {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    print!("{text}");
    println!(
        "approve with: portcullis tools lock --update --policy {}{}",
        args.target.policy.display(),
        args.target
            .server
            .as_ref()
            .map(|s| format!(" --server {s}"))
            .unwrap_or_default()
    );
    Ok(ExitCode::from(1))
}

/// Starts the servers (all, or `--server`), reads what each offers, stops them.
async fn observe(policy: &Policy, target: &Target) -> anyhow::Result<Lock> {
    let firewall = crate::sandbox::firewall::Firewall::transient(&policy.egress, "tools");
    let backends = Arc::new(Backends::new(&target.docker_scope, firewall));
    let (runtime, _) = backends.for_policy(policy).await;
    // The supervisor reports state changes here: why a server went down is kept for the error.
    let (events, mut drain) = mpsc::channel(1024);
    let downs: Arc<std::sync::Mutex<BTreeMap<String, String>>> = Arc::default();
    let sink = downs.clone();
    tokio::spawn(async move {
        while let Some(ev) = drain.recv().await {
            if let crate::upstream::UpstreamEvent::Down { from, reason } = ev {
                if let Ok(mut d) = sink.lock() {
                    d.insert(from.server.to_string(), reason);
                }
            }
        }
    });
    let servers: Vec<_> = policy
        .servers
        .values()
        .filter(|s| target.server.as_ref().is_none_or(|only| *only == s.name))
        .collect();
    let started: Vec<(&policy::Server, Arc<Upstream>)> = servers
        .iter()
        .map(|s| {
            let up = Upstream::start(
                (*s).clone(),
                runtime.clone(),
                events.clone(),
                StartOptions {
                    restart: false,
                    ..StartOptions::default()
                },
            );
            (*s, up)
        })
        .collect();
    let reads = started.iter().map(|(s, up)| read_server(s, up));
    let results = futures_util::future::join_all(reads).await;
    for (_, up) in &started {
        up.shutdown();
    }
    let stops = started.iter().map(|(_, up)| up.stopped());
    let _ = tokio::time::timeout(STOP_WAIT, futures_util::future::join_all(stops)).await;
    backends.shutdown().await;
    let mut lock = Lock::new(&target.policy.display().to_string());
    let mut failed = Vec::new();
    for ((server, _), result) in started.iter().zip(results) {
        match result {
            Ok(entry) => {
                lock.servers.insert(server.name.clone(), entry);
            }
            Err(e) => {
                let why = downs
                    .lock()
                    .ok()
                    .and_then(|d| d.get(&server.name).cloned())
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default();
                failed.push(format!("server `{}`: {e:#}{why}", server.name));
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "could not read every server, so nothing was written:\n  {}",
            failed.join("\n  ")
        );
    }
    Ok(lock)
}

async fn read_server(server: &policy::Server, up: &Arc<Upstream>) -> anyhow::Result<ServerLock> {
    up.ready(server.startup_timeout)
        .await
        .context("it did not start")?;
    let info = up
        .init_info()
        .context("it stopped right after its handshake")?;
    let text = |k: &str| {
        info.server_info
            .get(k)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    let mut entry = ServerLock {
        name: text("name"),
        version: text("version"),
        image: match (&server.runtime, &info.instance.image_id) {
            (policy::Runtime::Docker(spec), Some(id)) => Some(ImageLock {
                reference: spec.image.clone(),
                id: id.clone(),
                repo_digest: info.instance.image_digest.clone().filter(|d| d != id),
            }),
            _ => None,
        },
        ..ServerLock::default()
    };
    let wanted: BTreeMap<List, (&str, &str, &str)> = [
        (List::Tools, ("tools", "tools/list", "tools")),
        (List::Prompts, ("prompts", "prompts/list", "prompts")),
        (
            List::ResourceTemplates,
            ("resources", "resources/templates/list", "resourceTemplates"),
        ),
    ]
    .into_iter()
    .collect();
    for (list, (capability, method, key)) in wanted {
        if !info.has_capability(capability) {
            continue;
        }
        let (items, _ttl) = up
            .fetch_list(method, key, LIST_TIMEOUT)
            .await
            .map_err(|e| anyhow::anyhow!("{method}: {e}"))?;
        for item in &items {
            entry.approve(list, item);
        }
    }
    Ok(entry)
}
