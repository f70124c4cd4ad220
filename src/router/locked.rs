//! The lock file in force (`[gateway] lock`): definitions that differ from it are withheld
//! (`enforce`) or only reported (`warn`), and docker servers must run the locked image.
//!
//! Every list a server gives passes here before the catalog adopts it (see `refresh`), so a
//! change that arrives mid-run through `list_changed` is caught like one at start-up. Each
//! difference (server, list, name, new hash) is audited and counted once. A new lock (a reload)
//! replaces the old one whole and every server's lists are checked again.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::catalog::{Kind, Withheld, KINDS};
use super::Router;
use crate::audit::{AuditEvent, Kind as AuditKind};
use crate::guard::lock::{Check, List, Lock};
use crate::policy::{LockMode, LockSettings};
use crate::sandbox::ImagePin;

/// A lock file read and in force.
pub struct ActiveLock {
    pub lock: Lock,
    pub settings: LockSettings,
    /// The policy it belongs to, for the commands the messages suggest.
    pub policy: String,
}

impl ActiveLock {
    /// Reads `settings.path` (file I/O: call it off the async workers).
    pub fn load(
        settings: &LockSettings,
        policy: &str,
    ) -> Result<ActiveLock, crate::guard::lock::LockError> {
        Ok(ActiveLock {
            lock: Lock::read(&settings.path)?,
            settings: settings.clone(),
            policy: policy.to_owned(),
        })
    }

    /// Images docker servers must run, in `enforce` mode.
    pub(super) fn image_pins(&self) -> HashMap<String, ImagePin> {
        if self.settings.mode != LockMode::Enforce {
            return HashMap::new();
        }
        self.lock
            .servers
            .iter()
            .filter_map(|(name, s)| {
                let image = s.image.as_ref()?;
                Some((
                    name.clone(),
                    ImagePin {
                        digest: image.id.clone(),
                        source: format!("lock file {}", self.settings.path.display()),
                    },
                ))
            })
            .collect()
    }
}

fn list_of(kind: Kind) -> Option<List> {
    match kind {
        Kind::Tools => Some(List::Tools),
        Kind::Prompts => Some(List::Prompts),
        Kind::Templates => Some(List::ResourceTemplates),
        Kind::Resources => None,
    }
}

impl Router {
    /// Puts `lock` in force (`None`: no lock) and checks every server's lists against it again.
    pub fn set_lock(self: &Arc<Self>, lock: Option<ActiveLock>) {
        let same = match (&self.active_lock(), &lock) {
            (None, None) => true,
            (Some(a), Some(b)) => a.lock == b.lock && a.settings == b.settings,
            _ => false,
        };
        if same {
            return;
        }
        let pins = lock
            .as_ref()
            .map(ActiveLock::image_pins)
            .unwrap_or_default();
        self.servers.pins().replace(pins);
        let lock = lock.map(Arc::new);
        match self.lock.write() {
            Ok(mut l) => *l = lock,
            Err(p) => *p.into_inner() = lock,
        }
        for up in self.servers.live() {
            if self.servers.is_catalog_source(up.name(), up.instance()) {
                let me = self.clone();
                tokio::spawn(async move { me.refresh(&up, &KINDS).await });
            }
        }
    }

    /// A server instance is up on image `running` (an id): in `warn` mode it may differ from
    /// the locked one (in `enforce` mode it would not have started); reported once.
    pub(super) fn check_running_image(&self, server: &Arc<str>, running: Option<&str>) {
        let (Some(active), Some(found)) = (self.active_lock(), running) else {
            return;
        };
        let Some(locked) = active
            .lock
            .servers
            .get(server.as_ref())
            .and_then(|s| s.image.as_ref())
        else {
            return;
        };
        if locked.id == found || !self.reported.first(format!("image\0{server}\0{found}")) {
            return;
        }
        crate::metrics::global().lock_mismatch(server, "image", "image");
        tracing::warn!(server = %server, locked = %locked.id, found, mode = active.settings.mode.as_str(), "a server runs an image other than the one in the lock file");
        let detail = json!({
            "list": "image",
            "change": "image",
            "locked": locked.id,
            "found": found,
            "mode": active.settings.mode.as_str(),
            "action": "allowed",
        });
        self.audit.record_later(
            AuditEvent::new(AuditKind::LockMismatch)
                .server(server.to_string())
                .image_digest(found)
                .detail(detail.to_string()),
        );
    }

    fn active_lock(&self) -> Option<Arc<ActiveLock>> {
        match self.lock.read() {
            Ok(l) => l.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Definitions of `items` that differ from the lock: withheld in `enforce` mode (moved to
    /// `withheld`), reported in both modes.
    pub(super) fn lock_definitions(
        &self,
        server: &Arc<str>,
        kind: Kind,
        items: Vec<Map<String, Value>>,
        withheld: &mut Vec<Withheld>,
    ) -> Vec<Map<String, Value>> {
        let (Some(active), Some(list)) = (self.active_lock(), list_of(kind)) else {
            return items;
        };
        let mut kept = Vec::with_capacity(items.len());
        for item in items {
            let check = active.lock.check(server, list, &item);
            if check == Check::Approved {
                kept.push(item);
                continue;
            }
            let id = item
                .get(list.identifier())
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let reason = self.report_lock_mismatch(&active, server, list, &id, &check);
            if active.settings.mode == LockMode::Enforce {
                withheld.push(Withheld { id, reason });
            } else {
                kept.push(item);
            }
        }
        kept
    }

    fn report_lock_mismatch(
        &self,
        active: &ActiveLock,
        server: &Arc<str>,
        list: List,
        id: &str,
        check: &Check,
    ) -> String {
        let file = active.settings.path.display();
        let (change, locked, found, what) = match check {
            Check::Added { found } => {
                let what = if active.lock.servers.contains_key(server.as_ref()) {
                    format!(
                        "is not in the approved definitions in {file} (added since it was written)"
                    )
                } else {
                    format!("is not approved: server `{server}` is not in the lock file {file}")
                };
                ("added", None, found.clone(), what)
            }
            Check::Changed {
                locked,
                found,
                members,
            } => (
                "changed",
                Some(locked.clone()),
                found.clone(),
                format!(
                    "differs from the approved definition in {file} (changed: {})",
                    members.join(", ")
                ),
            ),
            Check::Approved => ("approved", None, String::new(), String::new()),
        };
        let enforce = active.settings.mode == LockMode::Enforce;
        let reason = format!(
            "{} `{id}` of server `{server}` {what}; {}review it with `portcullis tools diff --policy {policy} --server {server}` and approve it with `portcullis tools lock --update --policy {policy} --server {server}`, then reload the gateway (SIGHUP)",
            list.noun(),
            if enforce { "it is withheld until approved: " } else { "" },
            policy = active.policy,
        );
        let key = format!("lock\0{server}\0{}\0{id}\0{found}", list.lock_key());
        if self.reported.first(key) {
            crate::metrics::global().lock_mismatch(server, list.lock_key(), change);
            tracing::warn!(server = %server, list = list.lock_key(), item = id, change, mode = active.settings.mode.as_str(), "{reason}");
            let detail = json!({
                "list": list.lock_key(),
                "change": change,
                "locked": locked,
                "found": found,
                "mode": active.settings.mode.as_str(),
                "action": if enforce { "withheld" } else { "allowed" },
            });
            self.audit.record_later(
                AuditEvent::new(AuditKind::LockMismatch)
                    .server(server.to_string())
                    .tool(id)
                    .detail(detail.to_string()),
            );
        }
        reason
    }
}
