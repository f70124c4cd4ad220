//! Start-up: find where the log ends, cut a torn final record, and rebuild the chain state.
//!
//! Every existing record is hashed once to rebuild the Merkle frontier (the log does not persist
//! its tree), so start-up reads the whole log sequentially; only the last record is parsed.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::chain::{leaf_hash, record_hash, Hash, GENESIS};
use super::merkle::Frontier;
use super::segment;

/// Where the existing log leaves off.
pub(crate) struct Tail {
    /// `None` for a new, empty log.
    pub log_id: Option<String>,
    pub next_seq: u64,
    pub prev: Hash,
    pub frontier: Frontier,
    /// The newest segment `(index, path, length after truncation)`, if any.
    pub segment: Option<(u64, PathBuf, u64)>,
    /// What was cut off the end: `(segment name, offset, bytes)`.
    pub truncated: Option<(String, u64, u64)>,
    /// The last record's kind (a clean stop ends with a checkpoint).
    pub last_kind: Option<String>,
    /// The key id the last `key_rotation` certified, and when that epoch began (ms since the
    /// Unix epoch); without a rotation, `None` and the first record's time.
    pub current_key: Option<String>,
    pub epoch_began_ms: Option<u64>,
}

pub(crate) fn scan(dir: &Path) -> Result<Tail, String> {
    let segs = segment::list(dir).map_err(|e| format!("cannot list: {e}"))?;
    let mut truncated = None;
    if let Some((_, path)) = segs.last() {
        let tail = torn_tail(path)?;
        let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        // Space allocated ahead of the records goes too: writing resumes at the records' end.
        let keep = tail.cut.unwrap_or(tail.end);
        if keep < len {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| format!("cannot open {} to cut its tail: {e}", path.display()))?;
            f.set_len(keep)
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot cut the tail off {}: {e}", path.display()))?;
        }
        if tail.cut.is_some() || tail.data_after_end {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // Zeros are unused space, not lost data, unless data follows them.
            let lost = if tail.data_after_end { len } else { tail.end };
            truncated = Some((name, keep, lost - keep));
        }
    }
    let mut frontier = Frontier::new();
    let mut prev = GENESIS;
    let mut last: Option<Vec<u8>> = None;
    let mut current_key = None;
    let mut epoch_began_ms = None;
    // A log that retention shortened starts from its anchor.
    if let Some((first, _)) = segs.first().filter(|(i, _)| *i > 1) {
        let (a, _) = super::anchor::read(dir, *first)?.ok_or_else(|| {
            format!(
                "the log starts at {} but has no {}: segments were removed without retention; run `portcullis audit verify`",
                segment::name(*first),
                super::anchor::path(dir, *first).display()
            )
        })?;
        let s = super::anchor::start(&a)?;
        frontier = s.frontier;
        prev = s.prev;
        epoch_began_ms = s
            .seal
            .get("ts")
            .and_then(Value::as_str)
            .and_then(super::record::parse_ts_ms);
        if let Some(cert) = a.certificates.last() {
            if let Ok(v) = serde_json::from_str::<Value>(cert) {
                current_key = v
                    .get("next_key_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                epoch_began_ms = v
                    .get("ts")
                    .and_then(Value::as_str)
                    .and_then(super::record::parse_ts_ms);
            }
        }
    }
    for (_, path) in &segs {
        let mut lines =
            segment::open_lines(path).map_err(|e| format!("{}: {e}", path.display()))?;
        while let Some(line) = lines
            .next_line()
            .map_err(|e| format!("{}: {e}", path.display()))?
        {
            frontier.push(leaf_hash(&line.bytes));
            prev = record_hash(&line.bytes);
            // Records are canonical JSON: only rotations hold this text, so only they (and the
            // very first record) are parsed.
            let rotation = contains(&line.bytes, br#""kind":"key_rotation""#);
            if rotation || epoch_began_ms.is_none() {
                if let Ok(v) = serde_json::from_slice::<Value>(&line.bytes) {
                    let ts = v
                        .get("ts")
                        .and_then(Value::as_str)
                        .and_then(super::record::parse_ts_ms);
                    if rotation {
                        current_key = v
                            .get("next_key_id")
                            .and_then(Value::as_str)
                            .map(str::to_owned);
                        epoch_began_ms = ts;
                    } else {
                        epoch_began_ms = epoch_began_ms.or(ts);
                    }
                }
            }
            last = Some(line.bytes);
        }
    }
    let segment = match segs.last() {
        Some((i, p)) => {
            let len = std::fs::metadata(p).map_err(|e| e.to_string())?.len();
            Some((*i, p.clone(), len))
        }
        None => None,
    };
    let (log_id, next_seq, last_kind) = match last {
        None => (None, 0, None),
        Some(bytes) => {
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                format!("the last record is not JSON ({e}); run `portcullis audit verify`")
            })?;
            let log_id = v.get("log_id").and_then(Value::as_str).map(str::to_string);
            let seq = v.get("seq").and_then(Value::as_u64);
            match (log_id, seq) {
                (Some(id), Some(seq)) => (
                    Some(id),
                    seq + 1,
                    v.get("kind").and_then(Value::as_str).map(str::to_string),
                ),
                _ => {
                    return Err(
                        "the last record has no log_id or seq; run `portcullis audit verify`"
                            .into(),
                    )
                }
            }
        }
    };
    Ok(Tail {
        log_id,
        next_seq,
        prev,
        frontier,
        segment,
        truncated,
        last_kind,
        current_key,
        epoch_began_ms,
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// How the newest segment ends.
struct TornTail {
    /// Where to cut a torn record, if there is one.
    cut: Option<u64>,
    /// Where the records end (space allocated ahead follows).
    end: u64,
    /// Non-zero bytes follow the end: a write torn across pages by a crash.
    data_after_end: bool,
}

/// Where the newest segment's records end, and where to cut it: at a final line without its
/// newline, or a last complete line that is not a JSON object (a crash mid-write of a page can
/// leave either).
fn torn_tail(path: &Path) -> Result<TornTail, String> {
    let mut lines = segment::open_lines(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut last_complete: Option<(u64, bool)> = None;
    let mut cut = None;
    while let Some(line) = lines
        .next_line()
        .map_err(|e| format!("{}: {e}", path.display()))?
    {
        if cut.is_some() {
            // Read on to find where the records end.
            continue;
        }
        if !line.complete || line.too_long {
            cut = Some(line.offset);
            continue;
        }
        let ok = serde_json::from_slice::<Value>(&line.bytes).is_ok_and(|v| v.is_object());
        last_complete = Some((line.offset, ok));
    }
    if let Some((offset, false)) = last_complete {
        // Only the very last complete line: damage further back is tampering, not a torn write,
        // and is left for `audit verify` to report.
        cut = Some(offset);
    }
    let end = lines.end_of_records();
    let data_after_end = lines
        .data_after_end()
        .map_err(|e| format!("{}: {e}", path.display()))?
        .is_some();
    Ok(TornTail {
        cut,
        end,
        data_after_end,
    })
}
