//! Applying a reloaded policy to the running router, and telling each session what changed in
//! what it sees.

use std::sync::Arc;
use std::time::Duration;

use super::catalog::{Aggregate, Kind};
use super::{catalog_layout, notification_bytes, Router, Settings};
use crate::access::{Clients, Target};
use crate::mcp::methods;
use crate::policy::diff::ServerChanges;
use crate::policy::Policy;
use crate::sandbox::Runtime;

/// The longest a replaced server's calls in flight may keep it running: its successor starts
/// only after it stops, and calls to the server wait for the successor meanwhile.
const RESTART_DRAIN: Duration = Duration::from_secs(10);

impl Router {
    /// Applies the router's part of a reloaded policy: settings, servers (started, stopped or
    /// replaced), the catalog's naming and filters. `before` is the client table that was in
    /// force until now; sessions whose view of the lists changed under it are notified.
    /// `runtime`, when given, is what servers started from now on run on.
    pub fn reload(
        &self,
        policy: &Policy,
        changes: &ServerChanges,
        runtime: Option<Arc<dyn Runtime>>,
        before: &Clients,
    ) {
        let catalog_before = self.catalog.snapshot();
        let old = self.settings();
        let next = Arc::new(Settings::of(policy));
        match self.settings.write() {
            Ok(mut s) => *s = next,
            Err(p) => *p.into_inner() = next,
        }
        // A removed server's calls may run their course; a replaced one's are cut shorter.
        let timeout = |server: &str| {
            old.server_timeouts
                .get(server)
                .copied()
                .unwrap_or(old.request_timeout)
        };
        let drain = |server: &str| {
            if changes.removed.iter().any(|r| r == server) {
                timeout(server)
            } else {
                timeout(server).min(RESTART_DRAIN)
            }
        };
        for retiring in self.servers.replace(policy, changes, runtime, &drain) {
            tokio::spawn(retiring);
        }
        let (prefix, filters) = catalog_layout(policy);
        self.catalog.reconfigure(prefix, filters, &changes.removed);
        if let Ok(mut all) = self.instructions.lock() {
            for gone in &changes.removed {
                all.remove(gone.as_str());
            }
        }
        for gone in &changes.removed {
            self.mark_settled(gone);
            if let Ok(mut locks) = self.refresh_locks.lock() {
                locks.remove(gone.as_str());
            }
        }
        self.announce(&catalog_before, before);
    }

    /// Sends `notifications/*/list_changed` to every session whose lists differ between
    /// `before` (seen through `rules_before`) and the catalog and client rules in force now,
    /// paced per session (see `debounce`). Sessions of one client see the same lists, so each
    /// client is compared once.
    pub(super) fn announce(&self, before: &Aggregate, rules_before: &Clients) {
        let after = self.catalog.snapshot();
        let rules_after = self.access.clients();
        for (client, sessions) in self.sessions.by_client() {
            let (was, is) = (rules_before.rules(&client), rules_after.rules(&client));
            let saw = |t: &Target| was.allows(t);
            let sees = |t: &Target| is.allows(t);
            let differs = |kind| !before.same_view(&after, kind, &saw, &sees);
            let mut changed = Vec::new();
            if differs(Kind::Tools) {
                changed.push(methods::TOOLS_LIST_CHANGED);
            }
            if differs(Kind::Prompts) {
                changed.push(methods::PROMPTS_LIST_CHANGED);
            }
            if differs(Kind::Resources) || differs(Kind::Templates) {
                changed.push(methods::RESOURCES_LIST_CHANGED);
            }
            for method in changed {
                tracing::debug!(%client, sessions = sessions.len(), method, "list changed");
                let message = notification_bytes(method, None);
                for s in &sessions {
                    self.tell(&s.info.key, method, "", message.clone());
                }
            }
        }
    }
}
