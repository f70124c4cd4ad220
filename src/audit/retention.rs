//! Retention: sealed segments past `max_age` or `max_bytes` are archived (gzip) or deleted, one
//! at a time, oldest first, so that the log does not grow forever and stays verifiable.
//!
//! Contract:
//! - Only a sealed segment goes (never the one being written; each sealed segment ends with a
//!   signed checkpoint or key rotation), and only once every configured sink and witness has
//!   acknowledged it (its cursor is past it): a SIEM outage holds retention back, it never loses
//!   records the SIEM has not received.
//! - One removal: the anchor of the next segment is made durable ([`super::anchor`]), then the
//!   segment is archived when `archive_dir` is set, then a `retention` record (log only, signed
//!   by the next checkpoint) names the removal and the anchor's SHA-256, durably; only then is
//!   the segment deleted. A crash at any step leaves a log that verifies: before the record the
//!   segment is still there; after it, the anchor is.
//! - Disk-full stays fail-closed: retention frees space, it never lets a call pass unaudited.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::anchor::{self, Anchor, Peaks};
use super::chain::{leaf_hash, record_hash, to_hex};
use super::merkle::Frontier;
use super::record::{parse_ts_ms, Kind};
use super::segment;
use super::sinks::cursor;

/// What to keep, from `[audit] retention`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    /// Where removed segments go, gzip-compressed; `None`: deleted.
    pub archive_dir: Option<PathBuf>,
    /// Sinks and witnesses whose cursors must be past a segment before it goes.
    pub sinks: Vec<String>,
    /// How often the limits are checked.
    pub check_every: Duration,
}

/// What one removal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub segment: u64,
    pub records: u64,
    pub bytes: u64,
    pub archived: Option<PathBuf>,
}

/// Why the oldest segment is not removed (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Within the limits, or only the segment being written is left.
    Within,
    /// A sink or witness has not acknowledged it.
    Unacknowledged { sink: String },
}

/// Appends a log-only record and waits until it is durable.
pub type AppendLogOnly<'a> = dyn Fn(Map<String, Value>) -> Result<u64, String> + 'a;

/// Removes the oldest segment if the limits say so; `Ok(Err(held))` says why not.
pub fn step(
    dir: &Path,
    r: &Retention,
    append: &AppendLogOnly<'_>,
) -> Result<Result<Removed, Held>, String> {
    let segs = segment::list(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if segs.len() < 2 {
        return Ok(Err(Held::Within));
    }
    let (oldest, path) = segs[0].clone();
    // What the records take: the segment being written has space allocated ahead of them.
    let mut total = 0u64;
    for (i, (_, p)) in segs.iter().enumerate() {
        total += if i + 1 == segs.len() {
            segment::records_end(p).unwrap_or(0)
        } else {
            std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
        };
    }
    let too_big = r.max_bytes.is_some_and(|max| total > max);
    let too_old = match r.max_age {
        Some(age) => match last_ts_ms(&path)? {
            Some(ms) => {
                now_ms().saturating_sub(ms) > u64::try_from(age.as_millis()).unwrap_or(u64::MAX)
            }
            None => false,
        },
        None => false,
    };
    if !too_big && !too_old {
        return Ok(Err(Held::Within));
    }
    for sink in &r.sinks {
        let c = cursor::load(&cursor::path(dir, sink));
        if c.segment <= oldest {
            return Ok(Err(Held::Unacknowledged { sink: sink.clone() }));
        }
    }
    let (a, records) = anchor_after(dir, oldest, &path)?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let anchor_bytes = anchor::write(dir, &a).map_err(|e| format!("writing the anchor: {e}"))?;
    let archived = match &r.archive_dir {
        Some(to) => {
            Some(archive(&path, to).map_err(|e| format!("archiving {}: {e}", path.display()))?)
        }
        None => None,
    };
    let mut m = Map::new();
    m.insert("kind".into(), Kind::Retention.as_str().into());
    m.insert("segment".into(), segment::name(oldest).into());
    m.insert("first_retained".into(), (oldest + 1).into());
    m.insert("removed_records".into(), records.into());
    m.insert("removed_bytes".into(), bytes.into());
    m.insert(
        "anchor_sha256".into(),
        hex::encode(Sha256::digest(&anchor_bytes)).into(),
    );
    let why = match (too_old, too_big, r.max_age, r.max_bytes) {
        (true, _, Some(age), _) => format!("older than max_age {}s", age.as_secs()),
        (_, true, _, Some(max)) => format!("the log ({total} bytes) is over max_bytes {max}"),
        _ => "limits".to_owned(),
    };
    let detail = match &archived {
        Some(p) => format!("{why}: archived to {}", p.display()),
        None => format!("{why}: deleted"),
    };
    m.insert("detail".into(), detail.into());
    append(m)?;
    std::fs::remove_file(&path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    // The anchor of the removed segment describes a start that no longer exists.
    let _ = std::fs::remove_file(anchor::path(dir, oldest));
    Ok(Ok(Removed {
        segment: oldest,
        records,
        bytes,
        archived,
    }))
}

/// The anchor that would start the log at segment `oldest + 1`. Anyone who can read the log can
/// compute it (it is derived, not secret): `verify` relies on the `retention` records, not on
/// the anchor, to tell a recorded removal from a deleted segment.
pub fn anchor_for(dir: &Path, oldest: u64) -> Result<Anchor, String> {
    anchor_after(dir, oldest, &dir.join(segment::name(oldest))).map(|(a, _)| a)
}

/// The anchor of segment `oldest + 1`: the chain state after `oldest`, which must end with a seal.
fn anchor_after(dir: &Path, oldest: u64, path: &Path) -> Result<(Anchor, u64), String> {
    let (mut frontier, mut certificates, log_id) = match anchor::read(dir, oldest)? {
        Some((a, _)) => {
            let s = anchor::start(&a)?;
            (s.frontier, a.certificates, Some(a.log_id))
        }
        None if oldest == 1 => (Frontier::new(), Vec::new(), None),
        None => {
            return Err(format!(
                "{} has no anchor: the log's start cannot be carried forward",
                segment::name(oldest)
            ))
        }
    };
    let mut lines = segment::open_lines(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut before_last = frontier.clone();
    let mut last: Option<Vec<u8>> = None;
    let mut records = 0u64;
    while let Some(line) = lines
        .next_line()
        .map_err(|e| format!("{}: {e}", path.display()))?
    {
        if !line.complete {
            return Err(format!(
                "{}: a torn record in a sealed segment",
                path.display()
            ));
        }
        if contains(&line.bytes, br#""kind":"key_rotation""#) {
            certificates.push(String::from_utf8_lossy(&line.bytes).into_owned());
        }
        before_last = frontier.clone();
        frontier.push(leaf_hash(&line.bytes));
        records += 1;
        last = Some(line.bytes);
    }
    let last = last.ok_or_else(|| format!("{} is empty", path.display()))?;
    let v: Value = serde_json::from_slice(&last).map_err(|e| e.to_string())?;
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind != "checkpoint" && kind != "key_rotation" {
        return Err(format!(
            "{} does not end with a seal (its last record is `{kind}`): it is not removed",
            path.display()
        ));
    }
    let prev = record_hash(&last);
    // The next segment must start where this one ends.
    let next = dir.join(segment::name(oldest + 1));
    let mut next_lines =
        segment::open_lines(&next).map_err(|e| format!("{}: {e}", next.display()))?;
    if let Some(first) = next_lines.next_line().map_err(|e| e.to_string())? {
        let fv: Value = serde_json::from_slice(&first.bytes).map_err(|e| e.to_string())?;
        if fv.get("prev").and_then(Value::as_str) != Some(to_hex(&prev).as_str()) {
            return Err(format!(
                "{} does not continue {}: run `portcullis audit verify`",
                next.display(),
                path.display()
            ));
        }
    }
    Ok((
        Anchor {
            v: anchor::ANCHOR_VERSION,
            log_id: log_id
                .or_else(|| v.get("log_id").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default(),
            first_segment: oldest + 1,
            next_seq: frontier.size(),
            prev: to_hex(&prev),
            frontier: Peaks::of(&frontier),
            seal: String::from_utf8_lossy(&last).into_owned(),
            seal_frontier: Peaks::of(&before_last),
            certificates,
        },
        records,
    ))
}

/// Copies `path` to `to/NAME.gz`, compressed and synced; returns the archive's path.
fn archive(path: &Path, to: &Path) -> std::io::Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(to)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = to.join(format!("{name}.gz"));
    let tmp = to.join(format!(".{name}.gz.tmp"));
    let mut input = std::fs::File::open(path)?;
    let file = std::fs::File::create(&tmp)?;
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    std::io::copy(&mut input, &mut gz)?;
    let mut file = gz.finish()?;
    file.flush()?;
    file.sync_all()?;
    std::fs::rename(&tmp, &out)?;
    std::fs::File::open(to)?.sync_all()?;
    Ok(out)
}

/// `ts` of a segment's last record.
fn last_ts_ms(path: &Path) -> Result<Option<u64>, String> {
    let mut lines = segment::open_lines(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut last = None;
    while let Some(l) = lines.next_line().map_err(|e| e.to_string())? {
        last = Some(l.bytes);
    }
    Ok(last
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("ts").and_then(Value::as_str).and_then(parse_ts_ms)))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
