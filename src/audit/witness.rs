//! Witnesses: copies of a log's seals (checkpoints and key rotations) kept where the gateway's
//! host cannot rewrite them, and checking a log against them.
//!
//! Contract:
//! - A witness file holds seal records exactly as the log wrote them (canonical JSON lines), for
//!   one or several logs; a witness directory holds `witness-LOG_ID.jsonl` files (written by
//!   `[[audit.witness]] type = "dir"`, or by `audit witness-import` from what a SIEM stored).
//! - [`check`] fails, naming the seq and time, when the log lacks a seal the witness holds (its
//!   tail was cut), or holds a different record at that seq (rolled back, or rewritten and
//!   continued: a fork). Seals newer than the witness's are fine: the witness lags.
//! - [`expect_until`] fails when the log's last seal is older than a time the auditor knows the
//!   gateway ran until, saying how much is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::canonical;
use super::record::parse_ts_ms;
use super::verify::Report;

/// One seal a witness holds.
#[derive(Debug, Clone)]
pub struct Seal {
    pub log_id: String,
    pub seq: u64,
    pub ts: String,
    pub line: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}:{line}: not a seal record of a log (a checkpoint or key_rotation line)")]
    NotASeal { path: String, line: usize },
    #[error("the witness {path} holds no seal of log {log_id}: it is another log's witness, or it never received any")]
    Empty { path: String, log_id: String },
    #[error("the log lacks the seal at seq {seq} ({ts}) that the witness holds: the log ends at seq {end}, so {missing} record(s) or more were cut off its end")]
    Cut {
        seq: u64,
        ts: String,
        end: u64,
        missing: u64,
    },
    #[error("the log's record at seq {seq} is not the seal the witness holds ({ts}): the log was rolled back or rewritten after that point (a fork)")]
    Forked { seq: u64, ts: String },
}

/// What a witness confirmed.
#[derive(Debug, Clone, Default)]
pub struct Confirmed {
    pub seals: usize,
    /// The newest seal both hold.
    pub newest: Option<(u64, String)>,
}

/// Every seal in `path` (a witness file, or a directory of them).
pub fn read(path: &Path) -> Result<Vec<Seal>, WitnessError> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| WitnessError::Read {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read(&f).map_err(|e| WitnessError::Read {
            path: f.display().to_string(),
            reason: e.to_string(),
        })?;
        for (i, line) in text.split(|b| *b == b'\n').enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let seal = parse_seal(line).ok_or_else(|| WitnessError::NotASeal {
                path: f.display().to_string(),
                line: i + 1,
            })?;
            out.push(seal);
        }
    }
    Ok(out)
}

/// A seal record from its canonical line; `None` for anything else.
fn parse_seal(line: &[u8]) -> Option<Seal> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let kind = v.get("kind")?.as_str()?;
    if kind != "checkpoint" && kind != "key_rotation" {
        return None;
    }
    // Stored exactly as the log holds it: the canonical form is the line itself.
    let canon = canonical::to_vec(&v).ok()?;
    Some(Seal {
        log_id: v.get("log_id")?.as_str()?.to_owned(),
        seq: v.get("seq")?.as_u64()?,
        ts: v
            .get("ts")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        line: canon,
    })
}

/// Checks the verified log (`report`) against the seals a witness at `path` holds.
pub fn check(report: &Report, path: &Path, seals: &[Seal]) -> Result<Confirmed, WitnessError> {
    let mine: BTreeMap<u64, &Seal> = seals
        .iter()
        .filter(|s| s.log_id == report.log_id)
        .map(|s| (s.seq, s))
        .collect();
    if mine.is_empty() {
        return Err(WitnessError::Empty {
            path: path.display().to_string(),
            log_id: report.log_id.clone(),
        });
    }
    let mut confirmed = Confirmed::default();
    let end = report.first_seq + report.records;
    // Seals of segments retention removed are covered by the anchor, not compared here.
    for (seq, seal) in mine.range(report.first_seq..) {
        match report.seals.get(seq) {
            Some(line) if *line == seal.line => {
                confirmed.seals += 1;
                confirmed.newest = Some((*seq, seal.ts.clone()));
            }
            Some(_) => {
                return Err(WitnessError::Forked {
                    seq: *seq,
                    ts: seal.ts.clone(),
                })
            }
            None if *seq >= end => {
                return Err(WitnessError::Cut {
                    seq: *seq,
                    ts: seal.ts.clone(),
                    end: end.saturating_sub(1),
                    missing: seq + 1 - end,
                })
            }
            None => {
                return Err(WitnessError::Forked {
                    seq: *seq,
                    ts: seal.ts.clone(),
                })
            }
        }
    }
    Ok(confirmed)
}

/// Fails when the log's last seal is older than `until_ms` (ms since the Unix epoch).
pub fn expect_until(report: &Report, until_ms: u64, until_text: &str) -> Result<(), String> {
    let last = report.last_seal_ts.as_deref().unwrap_or("");
    let last_ms = parse_ts_ms(last).unwrap_or(0);
    if last_ms >= until_ms {
        return Ok(());
    }
    let missing = std::time::Duration::from_millis(until_ms - last_ms);
    Err(if last.is_empty() {
        format!("the log holds no signed checkpoint, but it should be sealed until {until_text}")
    } else {
        format!(
            "the log's last signed checkpoint is at {last}, but it should be sealed until {until_text}: {} missing (records cut off the end, or the gateway stopped writing)",
            human(missing)
        )
    })
}

fn human(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, (s % 3600) / 60),
    }
}

/// Seals found in what a receiver stored: an rsyslog file (RFC 5424 lines whose body is a
/// record, or CEF with the seal in `flexString1`), HEC events as a collector stores them
/// (`{"event": record}` per line), Splunk search exports (`{"result": {"_raw": "..."}}` per
/// line, `_raw` being any of these), or plain records. Returns them sorted by log and seq, duplicates dropped, and how many
/// lines held no seal.
pub fn import(text: &str) -> (Vec<Seal>, usize) {
    let mut seals: BTreeMap<(String, u64), Seal> = BTreeMap::new();
    let mut other = 0;
    for line in text.lines() {
        match seal_in_line(line) {
            Some(s) => {
                seals.insert((s.log_id.clone(), s.seq), s);
            }
            None => other += 1,
        }
    }
    (seals.into_values().collect(), other)
}

fn seal_in_line(line: &str) -> Option<Seal> {
    if let Some(at) = line.find("flexString1=") {
        let raw = &line[at + "flexString1=".len()..];
        return parse_seal(cef_unescape(raw).as_bytes());
    }
    // The record (or an envelope around it) is the JSON object that starts somewhere in the
    // line: after a syslog header and structured data, or at its start.
    for (i, _) in line.match_indices('{') {
        let Ok(v) = serde_json::from_str::<Value>(&line[i..]) else {
            continue;
        };
        // Splunk's search export wraps what was indexed as a string (`result._raw`), which may
        // itself be a syslog line: read it like any other line (it is shorter, so this ends).
        if let Some(raw) = v.pointer("/result/_raw").and_then(Value::as_str) {
            return seal_in_line(raw);
        }
        let record = match v.get("event") {
            Some(e) if e.is_object() => e.clone(),
            _ => v,
        };
        let bytes = serde_json::to_vec(&record).ok()?;
        return parse_seal(&bytes);
    }
    None
}

fn cef_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some(other) => out.push(other),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEAL: &str = r#"{"key_id":"k","kind":"checkpoint","log_id":"L","prev":"p","root":"r","seq":5,"sig":"s","tree_size":5,"ts":"2026-01-01T00:00:00.000Z","v":1}"#;

    #[test]
    fn seals_are_found_in_syslog_hec_and_cef_lines() {
        let syslog = format!(
            r#"<134>1 2026-01-01T00:00:00.000Z host portcullis 1 checkpoint [portcullis@32473 log_id="L" seq="5"] {SEAL}"#
        );
        let hec = format!(r#"{{"time":1,"event":{SEAL}}}"#);
        let export = serde_json::json!({"preview": false, "result": {"_raw": SEAL, "_time": "1"}})
            .to_string();
        let export_of_syslog = serde_json::json!({"result": {"_raw": syslog}}).to_string();
        let cef = format!(
            "CEF:0|Portcullis|portcullis|0.1.0|checkpoint|checkpoint|3|externalId=L:5 flexString1Label=seal flexString1={}",
            SEAL.replace('=', "\\=")
        );
        for l in [syslog, hec, cef, export, export_of_syslog, SEAL.to_owned()] {
            let s = seal_in_line(&l).unwrap_or_else(|| panic!("{l}"));
            assert_eq!((s.log_id.as_str(), s.seq), ("L", 5));
            assert_eq!(s.line, SEAL.as_bytes());
        }
        let (seals, other) = import(&format!("{SEAL}\n{SEAL}\nnoise\n"));
        assert_eq!((seals.len(), other), (1, 1));
    }

    #[test]
    fn cut_and_forked_logs_are_told_apart() {
        let seal = parse_seal(SEAL.as_bytes()).unwrap();
        let mut report = Report {
            log_id: "L".into(),
            records: 3,
            ..Report::default()
        };
        let p = Path::new("w");
        let e = check(&report, p, std::slice::from_ref(&seal)).unwrap_err();
        assert!(
            matches!(
                e,
                WitnessError::Cut {
                    seq: 5,
                    end: 2,
                    missing: 3,
                    ..
                }
            ),
            "{e}"
        );
        report.records = 10;
        report.seals.insert(5, b"{}".to_vec());
        let e = check(&report, p, std::slice::from_ref(&seal)).unwrap_err();
        assert!(matches!(e, WitnessError::Forked { seq: 5, .. }), "{e}");
        report.seals.insert(5, SEAL.as_bytes().to_vec());
        assert_eq!(check(&report, p, &[seal]).unwrap().seals, 1);
    }
}
