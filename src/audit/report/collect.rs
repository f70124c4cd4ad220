//! Counting what a log says happened: one pass over the records in the report's window.
//! Everything here is arithmetic on parsed records; nothing is rendered.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::audit::record::parse_ts_ms;

/// How many time buckets the charts use (the window is divided evenly).
pub const BUCKETS: usize = 24;
/// How many refusals, reloads and other events are listed one by one (the counts are complete).
pub const LISTED: usize = 200;

/// Counts of one record population by a key (client, server, tool, reason...), in key order.
pub type Counts = BTreeMap<String, u64>;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Records in the window (every kind).
    pub records: u64,
    pub calls: u64,
    pub results_ok: u64,
    pub results_error: u64,
    pub refused: u64,
    pub egress_denied: u64,
    pub too_large: u64,
    pub policy_reloads: u64,
}

/// One refused request, as the `denied` record (or a `too_large` result) describes it.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    pub seq: u64,
    pub ts: String,
    pub reason: String,
    pub client: String,
    pub method: String,
    pub server: String,
    /// The tool, prompt, resource or template the request named.
    pub item: String,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EgressDenial {
    pub seq: u64,
    pub ts: String,
    pub server: String,
    pub outcome: String,
    pub detail: String,
}

/// Denied packets of one server to one destination, summed over the window's `egress_denied`
/// records (`dest` is `other` for what the records summed past their cap; `proto` `dns` for a
/// refused name).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EgressDestRow {
    pub server: String,
    pub dest: String,
    pub proto: String,
    pub port: Option<u16>,
    pub packets: u64,
}

/// Distinct (server, destination) rows a report keeps; later new ones are summed into the
/// server's `other` row, so a log full of sprayed destinations cannot blow up the report.
pub const DEST_ROWS: usize = 4096;

/// A `policy_load` or `policy_reload` record, its `detail` JSON read for hashes and serials.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyChange {
    pub seq: u64,
    pub ts: String,
    pub kind: String,
    pub outcome: String,
    pub trigger: String,
    pub sha256_from: String,
    pub sha256_to: String,
    pub serial_from: Option<u64>,
    pub serial_to: Option<u64>,
    /// The rejection's reason, or the load's description.
    pub detail: String,
}

/// Calls, failures and latency of one `server/tool`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ToolStats {
    pub calls: u64,
    pub errors: u64,
    pub latency_max_us: u64,
    pub latency_p50_us: u64,
    pub latency_p95_us: u64,
    #[serde(skip)]
    latencies: Vec<u64>,
}

/// Counts per time bucket, for each key of a dimension.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Series {
    /// `key -> count per bucket` (each vector has [`BUCKETS`] entries).
    pub by_key: BTreeMap<String, Vec<u64>>,
}

impl Series {
    fn add(&mut self, key: &str, bucket: usize) {
        let v = self
            .by_key
            .entry(key.to_owned())
            .or_insert_with(|| vec![0; BUCKETS]);
        if let Some(n) = v.get_mut(bucket) {
            *n += 1;
        }
    }
}

/// Everything counted from the window's records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Activity {
    pub totals: Totals,
    pub records_by_kind: Counts,
    pub calls_by_client: Counts,
    pub calls_by_server: Counts,
    pub calls_by_tool: Counts,
    /// Start of each bucket (RFC 3339) and the bucket width.
    pub bucket_starts: Vec<String>,
    pub bucket_ms: u64,
    pub calls_over_time_by_client: Series,
    pub calls_over_time_by_server: Series,
    pub calls_over_time_by_tool: Series,
    pub refusals_over_time: Vec<u64>,
    pub refusals_by_reason: Counts,
    pub refusals: Vec<Refusal>,
    pub egress_denied_by_server: Counts,
    /// Dropped packets per server (the counters' totals; old records count too).
    pub egress_packets_by_server: Counts,
    /// Denials by server and destination, largest first within each server.
    pub egress_denied_by_destination: Vec<EgressDestRow>,
    #[serde(skip)]
    dest_rows: BTreeMap<(String, String, String, Option<u16>), u64>,
    pub egress_denials: Vec<EgressDenial>,
    pub policy_changes: Vec<PolicyChange>,
    /// `server/tool -> stats`.
    pub tools: BTreeMap<String, ToolStats>,
    /// Other events worth an auditor's eye: catalog_unstable, sanitized, lock_mismatch,
    /// tamper, recovery, retention, key_rotation (count by kind).
    pub notable: Counts,
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// The reason a `denied` record was written, from its outcome and JSON-RPC error code.
pub fn refusal_reason(v: &Value) -> String {
    match s(v, "outcome") {
        "denied_auth" => "unauthenticated".into(),
        "rate_limited" => "rate_limited".into(),
        "error" => match v.get("error_code").and_then(Value::as_i64) {
            Some(-32013) => "not_allowed".into(),
            Some(-32020) => "header_mismatch".into(),
            Some(-32030) => "withheld (pin or lock mismatch)".into(),
            Some(-32602) => "token_refused".into(),
            Some(-32012) | Some(-32015) => "over_capacity".into(),
            Some(c) => format!("error {c}"),
            None => "error".into(),
        },
        "" => "unspecified".into(),
        other => other.to_owned(),
    }
}

/// The item a record names: its tool, else its other item.
fn item(v: &Value) -> &str {
    match s(v, "tool") {
        "" => s(v, "item"),
        t => t,
    }
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = (sorted.len() * p).div_ceil(100).saturating_sub(1);
    sorted[i.min(sorted.len() - 1)]
}

/// Counts records with `from_ms <= ts < to_ms`.
pub struct Collector {
    from_ms: u64,
    to_ms: u64,
    pub activity: Activity,
}

impl Collector {
    pub fn new(from_ms: u64, to_ms: u64) -> Collector {
        let to_ms = to_ms.max(from_ms + 1);
        let width = (to_ms - from_ms).div_ceil(BUCKETS as u64).max(1);
        let activity = Activity {
            bucket_ms: width,
            bucket_starts: (0..BUCKETS as u64)
                .map(|i| ms_to_ts(from_ms.saturating_add(i * width)))
                .collect(),
            refusals_over_time: vec![0; BUCKETS],
            ..Activity::default()
        };
        Collector {
            from_ms,
            to_ms,
            activity,
        }
    }

    /// Counts one record if it lies in the window; records without a valid `ts` are skipped
    /// (verification reports them).
    pub fn add(&mut self, v: &Value) {
        let Some(ms) = parse_ts_ms(s(v, "ts")) else {
            return;
        };
        if ms < self.from_ms || ms >= self.to_ms {
            return;
        }
        let bucket = usize::try_from((ms - self.from_ms) / self.activity.bucket_ms)
            .unwrap_or(usize::MAX)
            .min(BUCKETS - 1);
        let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let ts = s(v, "ts").to_owned();
        let a = &mut self.activity;
        a.totals.records += 1;
        let kind = s(v, "kind");
        *a.records_by_kind.entry(kind.to_owned()).or_default() += 1;
        match kind {
            "call" => {
                a.totals.calls += 1;
                let (client, server) = (s(v, "client"), s(v, "server"));
                let tool = format!("{server}/{}", item(v));
                *a.calls_by_client.entry(client.to_owned()).or_default() += 1;
                *a.calls_by_server.entry(server.to_owned()).or_default() += 1;
                *a.calls_by_tool.entry(tool.clone()).or_default() += 1;
                a.calls_over_time_by_client.add(client, bucket);
                a.calls_over_time_by_server.add(server, bucket);
                a.calls_over_time_by_tool.add(&tool, bucket);
                a.tools.entry(tool).or_default().calls += 1;
            }
            "result" => {
                let tool = format!("{}/{}", s(v, "server"), item(v));
                let stats = a.tools.entry(tool).or_default();
                if let Some(l) = v.get("latency_us").and_then(Value::as_u64) {
                    stats.latencies.push(l);
                }
                match s(v, "outcome") {
                    "ok" => a.totals.results_ok += 1,
                    "too_large" => {
                        a.totals.too_large += 1;
                        a.totals.results_error += 1;
                        stats.errors += 1;
                        a.refusals_over_time[bucket] += 1;
                        refused(a, v, seq, ts, "too_large".into());
                    }
                    _ => {
                        a.totals.results_error += 1;
                        stats.errors += 1;
                    }
                }
            }
            "denied" => {
                a.refusals_over_time[bucket] += 1;
                refused(a, v, seq, ts, refusal_reason(v));
            }
            "egress_denied" => {
                a.totals.egress_denied += 1;
                *a.egress_denied_by_server
                    .entry(s(v, "server").to_owned())
                    .or_default() += 1;
                egress_destinations(a, v);
                if a.egress_denials.len() < LISTED {
                    a.egress_denials.push(EgressDenial {
                        seq,
                        ts,
                        server: s(v, "server").into(),
                        outcome: s(v, "outcome").into(),
                        detail: s(v, "detail").into(),
                    });
                }
            }
            "policy_load" | "policy_reload" => {
                if kind == "policy_reload" {
                    a.totals.policy_reloads += 1;
                }
                if a.policy_changes.len() < LISTED {
                    a.policy_changes.push(policy_change(v, seq, ts));
                }
            }
            "catalog_unstable" | "sanitized" | "lock_mismatch" | "tamper" | "recovery"
            | "retention" | "key_rotation" => {
                *a.notable.entry(kind.to_owned()).or_default() += 1;
                if kind == "lock_mismatch" {
                    // A definition or image that is not the pinned one is refused too.
                    *a.refusals_by_reason
                        .entry("lock_mismatch".into())
                        .or_default() += 1;
                }
            }
            _ => {}
        }
    }

    /// The counts, with latency percentiles computed.
    pub fn finish(mut self) -> Activity {
        for t in self.activity.tools.values_mut() {
            t.latencies.sort_unstable();
            t.latency_max_us = t.latencies.last().copied().unwrap_or(0);
            t.latency_p50_us = percentile(&t.latencies, 50);
            t.latency_p95_us = percentile(&t.latencies, 95);
        }
        let rows = std::mem::take(&mut self.activity.dest_rows);
        let mut list: Vec<EgressDestRow> = rows
            .into_iter()
            .map(|((server, dest, proto, port), packets)| EgressDestRow {
                server,
                dest,
                proto,
                port,
                packets,
            })
            .collect();
        list.sort_by(|a, b| {
            (
                a.server.as_str(),
                std::cmp::Reverse(a.packets),
                &a.dest,
                a.port,
            )
                .cmp(&(
                    b.server.as_str(),
                    std::cmp::Reverse(b.packets),
                    &b.dest,
                    b.port,
                ))
        });
        self.activity.egress_denied_by_destination = list;
        self.activity
    }
}

/// The packet total of an `egress_denied` record (`N packet(s) dropped ...`; DNS refusals
/// and other details have none) and its `destinations`, if any.
fn egress_destinations(a: &mut Activity, v: &Value) {
    let server = s(v, "server").to_owned();
    let detail = s(v, "detail");
    if let Some(n) = detail
        .split_once(" packet(s)")
        .and_then(|(n, _)| n.parse::<u64>().ok())
    {
        let e = a
            .egress_packets_by_server
            .entry(server.clone())
            .or_default();
        *e = e.saturating_add(n);
    }
    let Some(list) = v.get("destinations").and_then(Value::as_array) else {
        return;
    };
    for d in list {
        let packets = d.get("packets").and_then(Value::as_u64).unwrap_or(0);
        let port = d
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok());
        let mut key = (
            server.clone(),
            s(d, "dest").to_owned(),
            s(d, "proto").to_owned(),
            port,
        );
        if !a.dest_rows.contains_key(&key) && a.dest_rows.len() >= DEST_ROWS {
            key = (server.clone(), "other".into(), "any".into(), None);
        }
        let e = a.dest_rows.entry(key).or_default();
        *e = e.saturating_add(packets);
    }
}

fn refused(a: &mut Activity, v: &Value, seq: u64, ts: String, reason: String) {
    a.totals.refused += 1;
    *a.refusals_by_reason.entry(reason.clone()).or_default() += 1;
    if a.refusals.len() < LISTED {
        a.refusals.push(Refusal {
            seq,
            ts,
            reason,
            client: s(v, "client").into(),
            method: s(v, "method").into(),
            server: s(v, "server").into(),
            item: item(v).into(),
            detail: s(v, "detail").into(),
        });
    }
}

fn policy_change(v: &Value, seq: u64, ts: String) -> PolicyChange {
    let detail: Value = serde_json::from_str(s(v, "detail")).unwrap_or(Value::Null);
    let hash = |k: &str| {
        detail
            .get("sha256")
            .and_then(|h| h.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let serial = |k: &str| {
        detail
            .get("serial")
            .and_then(|h| h.get(k))
            .and_then(Value::as_u64)
    };
    let text = match detail.get("error").and_then(Value::as_str) {
        Some(e) => e.to_owned(),
        None if detail.is_null() => s(v, "detail").to_owned(),
        None => String::new(),
    };
    PolicyChange {
        seq,
        ts,
        kind: s(v, "kind").into(),
        outcome: s(v, "outcome").into(),
        trigger: detail
            .get("trigger")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .into(),
        sha256_from: hash("from"),
        sha256_to: hash("to"),
        serial_from: serial("from"),
        serial_to: serial("to").or_else(|| detail.get("serial_in_force").and_then(Value::as_u64)),
        detail: text,
    }
}

/// RFC 3339 UTC with milliseconds, as records carry it.
pub fn ms_to_ts(ms: u64) -> String {
    crate::audit::record::format_ts(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_calls_refusals_reloads_and_egress_inside_the_window_only() {
        let t0 = parse_ts_ms("2026-12-01T00:00:00.000Z").unwrap();
        let mut c = Collector::new(t0, t0 + 24 * 3_600_000);
        let ts = |h: u64| ms_to_ts(t0 + h * 3_600_000);
        c.add(&json!({"seq": 1, "ts": ts(1), "kind": "call", "client": "alice", "server": "gh", "tool": "list"}));
        c.add(&json!({"seq": 2, "ts": ts(1), "kind": "result", "client": "alice", "server": "gh", "tool": "list", "outcome": "ok", "latency_us": 500}));
        c.add(&json!({"seq": 3, "ts": ts(2), "kind": "call", "client": "bob", "server": "gh", "tool": "list"}));
        c.add(&json!({"seq": 4, "ts": ts(2), "kind": "result", "client": "bob", "server": "gh", "tool": "list", "outcome": "error", "error_code": -32603, "latency_us": 900}));
        c.add(&json!({"seq": 5, "ts": ts(3), "kind": "denied", "client": "bob", "server": "gh", "tool": "push", "method": "tools/call", "outcome": "error", "error_code": -32013}));
        c.add(&json!({"seq": 6, "ts": ts(3), "kind": "denied", "client": "bob", "outcome": "rate_limited"}));
        c.add(&json!({"seq": 7, "ts": ts(4), "kind": "egress_denied", "server": "gh", "outcome": "egress_denied", "detail": "3 packet(s)"}));
        c.add(&json!({"seq": 8, "ts": ts(4), "kind": "egress_denied", "server": "gh", "outcome": "egress_denied",
            "detail": "4 packet(s) dropped by the egress firewall: 198.18.0.9:443/tcp (2), 198.18.0.7:53/udp (1)",
            "destinations": [{"dest": "198.18.0.9", "proto": "tcp", "port": 443, "packets": 2},
                             {"dest": "198.18.0.7", "proto": "udp", "port": 53, "packets": 1}]}));
        c.add(&json!({"seq": 9, "ts": ts(4), "kind": "egress_denied", "server": "gh", "outcome": "egress_denied",
            "detail": "1 packet(s) dropped by the egress firewall: 198.18.0.9:443/tcp (1)",
            "destinations": [{"dest": "198.18.0.9", "proto": "tcp", "port": 443, "packets": 1}]}));
        c.add(&json!({"seq": 8, "ts": ts(5), "kind": "policy_reload", "outcome": "ok", "detail": "{\"trigger\":\"sighup\",\"sha256\":{\"from\":\"aa\",\"to\":\"bb\"},\"serial\":{\"from\":1,\"to\":2}}"}));
        // Outside the window.
        c.add(&json!({"seq": 9, "ts": ts(30), "kind": "call", "client": "eve", "server": "gh", "tool": "list"}));
        let a = c.finish();
        assert_eq!(a.totals.calls, 2);
        assert_eq!(a.totals.records, 10);
        assert_eq!(a.calls_by_client.get("alice"), Some(&1));
        assert!(!a.calls_by_client.contains_key("eve"));
        assert_eq!(a.calls_by_tool.get("gh/list"), Some(&2));
        assert_eq!(a.refusals_by_reason.get("not_allowed"), Some(&1));
        assert_eq!(a.refusals_by_reason.get("rate_limited"), Some(&1));
        assert_eq!(a.egress_denied_by_server.get("gh"), Some(&3));
        // Old records without destinations count in the totals; destinations are summed.
        assert_eq!(a.egress_packets_by_server.get("gh"), Some(&8));
        let rows: Vec<(&str, &str, Option<u16>, u64)> = a
            .egress_denied_by_destination
            .iter()
            .map(|r| (r.dest.as_str(), r.proto.as_str(), r.port, r.packets))
            .collect();
        assert_eq!(
            rows,
            [
                ("198.18.0.9", "tcp", Some(443), 3),
                ("198.18.0.7", "udp", Some(53), 1)
            ]
        );
        let t = &a.tools["gh/list"];
        assert_eq!((t.calls, t.errors, t.latency_max_us), (2, 1, 900));
        let p = &a.policy_changes[0];
        assert_eq!((p.sha256_from.as_str(), p.sha256_to.as_str()), ("aa", "bb"));
        assert_eq!((p.serial_from, p.serial_to), (Some(1), Some(2)));
        assert_eq!(a.calls_over_time_by_client.by_key["alice"][1], 1);
        assert_eq!(a.refusals_over_time[3], 2);
    }
}
