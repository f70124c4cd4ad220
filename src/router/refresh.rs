//! Loading servers' lists into the catalog, and coalescing the refreshes their `list_changed`
//! notifications ask for.
//!
//! Contract: per server, at most one refresh round runs at a time, and rounds start at least
//! `list_changed_interval` apart (the first at once). A `list_changed` that arrives meanwhile
//! only marks its lists dirty; the next round fetches each dirty list once. So whatever a server
//! sends, the gateway asks it for each list at most about once per interval, and the last change
//! is always followed by a fetch that sees it. A round compares the catalog before and after
//! and tells the sessions whose view changed (paced again per session, see `debounce`).
//!
//! Every list the catalog takes from a server, at start-up, after a change or a restart, goes
//! through [`Router::adopt`]: the one place to check a list before clients can see it (the
//! tool-definition lock hooks in there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::catalog::{Kind, KINDS};
use super::Router;
use crate::upstream::{Source, Upstream};

/// Pages fetched from one server for one list before the gateway stops following cursors.
const MAX_UPSTREAM_PAGES: usize = 1000;

/// The lists of one server waiting for the next round, and the instance to ask.
struct Dirty<U> {
    kinds: [bool; 4],
    up: U,
}

/// Servers with a refresh worker running; what each has still to fetch. `U` is the instance
/// to ask (generic so that the bookkeeping can be tested alone).
pub(super) struct Refreshes<U = Arc<Upstream>> {
    running: Mutex<HashMap<Arc<str>, Dirty<U>>>,
}

impl<U> Default for Refreshes<U> {
    fn default() -> Self {
        Refreshes {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<U: Clone> Refreshes<U> {
    /// Marks `kinds` of `server` dirty, to be fetched from `up`. True when no worker runs for
    /// that server, so the caller must start one.
    fn mark(&self, server: &Arc<str>, up: &U, kinds: &[Kind]) -> bool {
        let Ok(mut running) = self.running.lock() else {
            return false;
        };
        let mut start = false;
        let d = running.entry(server.clone()).or_insert_with(|| {
            start = true;
            Dirty {
                kinds: [false; 4],
                up: up.clone(),
            }
        });
        for &k in kinds {
            d.kinds[k as usize] = true;
        }
        // The instance that spoke last is the one whose lists are wanted.
        d.up = up.clone();
        start
    }

    /// The lists to fetch in the next round, clearing them; `None` ends the worker (and the
    /// next mark starts a new one).
    fn take(&self, server: &str) -> Option<(U, Vec<Kind>)> {
        let mut running = self.running.lock().ok()?;
        let d = running.get_mut(server)?;
        let kinds: Vec<Kind> = KINDS
            .into_iter()
            .filter(|k| std::mem::take(&mut d.kinds[*k as usize]))
            .collect();
        if kinds.is_empty() {
            running.remove(server);
            return None;
        }
        Some((d.up.clone(), kinds))
    }
}

impl Router {
    /// A server said that one of its lists changed (`method`): count it, and have its lists
    /// fetched again, coalesced.
    pub(super) fn list_changed(self: &Arc<Self>, from: &Source, method: &str, kinds: &[Kind]) {
        let list = kinds.first().map_or("", |k| k.result_key());
        crate::metrics::global().list_changed_received(&from.server, list);
        self.note_list_change(&from.server, list);
        let Some(up) = self.servers.instance(from.instance) else {
            return;
        };
        tracing::trace!(server = %from.server, method, "list changed");
        if self.refreshes.mark(&from.server, &up, kinds) {
            tokio::spawn(self.clone().refresh_rounds(from.server.clone()));
        }
    }

    async fn refresh_rounds(self: Arc<Self>, server: Arc<str>) {
        let mut last: Option<Instant> = None;
        loop {
            if let Some(t) = last {
                tokio::time::sleep_until(t + self.settings().list_changes.interval).await;
            }
            let Some((up, kinds)) = self.refreshes.take(&server) else {
                return;
            };
            last = Some(Instant::now());
            self.refresh(&up, &kinds).await;
        }
    }

    /// Reloads `kinds` from `server` and tells the sessions whose view changed.
    pub(super) async fn refresh(&self, up: &Arc<Upstream>, kinds: &[Kind]) {
        let server = up.name();
        let lock = self
            .refresh_locks
            .lock()
            .ok()
            .map(|mut m| m.entry(server.clone()).or_default().clone());
        let _serial = match &lock {
            Some(l) => Some(l.lock().await),
            None => None,
        };
        let before = self.catalog.snapshot();
        let Some(info) = up.init_info() else {
            return;
        };
        if let (Some(text), Ok(mut all)) = (&info.instructions, self.instructions.lock()) {
            all.insert(server.clone(), text.clone());
        }
        let mut changed = false;
        for &kind in kinds {
            let items = if info.has_capability(kind.capability()) {
                crate::metrics::global().list_fetched(server, kind.result_key());
                match self.fetch_all(up, kind).await {
                    Ok(items) => items,
                    Err(e) => {
                        tracing::warn!(server = %server, list = kind.list_method(), error = %e, "could not load list");
                        continue;
                    }
                }
            } else {
                Vec::new()
            };
            changed |= self.adopt(server, kind, items);
        }
        if changed {
            let rules = self.access.clients();
            self.announce(&before, &rules);
        }
    }

    /// Puts a list fetched from `server` into the catalog; returns whether what clients see
    /// changed.
    ///
    /// Every list change reaches the catalog through here, one call per list fetched (however
    /// many notifications a storm sent, a list that changed is fetched and passes here at
    /// least once after its last change). The tool-definition lock checks `items` here before
    /// they are adopted.
    fn adopt(&self, server: &Arc<str>, kind: Kind, items: Vec<Map<String, Value>>) -> bool {
        self.catalog.set(server, kind, items)
    }

    async fn fetch_all(
        &self,
        up: &Upstream,
        kind: Kind,
    ) -> Result<Vec<Map<String, Value>>, String> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_UPSTREAM_PAGES {
            let params = cursor
                .as_ref()
                .map(|c| crate::mcp::to_raw(&json!({ "cursor": c })));
            let id = up.next_request_id();
            let outcome = up
                .call(id, kind.list_method(), params, self.timeout_for(up.name()))
                .await
                .map_err(|e| e.to_string())?;
            let result = outcome.map_err(|e| format!("server error: {}", e.get()))?;
            let mut page: Map<String, Value> = serde_json::from_str(result.get())
                .map_err(|e| format!("unreadable result: {e}"))?;
            if let Some(Value::Array(items)) = page.remove(kind.result_key()) {
                out.extend(items.into_iter().filter_map(|v| match v {
                    Value::Object(m) => Some(m),
                    _ => None,
                }));
            }
            match page.remove("nextCursor") {
                Some(Value::String(c)) if !c.is_empty() => cursor = Some(c),
                _ => return Ok(out),
            }
        }
        Err(format!(
            "more than {MAX_UPSTREAM_PAGES} pages; stopped following cursors"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_leaves_one_round_pending_with_each_list_once() {
        let r: Refreshes<u32> = Refreshes::default();
        let s: Arc<str> = Arc::from("storm");
        assert!(
            r.mark(&s, &1, &[Kind::Tools]),
            "the first change starts a worker"
        );
        assert_eq!(r.take("storm"), Some((1, vec![Kind::Tools])));
        // 50,000 changes while that round runs: no new worker, one round pending.
        for i in 0..50_000u32 {
            let kinds: &[Kind] = if i % 2 == 0 {
                &[Kind::Tools]
            } else {
                &[Kind::Resources, Kind::Templates]
            };
            assert!(!r.mark(&s, &(i + 2), kinds));
        }
        assert_eq!(
            r.take("storm"),
            Some((50_001, vec![Kind::Tools, Kind::Resources, Kind::Templates])),
            "each dirty list once, from the instance that spoke last"
        );
        assert_eq!(r.take("storm"), None, "nothing left: the worker ends");
        assert!(
            r.mark(&s, &9, &[Kind::Prompts]),
            "the next change starts a new one"
        );
    }

    #[test]
    fn servers_are_independent() {
        let r: Refreshes<u32> = Refreshes::default();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert!(r.mark(&a, &1, &[Kind::Tools]));
        assert!(r.mark(&b, &2, &[Kind::Tools]));
        assert_eq!(r.take("b"), Some((2, vec![Kind::Tools])));
        assert_eq!(r.take("a"), Some((1, vec![Kind::Tools])));
    }
}
