//! The stdio transport: newline-delimited JSON-RPC over a server's stdin and stdout.
//!
//! A line over the server's `max_message_bytes` is not buffered: its first bytes are kept (to
//! read which request it answers), the rest is read and thrown away as it arrives, and the
//! connection goes on with the next line. The server keeps running, and only the request that
//! line answered fails (see [`super::connection::oversized`]).

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::connection::{dispatch_message, oversized, parse_incoming, Connection};
use super::UpstreamEvent;
use crate::sandbox::{BoxRead, BoxWrite};

/// Bytes kept from the start of an oversized line: ids come first in practice.
const HEAD_BYTES: usize = 4096;
/// A line buffer grown past this is given back after its line rather than kept for the next:
/// one large answer must not pin its size in memory for the life of the connection.
const KEEP_BUFFER: usize = 1 << 20;
/// Read buffer of the pipe.
const READ_BUFFER: usize = 64 * 1024;

pub(super) async fn write_loop(mut stdin: BoxWrite, mut rx: mpsc::Receiver<Bytes>) {
    let mut buf = Vec::with_capacity(8192);
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        buf.push(b'\n');
        // Coalesce whatever else is queued into one write: under load this turns many small
        // pipe writes into one.
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(more) => {
                    buf.extend_from_slice(&more);
                    buf.push(b'\n');
                }
                Err(_) => break,
            }
        }
        if stdin.write_all(&buf).await.is_err() || stdin.flush().await.is_err() {
            break;
        }
        if buf.capacity() > KEEP_BUFFER {
            buf = Vec::with_capacity(8192);
        }
    }
    let _ = stdin.shutdown().await;
}

pub(super) async fn read_loop(
    source: Arc<super::Source>,
    stdout: BoxRead,
    conn: Arc<Connection>,
    events: mpsc::Sender<UpstreamEvent>,
) -> String {
    let limit = source.max_message_bytes;
    let mut reader = BufReader::with_capacity(READ_BUFFER, stdout);
    let mut line = Vec::with_capacity(8192);
    loop {
        line.clear();
        if line.capacity() > KEEP_BUFFER {
            line = Vec::with_capacity(8192);
        }
        let read = match read_line(&mut reader, &mut line, limit).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        match read {
            Line::End => return "closed its stdout".to_owned(),
            Line::Whole => {
                let text = trim_line(&line);
                if text.is_empty() {
                    continue;
                }
                let parsed = parse_incoming(&source, text);
                if line.capacity() > KEEP_BUFFER {
                    line = Vec::with_capacity(8192);
                }
                let Some(message) = parsed else { continue };
                if let Err(reason) = dispatch_message(&source, &conn, &events, message, None).await
                {
                    return reason;
                }
            }
            Line::TooLong { size } => {
                oversized(&source, &conn, &line, Some(size), limit).await;
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A whole line is in the buffer.
    Whole,
    /// The line was over the limit: the buffer holds its first [`HEAD_BYTES`], `size` is its
    /// length without the line ending.
    TooLong { size: u64 },
    /// The stream ended (a last line without a newline still counts as `Whole`).
    End,
}

/// Reads one line into `out`, or skips it when it is longer than `limit`.
async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<Line, String> {
    let mut skipped: Option<u64> = None;
    loop {
        let available = match reader.fill_buf().await {
            Ok(b) => b,
            Err(e) => return Err(format!("stdout read failed: {e}")),
        };
        if available.is_empty() {
            return Ok(match skipped {
                Some(size) => Line::TooLong { size },
                None if out.is_empty() => Line::End,
                None => Line::Whole,
            });
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let len = chunk.len();
        let content = if done { len - 1 } else { len } as u64;
        match &mut skipped {
            Some(size) => *size += content,
            None if out.len() as u64 + content > limit as u64 => {
                let size = out.len() as u64 + content;
                let room = HEAD_BYTES.saturating_sub(out.len()).min(len);
                out.extend_from_slice(&chunk[..room]);
                out.truncate(HEAD_BYTES);
                out.shrink_to(HEAD_BYTES);
                skipped = Some(size);
            }
            None => out.extend_from_slice(chunk),
        }
        reader.consume(len);
        if done {
            return Ok(match skipped {
                Some(size) => Line::TooLong { size },
                None => Line::Whole,
            });
        }
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && (line[end - 1] == b'\n' || line[end - 1] == b'\r') {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `chunk` bytes per read, like a pipe.
    struct Pipe(std::collections::VecDeque<Vec<u8>>);

    impl tokio::io::AsyncRead for Pipe {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if let Some(p) = self.0.pop_front() {
                buf.put_slice(&p);
            }
            std::task::Poll::Ready(Ok(()))
        }
    }

    async fn lines(input: &[u8], limit: usize, chunk: usize) -> Vec<(Line, Vec<u8>)> {
        let pipe = Pipe(input.chunks(chunk).map(<[u8]>::to_vec).collect());
        let mut reader = BufReader::with_capacity(chunk, pipe);
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            let l = read_line(&mut reader, &mut line, limit).await.unwrap();
            if l == Line::End {
                return out;
            }
            out.push((l, line));
        }
    }

    #[tokio::test]
    async fn an_oversized_line_is_skipped_with_its_head_and_size_kept() {
        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":7,\"result\":\"{}\"}}",
            "x".repeat(100_000)
        );
        let input = format!("{{\"a\":1}}\n{big}\n{{\"b\":2}}\r\nlast");
        for chunk in [7, 4096, 65536] {
            let got = lines(input.as_bytes(), 50_000, chunk).await;
            assert_eq!(got.len(), 4, "chunk {chunk}");
            assert_eq!(got[0], (Line::Whole, b"{\"a\":1}\n".to_vec()));
            assert_eq!(
                got[1].0,
                Line::TooLong {
                    size: big.len() as u64
                }
            );
            assert_eq!(got[1].1, big.as_bytes()[..HEAD_BYTES].to_vec());
            assert_eq!(trim_line(&got[2].1), b"{\"b\":2}");
            assert_eq!(got[3], (Line::Whole, b"last".to_vec()));
        }
    }

    #[tokio::test]
    async fn a_line_of_exactly_the_limit_is_whole() {
        let line = "y".repeat(1000);
        let got = lines(format!("{line}\n").as_bytes(), 1000, 64).await;
        assert_eq!(got[0].0, Line::Whole);
        let got = lines(format!("{line}z\n").as_bytes(), 1000, 64).await;
        assert_eq!(got[0].0, Line::TooLong { size: 1001 });
    }
}
