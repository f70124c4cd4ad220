//! `serve`'s claim on its instance, before it touches anything: the instance id, its lock in the
//! state directory, and (as root) the egress table that the kernel lets only one live gateway
//! own. A start whose instance is held by a live gateway is refused with who holds it; a start
//! that finds the leftovers of a dead run of its own instance takes them over.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::egress::{netns, ruleset, EgressError, EgressOptions, Names};
use crate::instance::lock::{self, Holder, InstanceLock, LockError};
use crate::instance::InstanceId;
use crate::policy::Policy;
use crate::sandbox::firewall::Firewall;

/// Set to `off` to run the egress table without owner flags, as on a kernel that lacks them
/// (for testing that fallback; it weakens the table's protection).
pub const TABLE_FLAGS_ENV: &str = "PORTCULLIS_EGRESS_TABLE_FLAGS";

/// An instance this process holds, until dropped.
pub struct Held {
    pub id: InstanceId,
    /// The egress service of this instance (started already when running as root).
    pub firewall: Firewall,
    lock: Option<InstanceLock>,
    took_over: Option<String>,
}

impl Held {
    /// Names the bound listener in the lock file, for the message a refused start prints.
    pub fn set_listener(&mut self, url: &str) {
        if let Some(l) = &mut self.lock {
            if let Err(e) = l.set_listener(url) {
                tracing::warn!(path = %l.path().display(), error = %e, "could not record the listener in the instance lock file");
            }
        }
    }

    /// What was taken over from an earlier run of this instance, for the audit log.
    pub fn took_over(&self) -> Option<String> {
        self.took_over.clone()
    }
}

/// Creates the state directory if needed and returns its canonical path.
fn state_dir(dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    dir.canonicalize()
}

/// Resolves, locks and (as root) claims this gateway's instance.
pub async fn hold(policy: &Policy, policy_path: Option<&Path>) -> anyhow::Result<Held> {
    let root = netns::is_root();
    let dir = match state_dir(&policy.gateway.state_dir) {
        Ok(d) => d,
        Err(e) if root => {
            return Err(e).with_context(|| {
                format!(
                    "creating the state directory {} (it holds the instance lock; set --state-dir / [gateway] state_dir to a writable directory)",
                    policy.gateway.state_dir.display()
                )
            })
        }
        Err(e) => {
            tracing::warn!(dir = %policy.gateway.state_dir.display(), error = %e, "cannot create the state directory: the instance is not locked, so a second gateway of this instance would not be detected");
            std::path::absolute(&policy.gateway.state_dir)
                .unwrap_or_else(|_| policy.gateway.state_dir.clone())
        }
    };
    let id = InstanceId::resolve(policy.gateway.instance.as_deref(), &dir)
        .map_err(anyhow::Error::msg)?;
    let holder = Holder {
        pid: std::process::id(),
        instance: id.to_string(),
        listen: None,
        state_dir: dir.display().to_string(),
        audit_dir: policy
            .audit
            .enabled
            .then(|| policy.audit.dir.display().to_string()),
        policy: policy_path.map(|p| p.display().to_string()),
    };
    let lock = match InstanceLock::acquire(&dir, &id, holder.clone()) {
        Ok(l) => Some(l),
        Err(e @ LockError::InUse { .. }) => return Err(e.into()),
        Err(e) if root => return Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "the instance is not locked: a second gateway of this instance would not be detected");
            None
        }
    };
    let options = EgressOptions {
        names: Names::new(id.clone()),
        table_flags: std::env::var(TABLE_FLAGS_ENV).map_or(true, |v| v != "off"),
        comment: lock::comment_for(&holder),
        ..Default::default()
    };
    let firewall = Firewall::with_options(&policy.egress, options);
    let mut took_over = None;
    if root {
        match firewall.claim().await {
            Ok((egress, removed)) => {
                let mut what = Vec::new();
                if let Some(t) = &egress.startup().adopted {
                    what.push(format!("took over {t}"));
                }
                if !removed.is_empty() {
                    what.push(format!(
                        "removed its leftover sandbox namespaces {:?} and interfaces {:?}",
                        removed.namespaces, removed.interfaces
                    ));
                }
                if !what.is_empty() {
                    took_over = Some(format!(
                        "instance {id}: an earlier run ended without cleaning up: {}",
                        what.join("; ")
                    ));
                }
            }
            Err(e @ EgressError::InUse { .. }) => {
                let who = match &e {
                    EgressError::InUse {
                        holder: Some(c), ..
                    } => lock::holder_of_comment(c),
                    _ => None,
                };
                match who {
                    Some(h) => anyhow::bail!("{e}. That gateway: {}", h.describe()),
                    None => anyhow::bail!("{e}"),
                }
            }
            Err(e @ EgressError::NameClash { .. }) => anyhow::bail!("{e}"),
            Err(e) => match ruleset::TableNeed::of(policy) {
                ruleset::TableNeed::Servers(needing) => {
                    tracing::warn!(error = %e, servers = ?needing, "the egress firewall could not start now; these servers' egress rules are in the gateway's own table, and they will not start until it can");
                }
                ruleset::TableNeed::AgentsOnly => {
                    tracing::info!(error = %e, "the gateway's own egress table is not in force, and {}", ruleset::AGENTS_HOLD_THE_RULES);
                }
                ruleset::TableNeed::Nobody => {
                    tracing::debug!(error = %e, "the egress firewall could not start (no server needs it)");
                }
            },
        }
    }
    tracing::info!(instance = %id, state_dir = %dir.display(), "instance held");
    Ok(Held {
        id,
        firewall,
        lock,
        took_over,
    })
}
