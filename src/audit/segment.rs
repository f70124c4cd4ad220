//! Segment files (`DIR/audit-NNNNNN.jsonl`) and reading their lines with bounded memory.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// A longer line is not a record we wrote; readers stop with an error instead of buffering it.
pub const MAX_LINE_BYTES: usize = 16 << 20;

pub fn name(index: u64) -> String {
    format!("audit-{index:06}.jsonl")
}

/// The index of a segment file name, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, in index order.
pub fn list(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(i) = entry.file_name().to_str().and_then(parse_name) {
            out.push((i, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// One line of a segment.
#[derive(Debug)]
pub struct Line {
    /// Byte offset of the line's start in its file.
    pub offset: u64,
    /// 1-based line number.
    pub number: u64,
    /// Without the newline.
    pub bytes: Vec<u8>,
    /// False for a final line with no newline (torn or truncated).
    pub complete: bool,
    /// The line was longer than [`MAX_LINE_BYTES`]; `bytes` holds its beginning only.
    pub too_long: bool,
}

/// Reads lines of at most [`MAX_LINE_BYTES`]; never reads past `limit` bytes of the file.
pub struct Lines<R> {
    inner: BufReader<std::io::Take<R>>,
    offset: u64,
    number: u64,
}

impl<R: Read> Lines<R> {
    pub fn new(r: R, start_offset: u64, limit: u64) -> Self {
        Lines {
            inner: BufReader::with_capacity(256 << 10, r.take(limit)),
            offset: start_offset,
            number: 0,
        }
    }

    pub fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut bytes = Vec::new();
        let mut too_long = false;
        let start = self.offset;
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                if bytes.is_empty() && !too_long {
                    return Ok(None);
                }
                self.number += 1;
                return Ok(Some(Line {
                    offset: start,
                    number: self.number,
                    bytes,
                    complete: false,
                    too_long,
                }));
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let content = if done { &buf[..take - 1] } else { &buf[..take] };
            let room = MAX_LINE_BYTES.saturating_sub(bytes.len());
            if content.len() > room {
                too_long = true;
            }
            bytes.extend_from_slice(&content[..content.len().min(room)]);
            self.inner.consume(take);
            self.offset += take as u64;
            if done {
                self.number += 1;
                return Ok(Some(Line {
                    offset: start,
                    number: self.number,
                    bytes,
                    complete: true,
                    too_long,
                }));
            }
        }
    }
}

/// Opens a segment for reading, bounded by the length it has now (a character device such as
/// `/dev/full` reports 0 and is read as empty).
pub fn open_lines(path: &Path) -> std::io::Result<Lines<std::fs::File>> {
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    Ok(Lines::new(f, 0, len))
}
