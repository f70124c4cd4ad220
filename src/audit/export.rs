//! Records in other shapes: CEF for SIEMs, and reading a range of records.

use std::path::Path;

use serde_json::Value;

use super::record::parse_ts_ms;
use super::segment;

/// Calls `f` with each complete record line (and its parsed value) with `from <= seq <= to`.
pub fn each_record(
    dir: &Path,
    from: u64,
    to: u64,
    mut f: impl FnMut(&[u8], &Value) -> std::io::Result<()>,
) -> Result<(), String> {
    for (_, path) in segment::list(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let mut lines =
            segment::open_lines(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        while let Some(line) = lines
            .next_line()
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            if !line.complete {
                break;
            }
            let Ok(v) = serde_json::from_slice::<Value>(&line.bytes) else {
                continue;
            };
            let Some(seq) = v.get("seq").and_then(Value::as_u64) else {
                continue;
            };
            if seq > to {
                return Ok(());
            }
            if seq >= from {
                f(&line.bytes, &v).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

/// ArcSight CEF:0. Severity: 7 for tamper/recovery, 5 for denials, errors and unstable
/// catalogs, 3 otherwise.
/// Extension keys: `rt` (ms since epoch), `externalId` (`log_id:seq`, the dedupe key), `suser`
/// (client), `outcome`, `msg` (detail), and labelled custom strings cs1=server, cs2=tool (or item),
/// cs3=session, cs4=method, cs5=args_sha256, cs6=prev; cn1=latency_us; `in`/`out` bytes.
pub fn to_cef(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    let kind = s("kind");
    let outcome = s("outcome");
    let severity = match kind {
        "tamper" | "recovery" => 7,
        "denied" | "egress_denied" | "catalog_unstable" | "sanitized" | "lock_mismatch" => 5,
        _ if !outcome.is_empty() && outcome != "ok" => 5,
        _ => 3,
    };
    let mut ext: Vec<(String, String)> = Vec::new();
    if let Some(ms) = parse_ts_ms(s("ts")) {
        ext.push(("rt".into(), ms.to_string()));
    }
    let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
    ext.push(("externalId".into(), format!("{}:{seq}", s("log_id"))));
    let mut add = |k: &str, val: &str| {
        if !val.is_empty() {
            ext.push((k.to_string(), val.to_string()));
        }
    };
    add("suser", s("client"));
    add("outcome", outcome);
    add("msg", s("detail"));
    // CEF has six custom strings: a record names a tool or another item, never both.
    let what = if s("tool").is_empty() { "item" } else { "tool" };
    for (i, (label, key)) in [
        ("server", "server"),
        (what, what),
        ("session", "session"),
        ("method", "method"),
        ("args_sha256", "args_sha256"),
        ("prev", "prev"),
    ]
    .iter()
    .enumerate()
    {
        if !s(key).is_empty() {
            add(&format!("cs{}Label", i + 1), label);
            add(&format!("cs{}", i + 1), s(key));
        }
    }
    for (k, key) in [
        ("cn1", "latency_us"),
        ("in", "bytes_in"),
        ("out", "bytes_out"),
    ] {
        if let Some(n) = v.get(key).and_then(Value::as_u64) {
            if k == "cn1" {
                ext.push(("cn1Label".into(), "latency_us".into()));
            }
            ext.push((k.into(), n.to_string()));
        }
    }
    // A seal travels whole, as the last extension, so that `audit witness-import` can turn what
    // the SIEM stored back into a witness.
    if matches!(kind, "checkpoint" | "key_rotation") {
        if let Ok(bytes) = super::canonical::to_vec(v) {
            ext.push(("flexString1Label".into(), "seal".into()));
            ext.push((
                "flexString1".into(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ));
        }
    }
    let ext: Vec<String> = ext
        .into_iter()
        .map(|(k, v)| format!("{k}={}", cef_ext_escape(&v)))
        .collect();
    format!(
        "CEF:0|Portcullis|portcullis|{}|{}|{}|{severity}|{}",
        env!("CARGO_PKG_VERSION"),
        cef_header_escape(kind),
        cef_header_escape(&kind.replace('_', " ")),
        ext.join(" ")
    )
}

fn cef_header_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

fn cef_ext_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('=', "\\=")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cef_escapes() {
        let v = serde_json::json!({"kind":"call","log_id":"ab","seq":3,"ts":"2026-01-01T00:00:00.000Z","client":"a=b","detail":"x\\y\nz","outcome":"ok"});
        let c = to_cef(&v);
        assert!(c.starts_with("CEF:0|Portcullis|portcullis|"));
        assert!(c.contains("externalId=ab:3"));
        assert!(c.contains("suser=a\\=b"));
        assert!(c.contains("msg=x\\\\y\\nz"));
        assert!(c.contains("rt=1767225600000"));
    }
}
