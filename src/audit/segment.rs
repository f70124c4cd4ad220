//! Segment files (`DIR/audit-NNNNNN.jsonl`) and reading their lines with bounded memory.
//!
//! The writer allocates a segment's space ahead of its records (see `writer.rs`), so a segment
//! being written, or one left by a crash, ends in zero bytes. Records never contain a zero byte
//! (they are JSON text), so the first zero byte marks the end of the records.

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

/// Where a segment's records end: its length, less the zeros written ahead of the records (a
/// binary search: records hold no zero byte, and only zeros follow them).
pub fn records_end(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let zero_at = |pos: u64| -> std::io::Result<bool> {
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, pos)?;
        Ok(b[0] == 0)
    };
    let (mut lo, mut hi) = (0u64, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if zero_at(mid)? {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
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
/// Reading ends at the first zero byte (the end of the records).
pub struct Lines<R> {
    inner: BufReader<std::io::Take<R>>,
    offset: u64,
    number: u64,
    /// A zero byte was reached at `offset`.
    at_zero: bool,
}

impl<R: Read> Lines<R> {
    pub fn new(r: R, start_offset: u64, limit: u64) -> Self {
        Lines {
            inner: BufReader::with_capacity(256 << 10, r.take(limit)),
            offset: start_offset,
            number: 0,
            at_zero: false,
        }
    }

    /// Where the records end: the offset after the last byte read so far. Once
    /// [`Self::next_line`] has returned `None`, the end of the records in the file.
    pub fn end_of_records(&self) -> u64 {
        self.offset
    }

    /// After the records ended at a zero byte: where the first non-zero byte after it is, if
    /// there is one. Space allocated ahead is all zeros, so data there means records were
    /// zeroed out, or a write was torn by a crash. Reads the rest of the file.
    pub fn data_after_end(&mut self) -> std::io::Result<Option<u64>> {
        if !self.at_zero {
            return Ok(None);
        }
        let mut at = self.offset;
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            if let Some(i) = buf.iter().position(|&b| b != 0) {
                return Ok(Some(at + i as u64));
            }
            let n = buf.len();
            self.inner.consume(n);
            at += n as u64;
        }
    }

    pub fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut bytes = Vec::new();
        let mut too_long = false;
        let start = self.offset;
        loop {
            let buf = if self.at_zero {
                &[][..]
            } else {
                self.inner.fill_buf()?
            };
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
            let (take, done) = match buf.iter().position(|&b| b == b'\n' || b == 0) {
                Some(i) if buf[i] == 0 => {
                    // The end of the records: what came before it is a final line without
                    // its newline, as if the file ended here.
                    self.at_zero = true;
                    (i, false)
                }
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

#[cfg(test)]
mod tests {
    #[test]
    fn records_end_skips_the_space_written_ahead() {
        let dir = std::env::temp_dir().join(format!("pc-seg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s");
        for (records, zeros) in [(0usize, 0usize), (10, 0), (10, 4096), (0, 100), (1, 1)] {
            let mut b = vec![b'x'; records];
            b.extend(vec![0u8; zeros]);
            std::fs::write(&p, &b).unwrap();
            assert_eq!(
                records_end(&p).unwrap(),
                records as u64,
                "{records}+{zeros}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    use super::*;

    /// `(offset, bytes, complete)` of one line.
    type Read = (u64, Vec<u8>, bool);

    fn read_all(data: &[u8]) -> (Vec<Read>, u64, Option<u64>) {
        let mut l = Lines::new(data, 0, data.len() as u64);
        let mut out = Vec::new();
        while let Some(line) = l.next_line().expect("read") {
            out.push((line.offset, line.bytes, line.complete));
        }
        let end = l.end_of_records();
        (out, end, l.data_after_end().expect("scan"))
    }

    #[test]
    fn space_allocated_ahead_ends_the_records() {
        let (lines, end, after) = read_all(b"{\"a\":1}\n{\"b\":2}\n\0\0\0\0\0\0");
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.2));
        assert_eq!(end, 16);
        assert_eq!(after, None);
    }

    #[test]
    fn a_record_cut_by_the_zeros_is_an_incomplete_final_line() {
        let (lines, end, after) = read_all(b"{\"a\":1}\n{\"b\0\0\0\0");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], (8, b"{\"b".to_vec(), false));
        assert_eq!(end, 11);
        assert_eq!(after, None);
    }

    #[test]
    fn data_after_zeros_is_reported_with_its_offset() {
        let (lines, end, after) = read_all(b"{\"a\":1}\n\0\0\0{\"c\":3}\n\0\0");
        assert_eq!(lines.len(), 1);
        assert_eq!(end, 8);
        assert_eq!(after, Some(11));
    }

    #[test]
    fn a_file_without_zeros_reads_as_before() {
        let (lines, end, after) = read_all(b"{\"a\":1}\n{\"b\"");
        assert_eq!(lines.len(), 2);
        assert!(!lines[1].2);
        assert_eq!(end, 12);
        assert_eq!(after, None);
    }
}
