//! Process-wide counters, gauges and latency histograms, rendered in the Prometheus text format
//! on `/metrics`.
//!
//! A leaf module: any layer records into it, only the downstream layer renders it. Label sets
//! come from the policy (servers, tools, clients) and from a fixed list of outcomes, so the
//! number of series is bounded by the configuration, not by traffic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Series per metric before new label sets are folded into `other`, a guard against label
/// values that were not meant to come from traffic.
const MAX_SERIES: usize = 10_000;

type Labels = Vec<(&'static str, String)>;

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

#[derive(Default)]
struct Family<T> {
    help: &'static str,
    series: RwLock<BTreeMap<Labels, Arc<T>>>,
}

impl<T: Default> Family<T> {
    fn get(&self, labels: Labels) -> Arc<T> {
        if let Some(v) = self
            .series
            .read()
            .ok()
            .and_then(|m| m.get(&labels).cloned())
        {
            return v;
        }
        let Ok(mut m) = self.series.write() else {
            return Arc::new(T::default());
        };
        let labels = if m.len() >= MAX_SERIES && !m.contains_key(&labels) {
            labels
                .into_iter()
                .map(|(k, _)| (k, "other".to_owned()))
                .collect()
        } else {
            labels
        };
        m.entry(labels).or_default().clone()
    }
}

#[derive(Default)]
pub struct Metrics {
    calls: Family<AtomicU64>,
    call_seconds: Family<Histogram>,
    refusals: Family<AtomicU64>,
    upstream_starts: Family<AtomicU64>,
    upstream_up: Family<AtomicI64>,
    sessions: Family<AtomicI64>,
    client_sessions: Family<AtomicI64>,
    calls_queued: Family<AtomicI64>,
    sessions_expired: Family<AtomicU64>,
    server_stderr: Family<AtomicU64>,
    egress_denied: Family<AtomicU64>,
    egress_dns: Family<AtomicU64>,
    egress_protection: Family<AtomicI64>,
    audit_queue: Family<AtomicI64>,
    audit_fsync_seconds: Family<Histogram>,
    stream_dropped: Family<AtomicU64>,
    stream_drop_warnings: Family<AtomicU64>,
    list_changed_received: Family<AtomicU64>,
    list_fetches: Family<AtomicU64>,
    list_changed_sent: Family<AtomicU64>,
    catalog_unstable: Family<AtomicU64>,
    sanitized: Family<AtomicU64>,
    secret_echo: Family<AtomicU64>,
    lock_mismatch: Family<AtomicU64>,
}

pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics {
        calls: family("Calls forwarded to servers, by server, tool and outcome."),
        call_seconds: family("Latency of calls forwarded to servers, as seen by the gateway."),
        refusals: family("Requests refused by the gateway, by reason (unauthenticated, forbidden, rate_limited, busy)."),
        upstream_starts: family("Server instances started (processes or containers)."),
        upstream_up: family("Whether a shared server instance is up (1) or not (0)."),
        sessions: family("Open client sessions."),
        client_sessions: family("Open sessions by client (all anonymous callers are the client `anonymous`)."),
        calls_queued: family("Calls waiting for a call slot of a server (max_in_flight), by server and client."),
        server_stderr: family("Lines servers wrote on stderr, by server and outcome (logged, or suppressed beyond server_log_rate)."),
        sessions_expired: family("Client sessions closed by the gateway, by reason (idle: no request for session_idle_timeout; unused: only initialize and lists, then nothing for unused_session_timeout; evicted: closed while idle to make room for another client's session when max_sessions was reached)."),
        egress_denied: family("Egress attempts denied by the firewall, by server."),
        egress_dns: family("Allowed DNS questions from sandboxes, by server and outcome (cached: answered from the server's cache; forwarded: asked upstream; over_budget: refused beyond the server's dns_rate)."),
        egress_protection: family("How the egress table is protected: 1 for the mode in force (owner: created with NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST, nobody else can change it; watch: the kernel lacks the flags, changes are undone by the read-back watch)."),
        audit_queue: family("Audit records waiting to be written."),
        audit_fsync_seconds: family("Latency of audit log fsyncs."),
        stream_dropped: family("Notifications dropped from a client's resumption buffer before it read them, by session (the audit log's session digest) and the server that sent them (`gateway` for the gateway's own)."),
        stream_drop_warnings: family("Warnings sent to clients that notifications were dropped from their stream (one per burst), by session."),
        list_changed_received: family("List-change notifications received from servers, by server and list."),
        list_fetches: family("Lists fetched whole from servers (at start and after changes), by server and list."),
        list_changed_sent: family("List-change and resource-update notifications sent to client sessions, by list."),
        catalog_unstable: family("Windows in which a server sent more list changes than `unstable_list_changes` (each audited as catalog_unstable)."),
        sanitized: family("Hidden characters removed (or refused) in what servers sent, by server, place (definition, result) and class (ansi, zero_width, bidi, tags)."),
        secret_echo: family("Answers that echoed a secret the gateway injected (redacted before release), by server."),
        lock_mismatch: family("Definitions that differ from the lock file (each counted once), images that differ from it or from a pinned digest (each refused start, or once in warn mode), by server, list and change (added, changed, image)."),
    })
}

fn family<T>(help: &'static str) -> Family<T> {
    Family {
        help,
        series: RwLock::new(BTreeMap::new()),
    }
}

fn observe(h: &Histogram, d: Duration) {
    let secs = d.as_secs_f64();
    for (i, b) in BUCKETS.iter().enumerate() {
        if secs <= *b {
            h.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
    h.count.fetch_add(1, Ordering::Relaxed);
    h.sum_us.fetch_add(
        u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

impl Metrics {
    pub fn call(&self, server: &str, tool: &str, outcome: &str, latency: Duration) {
        self.calls
            .get(vec![
                ("server", server.to_owned()),
                ("tool", tool.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .fetch_add(1, Ordering::Relaxed);
        observe(
            &self.call_seconds.get(vec![("server", server.to_owned())]),
            latency,
        );
    }

    pub fn refusal(&self, reason: &'static str) {
        self.refusals
            .get(vec![("reason", reason.to_owned())])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_started(&self, server: &str) {
        self.upstream_starts
            .get(vec![("server", server.to_owned())])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn upstream_up(&self, server: &str, up: bool) {
        self.upstream_up
            .get(vec![("server", server.to_owned())])
            .store(i64::from(up), Ordering::Relaxed);
    }

    pub fn sessions(&self, delta: i64) {
        self.sessions
            .get(Vec::new())
            .fetch_add(delta, Ordering::Relaxed);
    }

    /// Sets how many sessions `client` holds open.
    pub fn client_sessions(&self, client: &str, open: usize) {
        self.client_sessions
            .get(vec![("client", client.to_owned())])
            .store(i64::try_from(open).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// Sets how many calls of `client` wait for a call slot of `server`.
    pub fn calls_queued(&self, server: &str, client: &str, queued: usize) {
        self.calls_queued
            .get(vec![
                ("server", server.to_owned()),
                ("client", client.to_owned()),
            ])
            .store(i64::try_from(queued).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    pub fn session_expired(&self, reason: &'static str) {
        self.sessions_expired
            .get(vec![("reason", reason.to_owned())])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn server_stderr(&self, server: &str, outcome: &'static str) {
        self.server_stderr
            .get(vec![
                ("server", server.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn egress_denied(&self, server: &str, n: u64) {
        self.egress_denied
            .get(vec![("server", server.to_owned())])
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn egress_dns(&self, server: &str, outcome: &'static str) {
        self.egress_dns
            .get(vec![
                ("server", server.to_owned()),
                ("outcome", outcome.to_owned()),
            ])
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The egress table's protection mode (`owner` or `watch`) is now `mode`.
    pub fn egress_protection(&self, mode: &str) {
        for m in ["owner", "watch"] {
            self.egress_protection
                .get(vec![("mode", m.to_owned())])
                .store(i64::from(m == mode), Ordering::Relaxed);
        }
    }

    pub fn audit_queue(&self, depth: i64) {
        self.audit_queue
            .get(Vec::new())
            .store(depth, Ordering::Relaxed);
    }

    pub fn audit_fsync(&self, d: Duration) {
        observe(&self.audit_fsync_seconds.get(Vec::new()), d);
    }

    pub fn stream_dropped(&self, session: &str, server: &str) {
        self.stream_dropped
            .get(vec![
                ("session", session.to_owned()),
                ("server", server.to_owned()),
            ])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_drop_warning(&self, session: &str) {
        self.stream_drop_warnings
            .get(vec![("session", session.to_owned())])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn list_changed_received(&self, server: &str, list: &str) {
        self.list_changed_received
            .get(vec![
                ("server", server.to_owned()),
                ("list", list.to_owned()),
            ])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn list_fetched(&self, server: &str, list: &str) {
        self.list_fetches
            .get(vec![
                ("server", server.to_owned()),
                ("list", list.to_owned()),
            ])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn list_changed_sent(&self, list: &str) {
        self.list_changed_sent
            .get(vec![("list", list.to_owned())])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn catalog_unstable(&self, server: &str) {
        self.catalog_unstable
            .get(vec![("server", server.to_owned())])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn sanitized(&self, server: &str, place: &'static str, class: &'static str, n: u64) {
        self.sanitized
            .get(vec![
                ("server", server.to_owned()),
                ("place", place.to_owned()),
                ("class", class.to_owned()),
            ])
            .fetch_add(n, Ordering::Relaxed);
    }

    pub fn secret_echo(&self, server: &str) {
        self.secret_echo
            .get(vec![("server", server.to_owned())])
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn lock_mismatch(&self, server: &str, list: &str, change: &'static str) {
        self.lock_mismatch
            .get(vec![
                ("server", server.to_owned()),
                ("list", list.to_owned()),
                ("change", change.to_owned()),
            ])
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut o = String::with_capacity(4096);
        counter(&mut o, "portcullis_calls_total", &self.calls);
        histogram(
            &mut o,
            "portcullis_call_duration_seconds",
            &self.call_seconds,
        );
        counter(&mut o, "portcullis_refusals_total", &self.refusals);
        counter(
            &mut o,
            "portcullis_upstream_starts_total",
            &self.upstream_starts,
        );
        gauge(&mut o, "portcullis_upstream_up", &self.upstream_up);
        gauge(&mut o, "portcullis_sessions_open", &self.sessions);
        gauge(
            &mut o,
            "portcullis_client_sessions_open",
            &self.client_sessions,
        );
        gauge(&mut o, "portcullis_calls_queued", &self.calls_queued);
        counter(
            &mut o,
            "portcullis_sessions_expired_total",
            &self.sessions_expired,
        );
        counter(
            &mut o,
            "portcullis_server_stderr_lines_total",
            &self.server_stderr,
        );
        counter(
            &mut o,
            "portcullis_egress_denied_total",
            &self.egress_denied,
        );
        counter(
            &mut o,
            "portcullis_egress_dns_questions_total",
            &self.egress_dns,
        );
        gauge(
            &mut o,
            "portcullis_egress_table_protection",
            &self.egress_protection,
        );
        gauge(&mut o, "portcullis_audit_queue_depth", &self.audit_queue);
        histogram(
            &mut o,
            "portcullis_audit_fsync_seconds",
            &self.audit_fsync_seconds,
        );
        counter(
            &mut o,
            "portcullis_stream_notifications_dropped_total",
            &self.stream_dropped,
        );
        counter(
            &mut o,
            "portcullis_stream_drop_warnings_total",
            &self.stream_drop_warnings,
        );
        counter(
            &mut o,
            "portcullis_upstream_list_changed_total",
            &self.list_changed_received,
        );
        counter(
            &mut o,
            "portcullis_upstream_list_fetches_total",
            &self.list_fetches,
        );
        counter(
            &mut o,
            "portcullis_client_list_changed_total",
            &self.list_changed_sent,
        );
        counter(
            &mut o,
            "portcullis_catalog_unstable_total",
            &self.catalog_unstable,
        );
        counter(&mut o, "portcullis_sanitized_total", &self.sanitized);
        counter(&mut o, "portcullis_secret_echo_total", &self.secret_echo);
        counter(
            &mut o,
            "portcullis_lock_mismatch_total",
            &self.lock_mismatch,
        );
        o
    }
}

fn label_text(labels: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(o: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// A value series of a counter or gauge family.
trait Value: Default {
    fn text(&self) -> String;
}

impl Value for AtomicU64 {
    fn text(&self) -> String {
        self.load(Ordering::Relaxed).to_string()
    }
}

impl Value for AtomicI64 {
    fn text(&self) -> String {
        self.load(Ordering::Relaxed).to_string()
    }
}

fn scalar<T: Value>(o: &mut String, name: &str, kind: &str, f: &Family<T>) {
    header(o, name, f.help, kind);
    if let Ok(m) = f.series.read() {
        for (labels, v) in m.iter() {
            let _ = writeln!(o, "{name}{} {}", label_text(labels, None), v.text());
        }
    }
}

fn counter(o: &mut String, name: &str, f: &Family<AtomicU64>) {
    scalar(o, name, "counter", f);
}

fn gauge(o: &mut String, name: &str, f: &Family<AtomicI64>) {
    scalar(o, name, "gauge", f);
}

fn histogram(o: &mut String, name: &str, f: &Family<Histogram>) {
    header(o, name, f.help, "histogram");
    if let Ok(m) = f.series.read() {
        for (labels, h) in m.iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let le = format!("{b}");
                let _ = writeln!(
                    o,
                    "{name}_bucket{} {}",
                    label_text(labels, Some(("le", &le))),
                    h.buckets[i].load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "{name}_bucket{} {count}",
                label_text(labels, Some(("le", "+Inf")))
            );
            let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(o, "{name}_sum{} {sum}", label_text(labels, None));
            let _ = writeln!(o, "{name}_count{} {count}", label_text(labels, None));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics {
            calls: family("c"),
            call_seconds: family("h"),
            ..Metrics::default()
        };
        m.call("git", "git_status", "ok", Duration::from_micros(300));
        m.call("git", "git_status", "ok", Duration::from_millis(2));
        let text = m.render();
        assert!(
            text.contains(
                "portcullis_calls_total{server=\"git\",tool=\"git_status\",outcome=\"ok\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "portcullis_call_duration_seconds_bucket{server=\"git\",le=\"0.0005\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "portcullis_call_duration_seconds_bucket{server=\"git\",le=\"0.0025\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains("portcullis_call_duration_seconds_count{server=\"git\"} 2"),
            "{text}"
        );
    }
}
