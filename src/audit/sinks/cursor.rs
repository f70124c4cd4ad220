//! A sink's read position, persisted in `DIR/cursors/NAME.json`, and reading the log from it.
//!
//! The cursor is saved only after the receiver has (or is taken to have) the records before it,
//! so delivery is at least once; a receiver deduplicates on `(log_id, seq)`.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::audit::segment;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Segment index; 0 = the first segment there is.
    pub segment: u64,
    /// Byte offset of the next unread record in that segment.
    pub offset: u64,
    /// `seq` of the last record delivered.
    pub last_seq: Option<u64>,
}

pub fn path(dir: &Path, sink: &str) -> PathBuf {
    dir.join("cursors").join(format!("{sink}.json"))
}

pub fn load(path: &Path) -> Cursor {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Atomic replace: a crash leaves the old or the new cursor, never a torn one.
pub fn save(path: &Path, c: &Cursor) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(c).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// One record read for delivery.
#[derive(Debug, Clone)]
pub struct Item {
    pub line: Vec<u8>,
    pub log_id: String,
    pub seq: u64,
}

/// Reads up to `max_records` / about `max_bytes` complete records after `from`; returns them and
/// the cursor just past them. A partial final line (the writer is mid-write) is left for later.
pub fn read_batch(
    dir: &Path,
    from: &Cursor,
    max_records: usize,
    max_bytes: usize,
) -> std::io::Result<(Vec<Item>, Cursor)> {
    let mut items = Vec::new();
    let mut bytes = 0usize;
    let mut cur = from.clone();
    let segs = segment::list(dir)?;
    for (index, path) in segs {
        if index < cur.segment {
            continue;
        }
        if index > cur.segment {
            cur.segment = index;
            cur.offset = 0;
        }
        let mut f = std::fs::File::open(&path)?;
        let len = f.metadata()?.len();
        if cur.offset > len {
            // The segment shrank (recovery cut a torn record): resume at its end.
            cur.offset = len;
        }
        f.seek(SeekFrom::Start(cur.offset))?;
        let mut lines = segment::Lines::new(f, cur.offset, len - cur.offset);
        while let Some(line) = lines.next_line()? {
            if !line.complete {
                return Ok((items, cur));
            }
            cur.offset = line.offset + line.bytes.len() as u64 + 1;
            let v: serde_json::Value = match serde_json::from_slice(&line.bytes) {
                Ok(v) => v,
                // Damaged lines are verify's business; the sink skips them.
                Err(_) => continue,
            };
            let seq = v.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
            let log_id = v
                .get("log_id")
                .and_then(|s| s.as_str())
                .unwrap_or_default()
                .to_string();
            cur.last_seq = Some(seq);
            bytes += line.bytes.len();
            items.push(Item {
                line: line.bytes,
                log_id,
                seq,
            });
            if items.len() >= max_records || bytes >= max_bytes {
                return Ok((items, cur));
            }
        }
    }
    Ok((items, cur))
}
