//! One stderr line, made fit for the gateway's log: read with a bounded buffer, cut to a length,
//! and escaped so that it stays one line that cannot pass for another.

use std::fmt::Write as _;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest part of a line that is kept, before and after escaping.
pub const MAX_LINE: usize = 4096;

/// A line as read: its first [`MAX_LINE`] bytes, and how long it really was.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RawLine {
    pub bytes: Vec<u8>,
    pub len: usize,
}

impl RawLine {
    pub fn was_cut(&self) -> bool {
        self.len > self.bytes.len()
    }
}

/// Splits a byte stream into lines holding at most [`MAX_LINE`] bytes each: the rest of a
/// longer line is read and dropped, so a server that never writes a newline cannot make the
/// gateway buffer without end. Cancel-safe: a partly read line stays here until it is complete.
pub struct LineReader<R> {
    inner: R,
    line: RawLine,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    pub fn new(inner: R) -> LineReader<R> {
        LineReader {
            inner,
            line: RawLine::default(),
        }
    }

    /// The next line without its `\n`; `None` at the end of the stream. The last line counts
    /// even without a final newline.
    pub async fn next_line(&mut self) -> std::io::Result<Option<RawLine>> {
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                let last = std::mem::take(&mut self.line);
                return Ok((last.len > 0).then_some(last));
            }
            let end = chunk.iter().position(|&b| b == b'\n');
            let take = end.unwrap_or(chunk.len());
            let room = MAX_LINE.saturating_sub(self.line.bytes.len());
            self.line.bytes.extend_from_slice(&chunk[..take.min(room)]);
            self.line.len = self.line.len.saturating_add(take);
            self.inner.consume(take + usize::from(end.is_some()));
            if end.is_some() {
                return Ok(Some(std::mem::take(&mut self.line)));
            }
        }
    }
}

/// Characters that would break a log line, fake a different one or hide what it says:
/// control characters (line breaks, ANSI escape sequences, C1 controls), Unicode line and
/// paragraph separators, and invisible or direction-changing format characters.
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// `text` as one printable line: a backslash becomes `\\`, `\n`, `\r` and `\t` are written
/// so, other characters of [`must_escape`] as `\x1b` or `\u{202e}`. Output stops at about
/// [`MAX_LINE`] bytes; returns whether it stopped early.
pub fn escape_into(text: &str, out: &mut String) -> bool {
    for c in text.chars() {
        if out.len() >= MAX_LINE {
            return true;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if must_escape(c) && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if must_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    false
}

/// The marker appended to a line that was cut.
pub fn cut_marker(out: &mut String, len: usize) {
    let _ = write!(out, " [cut: the line had {len} bytes]");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut o = String::new();
        escape_into(s, &mut o);
        o
    }

    #[test]
    fn a_forged_line_and_ansi_stay_on_one_visible_line() {
        assert_eq!(
            escaped("ok\n2026-01-01T00:00:00Z ERROR portcullis: level=ERROR server=other"),
            "ok\\n2026-01-01T00:00:00Z ERROR portcullis: level=ERROR server=other"
        );
        assert_eq!(escaped("\x1b[31mred\x1b[0m\r"), "\\x1b[31mred\\x1b[0m\\r");
        assert_eq!(
            escaped("a\u{9b}b\u{2028}c\u{202e}d\u{7f}"),
            "a\\u{9b}b\\u{2028}c\\u{202e}d\\x7f"
        );
        // A backslash is escaped too, so `\n` written literally cannot pass for an escape.
        assert_eq!(escaped("C:\\n"), "C:\\\\n");
        assert_eq!(escaped("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
    }

    #[test]
    fn escaping_is_bounded_even_when_every_character_grows() {
        let mut o = String::new();
        assert!(escape_into(&"\x01".repeat(MAX_LINE), &mut o));
        assert!(o.len() < MAX_LINE + 16, "{}", o.len());
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_the_rest_is_skipped() {
        let mut input = vec![b'a'; MAX_LINE * 3];
        input.extend_from_slice(b"\nnext\nlast without newline");
        let mut r = LineReader::new(tokio::io::BufReader::with_capacity(1000, &input[..]));
        let first = r.next_line().await.unwrap().unwrap();
        assert_eq!(first.bytes.len(), MAX_LINE);
        assert_eq!(first.len, MAX_LINE * 3);
        assert!(first.was_cut());
        let next = r.next_line().await.unwrap().unwrap();
        assert_eq!(next.bytes, b"next");
        assert!(!next.was_cut());
        let last = r.next_line().await.unwrap().unwrap();
        assert_eq!(last.bytes, b"last without newline");
        assert_eq!(r.next_line().await.unwrap(), None);
    }
}
