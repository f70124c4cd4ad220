//! The last lines a server wrote to its stderr, logged or not, for telling why it failed.
//! Bounded in lines and bytes; lines are stored as read and made presentable (redacted, escaped)
//! only when someone asks, so that a flood costs a copy per line and no more.

use std::collections::VecDeque;
use std::sync::Arc;

use super::line::RawLine;
use crate::secrets::Redactor;

/// Lines kept per server.
pub const TAIL_LINES: usize = 50;
/// Bytes kept per server (each line holds at most `line::MAX_LINE`).
pub const TAIL_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub struct Tail {
    lines: VecDeque<(RawLine, Arc<Redactor>)>,
    bytes: usize,
}

impl Tail {
    /// Keeps `line` and the redactor of the instance that wrote it (its secrets).
    pub fn push(&mut self, line: RawLine, redactor: &Arc<Redactor>) {
        self.bytes += line.bytes.len();
        self.lines.push_back((line, redactor.clone()));
        while self.lines.len() > TAIL_LINES || (self.bytes > TAIL_BYTES && self.lines.len() > 1) {
            if let Some((gone, _)) = self.lines.pop_front() {
                self.bytes -= gone.bytes.len();
            }
        }
    }

    /// The kept lines, oldest first, as the log would show them.
    pub fn render(&self) -> Vec<String> {
        self.lines
            .iter()
            .map(|(line, redactor)| super::present(line, redactor))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str) -> RawLine {
        RawLine {
            bytes: text.as_bytes().to_vec(),
            len: text.len(),
        }
    }

    #[test]
    fn keeps_the_last_lines_within_its_bounds() {
        let r = Arc::new(Redactor::new([("TOKEN", "secret-value-1234")]));
        let mut t = Tail::default();
        for i in 0..1000 {
            t.push(line(&format!("line {i} secret-value-1234")), &r);
        }
        let lines = t.render();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines[TAIL_LINES - 1], "line 999 [REDACTED:TOKEN]");
        let big = "x".repeat(4000);
        for _ in 0..100 {
            t.push(line(&big), &r);
        }
        assert!(t.bytes <= TAIL_BYTES, "{}", t.bytes);
    }
}
