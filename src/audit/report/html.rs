//! The report as one self-contained HTML page: inline CSS, inline SVG, no script, and a
//! Content-Security-Policy that forbids every fetch, so opening it never reaches the network.
//! The verdict of verification is the first thing on the page.

use std::fmt::Write;

use super::collect::Counts;
use super::{svg, KeySource, Report};

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1000px;color:#1f2328;padding:0 16px}\
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d0d7de;padding-bottom:4px}\
.verdict{padding:14px 18px;border-radius:6px;font-size:16px;margin:14px 0}\
.ok{background:#dafbe1;border:1px solid #1a7f37}.bad{background:#ffebe9;border:2px solid #d1242f}.warn{background:#fff8c5;border:1px solid #9a6700}\
table{border-collapse:collapse;margin:6px 0;width:100%}td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top;word-break:break-all}\
th{background:#f6f8fa}td.n{text-align:right;white-space:nowrap;word-break:normal}\
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;min-width:120px}\
.card b{display:block;font-size:22px}.muted,text.muted{color:#57606a;fill:#57606a}svg.chart{max-width:100%;font-size:11px}\
code{font-size:12px}";

fn counts_vec(c: &Counts) -> Vec<(String, u64)> {
    c.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

fn row(s: &mut String, cells: &[String]) {
    s.push_str("<tr>");
    for c in cells {
        let _ = write!(s, "<td>{c}</td>");
    }
    s.push_str("</tr>");
}

fn head(s: &mut String, cells: &[&str]) {
    s.push_str("<table><tr>");
    for c in cells {
        let _ = write!(s, "<th>{c}</th>");
    }
    s.push_str("</tr>");
}

fn verdict(s: &mut String, r: &Report) {
    let v = &r.verification;
    if !v.intact {
        let _ = write!(
            s,
            r#"<div class="verdict bad" id="verdict">&#10007; <b>TAMPERED OR DAMAGED LOG.</b> Verification failed: <code>{}</code>. The counts below are what the log says; they cannot be trusted.</div>"#,
            esc(v.failure.as_deref().unwrap_or("unknown failure"))
        );
        return;
    }
    if let Some(w) = v.witnesses.iter().find(|w| !w.ok) {
        let _ = write!(
            s,
            r#"<div class="verdict bad" id="verdict">&#10007; <b>TAMPERED LOG.</b> The chain is intact, but witness <code>{}</code> disagrees: {}.</div>"#,
            esc(&w.path),
            esc(&w.detail)
        );
        return;
    }
    let keys = if v.signing_key_ids.is_empty() {
        "no checkpoint".to_owned()
    } else {
        v.signing_key_ids
            .iter()
            .map(|k| format!("<code>{}</code>", esc(k)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (class, note) = match (&v.key, v.signatures_checked) {
        (KeySource::Given(_), true) => ("ok", String::new()),
        (KeySource::LogDir(p), _) => ("warn", format!(" Signatures were checked with the key found beside the log (<code>{}</code>): whoever could rewrite the log could replace it too; pass <code>--pubkey</code> with the auditor's copy.", esc(&p.display().to_string()))),
        _ => ("warn", " Checkpoint signatures were NOT checked (no public key).".to_owned()),
    };
    let _ = write!(
        s,
        r#"<div class="verdict {class}" id="verdict">&#10003; <b>Chain intact.</b> {} records in {} segment(s), {} signed checkpoint(s) by key id(s) {keys}{}.{note}</div>"#,
        v.records,
        v.segments,
        v.checkpoints,
        if v.witnesses.is_empty() {
            String::new()
        } else {
            format!("; {} witness(es) agree", v.witnesses.len())
        }
    );
}

fn verification_table(s: &mut String, r: &Report) {
    let v = &r.verification;
    let opt = |o: &Option<String>| o.as_deref().map(esc).unwrap_or_else(|| "-".into());
    head(s, &["check", "result"]);
    let key = match &v.key {
        KeySource::Given(p) => format!("--pubkey {}", esc(&p.display().to_string())),
        KeySource::LogDir(p) => {
            format!("log directory's own key {}", esc(&p.display().to_string()))
        }
        KeySource::Missing(_) => "none: signatures not checked".into(),
    };
    let rows: Vec<(&str, String)> = vec![
        (
            "chain (seq, hash links, canonical form)",
            if v.intact {
                "intact".into()
            } else {
                format!("FAILED: {}", opt(&v.failure))
            },
        ),
        ("log id", esc(&v.log_id)),
        (
            "records / segments",
            format!("{} / {}", v.records, v.segments),
        ),
        (
            "checkpoints / key rotations",
            format!("{} / {}", v.checkpoints, v.rotations),
        ),
        ("verifying key", key),
        ("first key id", opt(&v.first_key_id)),
        ("signatures checked", v.signatures_checked.to_string()),
        (
            "last checkpoint",
            match (&v.last_checkpoint_tree_size, &v.last_checkpoint_root) {
                (Some(n), Some(root)) => format!(
                    "covers {n} records, root <code>{}</code>, at {}",
                    esc(root),
                    opt(&v.last_seal_ts)
                ),
                _ => "-".into(),
            },
        ),
        (
            "records not yet under a checkpoint",
            v.uncovered.to_string(),
        ),
        (
            "gaps",
            if v.first_seq > 0 {
                format!("records before seq {} were removed by audited retention (anchor sha256 <code>{}</code>)", v.first_seq, opt(&v.anchor_sha256))
            } else if v.intact {
                "none (seq continuous from 0)".into()
            } else {
                "see the failure".into()
            },
        ),
    ];
    for (k, val) in rows {
        row(s, &[k.into(), val]);
    }
    for w in &v.witnesses {
        row(
            s,
            &[
                format!("witness {}", esc(&w.path)),
                format!(
                    "{}: {}",
                    if w.ok { "agrees" } else { "DISAGREES" },
                    esc(&w.detail)
                ),
            ],
        );
    }
    s.push_str("</table>");
}

/// The report as one HTML page.
pub fn render(r: &Report) -> String {
    let a = &r.activity;
    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:"><meta name="viewport" content="width=device-width"><title>Portcullis audit report {from} to {to}</title><style>{STYLE}</style></head><body><h1>Portcullis audit report</h1><div class="muted">Log <code>{dir}</code> &middot; window {from} to {to} &middot; generated {gen}</div>"#,
        from = esc(&r.from),
        to = esc(&r.to),
        dir = esc(&r.log_dir),
        gen = esc(&r.generated_at),
    );
    verdict(&mut s, r);
    let t = &a.totals;
    s.push_str(r#"<div class="grid">"#);
    for (id, label, n) in [
        ("calls", "tool calls", t.calls),
        ("results-ok", "succeeded", t.results_ok),
        ("results-error", "failed", t.results_error),
        ("refused", "refused", t.refused),
        ("egress-denied", "egress denials", t.egress_denied),
        ("policy-reloads", "policy reloads", t.policy_reloads),
    ] {
        let _ = write!(s, r#"<div class="card"><b id="{id}">{n}</b>{label}</div>"#);
    }
    s.push_str("</div><h2>Verification</h2>");
    verification_table(&mut s, r);

    s.push_str("<h2>Calls</h2><p class=\"muted\">per client</p>");
    s.push_str(&svg::bars(
        "calls per client",
        &counts_vec(&a.calls_by_client),
    ));
    s.push_str("<p class=\"muted\">per server</p>");
    s.push_str(&svg::bars(
        "calls per server",
        &counts_vec(&a.calls_by_server),
    ));
    s.push_str("<p class=\"muted\">per tool (server/tool)</p>");
    s.push_str(&svg::bars(
        "calls per tool (server/tool)",
        &counts_vec(&a.calls_by_tool),
    ));
    let series = |m: &std::collections::BTreeMap<String, Vec<u64>>| -> Vec<(String, Vec<u64>)> {
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    s.push_str("<h2>Calls over time</h2><p class=\"muted\">per client</p>");
    s.push_str(&svg::lines(
        "calls over time per client",
        &a.bucket_starts,
        &series(&a.calls_over_time_by_client.by_key),
    ));
    s.push_str("<p class=\"muted\">per server</p>");
    s.push_str(&svg::lines(
        "calls over time per server",
        &a.bucket_starts,
        &series(&a.calls_over_time_by_server.by_key),
    ));
    s.push_str("<p class=\"muted\">per tool</p>");
    s.push_str(&svg::lines(
        "calls over time per tool",
        &a.bucket_starts,
        &series(&a.calls_over_time_by_tool.by_key),
    ));
    s.push_str("<p class=\"muted\">refusals</p>");
    s.push_str(&svg::lines(
        "refusals over time",
        &a.bucket_starts,
        &[("refused".into(), a.refusals_over_time.clone())],
    ));

    s.push_str("<h2>Refused requests by reason</h2>");
    s.push_str(&svg::bars(
        "refusals by reason",
        &counts_vec(&a.refusals_by_reason),
    ));
    head(
        &mut s,
        &[
            "seq", "time", "reason", "client", "method", "server", "item", "detail",
        ],
    );
    for f in &a.refusals {
        row(
            &mut s,
            &[
                f.seq.to_string(),
                esc(&f.ts),
                esc(&f.reason),
                esc(&f.client),
                esc(&f.method),
                esc(&f.server),
                esc(&f.item),
                esc(&f.detail),
            ],
        );
    }
    s.push_str("</table>");

    s.push_str("<h2>Egress denials</h2>");
    s.push_str(&svg::bars(
        "egress denials per server",
        &counts_vec(&a.egress_denied_by_server),
    ));
    s.push_str("<h3>Egress denials by server and destination</h3>");
    head(
        &mut s,
        &["server", "destination", "protocol/port", "packets logged"],
    );
    for r in &a.egress_denied_by_destination {
        let proto = match r.port {
            Some(p) => format!("{}/{p}", r.proto),
            None => r.proto.clone(),
        };
        row(
            &mut s,
            &[
                esc(&r.server),
                esc(&r.dest),
                esc(&proto),
                r.packets.to_string(),
            ],
        );
    }
    s.push_str("</table>");
    head(
        &mut s,
        &["seq", "time", "server", "outcome", "destination / detail"],
    );
    for e in &a.egress_denials {
        row(
            &mut s,
            &[
                e.seq.to_string(),
                esc(&e.ts),
                esc(&e.server),
                esc(&e.outcome),
                esc(&e.detail),
            ],
        );
    }
    s.push_str("</table>");

    s.push_str("<h2>Policy loads and reloads</h2>");
    head(
        &mut s,
        &[
            "seq",
            "time",
            "kind",
            "outcome",
            "trigger",
            "sha256 from",
            "sha256 to",
            "serial",
            "detail",
        ],
    );
    for p in &a.policy_changes {
        let serial = match (p.serial_from, p.serial_to) {
            (Some(f), Some(t)) => format!("{f} &rarr; {t}"),
            (None, Some(t)) => t.to_string(),
            _ => "-".into(),
        };
        row(
            &mut s,
            &[
                p.seq.to_string(),
                esc(&p.ts),
                esc(&p.kind),
                esc(&p.outcome),
                esc(&p.trigger),
                format!("<code>{}</code>", esc(&p.sha256_from)),
                format!("<code>{}</code>", esc(&p.sha256_to)),
                serial,
                esc(&p.detail),
            ],
        );
    }
    s.push_str("</table>");

    s.push_str("<h2>Slowest and failing tools</h2>");
    let mut tools: Vec<(&String, &super::collect::ToolStats)> = a.tools.iter().collect();
    tools.sort_by_key(|t| std::cmp::Reverse((t.1.errors, t.1.latency_p95_us)));
    head(
        &mut s,
        &[
            "server/tool",
            "calls",
            "failed",
            "p50 ms",
            "p95 ms",
            "max ms",
        ],
    );
    let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
    for (name, st) in tools.iter().take(50) {
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            esc(name),
            st.calls,
            st.errors,
            ms(st.latency_p50_us),
            ms(st.latency_p95_us),
            ms(st.latency_max_us)
        );
    }
    s.push_str("</table>");

    s.push_str("<h2>Other events</h2>");
    head(&mut s, &["kind", "records"]);
    for (k, n) in &a.records_by_kind {
        row(&mut s, &[esc(k), n.to_string()]);
    }
    s.push_str("</table></body></html>\n");
    s
}
