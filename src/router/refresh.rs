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
//!
//! A list is also fetched again when the freshness its server gave (`ttlMs`, which 2026-07-28
//! servers give) runs out, through the same coalesced rounds. A list the server also announces
//! changes of is re-read after its `ttlMs` only when that is not zero (zero means "ask again
//! each time", which the announcements make unnecessary); a list without announcements is
//! re-read after its `ttlMs`, but never more often than [`MIN_TTL_REFRESH`]. One timer per
//! instance and list at a time; a timer whose instance is gone does nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::time::Instant;

use super::catalog::{Kind, KINDS};
use super::Router;
use crate::upstream::{InitInfo, Source, Upstream};

/// The shortest interval at which a list is re-read for its `ttlMs`.
const MIN_TTL_REFRESH: Duration = Duration::from_secs(5);
/// The longest: a server's day-long freshness is not trusted for longer than this.
const MAX_TTL_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Whether the server announces changes of `kind` (`listChanged` in its capabilities).
fn pushes_changes(info: &InitInfo, kind: Kind) -> bool {
    info.capabilities
        .get(kind.capability())
        .and_then(|c| c.get("listChanged"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

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
        self.refresh_soon(&from.server, &up, kinds);
    }

    /// Has `kinds` of `server` fetched from `up` in the next round.
    fn refresh_soon(self: &Arc<Self>, server: &Arc<str>, up: &Arc<Upstream>, kinds: &[Kind]) {
        if self.refreshes.mark(server, up, kinds) {
            tokio::spawn(self.clone().refresh_rounds(server.clone()));
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
    pub(super) async fn refresh(self: &Arc<Self>, up: &Arc<Upstream>, kinds: &[Kind]) {
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
        if let Some(text) = &info.instructions {
            let shown = self.sanitize_instructions(server, text);
            if let Ok(mut all) = self.instructions.lock() {
                match shown {
                    Some(t) => all.insert(server.clone(), t),
                    None => all.remove(server),
                };
            }
        }
        let mut changed = false;
        for &kind in kinds {
            let items = if info.has_capability(kind.capability()) {
                crate::metrics::global().list_fetched(server, kind.result_key());
                let fetched = up
                    .fetch_list(
                        kind.list_method(),
                        kind.result_key(),
                        self.timeout_for(server),
                    )
                    .await;
                match fetched {
                    Ok((items, ttl)) => {
                        if let Some(ttl) = ttl {
                            self.refresh_after(up, kind, ttl, pushes_changes(&info, kind));
                        }
                        items
                    }
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
        let mut withheld = Vec::new();
        // The lock judges what the server sent; sanitizing comes after, on what is kept.
        let items = self.lock_definitions(server, kind, items, &mut withheld);
        let items = self.sanitize_definitions(server, kind, items, &mut withheld);
        self.catalog.set(server, kind, items, withheld)
    }

    /// Has `kind` at `up` read again once `ttl_ms` has passed (see the module documentation).
    fn refresh_after(self: &Arc<Self>, up: &Arc<Upstream>, kind: Kind, ttl_ms: u64, pushes: bool) {
        if pushes && ttl_ms == 0 {
            return;
        }
        let key = (up.instance(), kind);
        let fresh = self.ttl_timers.lock().is_ok_and(|mut t| t.insert(key));
        if !fresh {
            return;
        }
        let wait = Duration::from_millis(ttl_ms).clamp(MIN_TTL_REFRESH, MAX_TTL_REFRESH);
        let router: Weak<Router> = Arc::downgrade(self);
        let up: Weak<Upstream> = Arc::downgrade(up);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let Some(router) = router.upgrade() else {
                return;
            };
            if let Ok(mut t) = router.ttl_timers.lock() {
                t.remove(&key);
            }
            if let Some(up) = up.upgrade() {
                tracing::debug!(server = %up.name(), list = kind.list_method(), "list freshness ran out; reading it again");
                router.refresh_soon(up.name(), &up, &[kind]);
            }
        });
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
