//! Loading each server's lists into the catalog: at start, on the server's `list_changed`, and
//! again when a list's freshness (`ttlMs`, which 2026-07-28 servers give) runs out.
//!
//! A list the server also announces changes of is re-read after its `ttlMs` only when that is
//! not zero (zero means "ask again each time", which the announcements make unnecessary); a list
//! without announcements is re-read after its `ttlMs`, but never more often than
//! [`MIN_REFRESH`]. One timer per instance and list at a time; a timer whose instance is gone
//! does nothing.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::catalog::Kind;
use super::{Router, MAX_UPSTREAM_PAGES};
use crate::upstream::{InitInfo, Upstream};

/// The shortest interval at which a list is re-read for its `ttlMs`.
const MIN_REFRESH: Duration = Duration::from_secs(5);
/// The longest: a server's day-long freshness is not trusted for longer than this.
const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Whether the server announces changes of `kind` (`listChanged` in its capabilities).
fn pushes_changes(info: &InitInfo, kind: Kind) -> bool {
    info.capabilities
        .get(kind.capability())
        .and_then(|c| c.get("listChanged"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

impl Router {
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
        if let (Some(text), Ok(mut all)) = (&info.instructions, self.instructions.lock()) {
            all.insert(server.clone(), text.clone());
        }
        let mut changed = false;
        for &kind in kinds {
            let items = if info.has_capability(kind.capability()) {
                match self.fetch_all(up, kind).await {
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
            changed |= self.catalog.set(server, kind, items);
        }
        if changed {
            let rules = self.access.clients();
            self.announce(&before, &rules);
        }
    }

    /// Every page of `kind` at `up`, and the shortest `ttlMs` a page gave (2026-07-28).
    async fn fetch_all(
        &self,
        up: &Upstream,
        kind: Kind,
    ) -> Result<(Vec<Map<String, Value>>, Option<u64>), String> {
        let mut out = Vec::new();
        let mut ttl: Option<u64> = None;
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_UPSTREAM_PAGES {
            let params = cursor
                .as_ref()
                .map(|c| crate::mcp::to_raw(&json!({ "cursor": c })));
            let id = up.next_request_id();
            let outcome = up
                .call(
                    id,
                    kind.list_method(),
                    params,
                    None,
                    self.timeout_for(up.name()),
                )
                .await
                .map_err(|e| e.to_string())?;
            let result = outcome.map_err(|e| format!("server error: {}", e.get()))?;
            let mut page: Map<String, Value> = serde_json::from_str(result.get())
                .map_err(|e| format!("unreadable result: {e}"))?;
            if let Some(t) = page.get("ttlMs").and_then(Value::as_u64) {
                ttl = Some(ttl.map_or(t, |m| m.min(t)));
            }
            if let Some(Value::Array(items)) = page.remove(kind.result_key()) {
                out.extend(items.into_iter().filter_map(|v| match v {
                    Value::Object(m) => Some(m),
                    _ => None,
                }));
            }
            match page.remove("nextCursor") {
                Some(Value::String(c)) if !c.is_empty() => cursor = Some(c),
                _ => return Ok((out, ttl)),
            }
        }
        Err(format!(
            "more than {MAX_UPSTREAM_PAGES} pages; stopped following cursors"
        ))
    }

    /// Re-reads `kind` at `up` once `ttl_ms` has passed (see the module documentation).
    fn refresh_after(self: &Arc<Self>, up: &Arc<Upstream>, kind: Kind, ttl_ms: u64, pushes: bool) {
        if pushes && ttl_ms == 0 {
            return;
        }
        let key = (up.instance(), kind);
        let fresh = self.ttl_timers.lock().is_ok_and(|mut t| t.insert(key));
        if !fresh {
            return;
        }
        let wait = Duration::from_millis(ttl_ms).clamp(MIN_REFRESH, MAX_REFRESH);
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
                router.refresh(&up, &[kind]).await;
            }
        });
    }
}
