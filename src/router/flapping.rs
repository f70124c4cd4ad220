//! Making a server whose lists keep changing visible: more than `unstable_list_changes`
//! list-change notifications from one server within `unstable_window` give one
//! `catalog_unstable` audit record (server; `detail` = `{"count", "lists", "limit",
//! "window_ms"}`), one warning in the log and one count in
//! `portcullis_catalog_unstable_total`, written when the window ends.
//!
//! A window opens at the first change after the previous one closed. One record per window,
//! whatever the server sends, so a storm cannot flood the audit log either. The count is of
//! notifications received, changed lists or not: an unchanging list announced thousands of
//! times is as suspicious as a flapping one.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;

use super::Router;
use crate::audit::{AuditEvent, Kind};

struct Window {
    start: Instant,
    count: u64,
    lists: BTreeMap<&'static str, u64>,
    /// Over the limit; the report at the window's end is scheduled.
    reported: bool,
}

/// What one window of one server saw.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    count: u64,
    lists: BTreeMap<&'static str, u64>,
}

#[derive(Default)]
pub(super) struct Flapping {
    windows: Mutex<HashMap<Arc<str>, Window>>,
}

impl Flapping {
    /// Counts one change of `list` at `server`. Returns when the window that just went over
    /// `limit` ends (and its start, which names it), the first time it does.
    fn note(
        &self,
        server: &Arc<str>,
        list: &'static str,
        now: Instant,
        limit: u64,
        window: Duration,
    ) -> Option<(Instant, Instant)> {
        let mut windows = self.windows.lock().ok()?;
        let fresh = || Window {
            start: now,
            count: 0,
            lists: BTreeMap::new(),
            reported: false,
        };
        let w = windows.entry(server.clone()).or_insert_with(fresh);
        // A window being reported stays open until its report takes it (a moment late at
        // most), so that no change goes uncounted.
        if !w.reported && now >= w.start + window {
            *w = fresh();
        }
        w.count += 1;
        *w.lists.entry(list).or_default() += 1;
        if !w.reported && w.count > limit {
            w.reported = true;
            return Some((w.start + window, w.start));
        }
        None
    }

    /// Closes the window of `server` that started at `start` and returns what it saw.
    fn close(&self, server: &str, start: Instant) -> Option<Report> {
        let mut windows = self.windows.lock().ok()?;
        if windows.get(server).is_none_or(|w| w.start != start) {
            return None;
        }
        windows.remove(server).map(|w| Report {
            count: w.count,
            lists: w.lists,
        })
    }
}

impl Router {
    /// Counts a list change of `server` towards its unstable window, and schedules the window's
    /// report when it goes over the limit.
    pub(super) fn note_list_change(self: &Arc<Self>, server: &Arc<str>, list: &'static str) {
        let lc = self.settings().list_changes;
        let Some((end, start)) =
            self.flapping
                .note(server, list, Instant::now(), lc.unstable_after, lc.window)
        else {
            return;
        };
        let me = self.clone();
        let server = server.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(end).await;
            let Some(report) = me.flapping.close(&server, start) else {
                return;
            };
            tracing::warn!(
                server = %server,
                count = report.count,
                window = ?lc.window,
                "server `{server}` sent {} list changes within {:?} (more than unstable_list_changes = {}); clients hear of them at most once per list_changed_interval",
                report.count,
                lc.window,
                lc.unstable_after
            );
            crate::metrics::global().catalog_unstable(&server);
            let detail = json!({
                "count": report.count,
                "lists": report.lists,
                "limit": lc.unstable_after,
                "window_ms": u64::try_from(lc.window.as_millis()).unwrap_or(u64::MAX),
            });
            me.audit.record_later(
                AuditEvent::new(Kind::CatalogUnstable)
                    .server(server.to_string())
                    .detail(detail.to_string()),
            );
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(60);

    #[test]
    fn one_report_per_window_over_the_limit_with_every_change_counted() {
        let f = Flapping::default();
        let s: Arc<str> = Arc::from("storm");
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut due = Vec::new();
        for i in 0..500u64 {
            let list = if i % 2 == 0 { "tools" } else { "prompts" };
            if let Some(d) = f.note(&s, list, at(i), 100, W) {
                due.push(d);
            }
        }
        assert_eq!(
            due,
            vec![(t0 + W, t0)],
            "reported once, at the window's end"
        );
        // Late changes still count towards the window being reported.
        f.note(&s, "tools", t0 + W + Duration::from_millis(5), 100, W);
        assert_eq!(
            f.close(&s, t0 + Duration::from_secs(1)),
            None,
            "not that window"
        );
        let r = f.close(&s, t0).unwrap();
        assert_eq!(r.count, 501);
        assert_eq!(r.lists["tools"], 251);
        assert_eq!(r.lists["prompts"], 250);
        // The next change opens a new window.
        let t1 = t0 + W * 2;
        assert_eq!(f.note(&s, "tools", t1, 0, W), Some((t1 + W, t1)));
    }

    #[test]
    fn changes_under_the_limit_or_spread_over_windows_are_not_reported() {
        let f = Flapping::default();
        let s: Arc<str> = Arc::from("calm");
        let t0 = Instant::now();
        for i in 0..300u64 {
            // 300 changes, one every second: five windows of 60.
            assert_eq!(
                f.note(&s, "tools", t0 + Duration::from_secs(i), 60, W),
                None
            );
        }
    }
}
