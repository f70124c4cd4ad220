//! Reading a remote server's response bodies within its message-size limit: a JSON body whole,
//! an SSE body event by event.
//!
//! A body or event over the limit is not read further: the caller drops the response (which
//! aborts it), and only the request it answered fails. A declared `Content-Length` over the
//! limit is refused before a byte of the body is read.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{error_chain, sse};

/// An SSE stream with no bytes at all (not even keep-alives) for this long is dead.
const SSE_IDLE: Duration = Duration::from_secs(5 * 60);

/// Why a body could not be read.
#[derive(Debug)]
pub(super) enum ReadError {
    /// Over the limit; `size` when the server declared it.
    TooLarge {
        size: Option<u64>,
        limit: usize,
    },
    Failed(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::TooLarge {
                size: Some(n),
                limit,
            } => write!(
                f,
                "a message of {n} bytes is over the limit of {limit} bytes (max_message_bytes)"
            ),
            ReadError::TooLarge { size: None, limit } => write!(
                f,
                "a message is over the limit of {limit} bytes (max_message_bytes)"
            ),
            ReadError::Failed(e) => f.write_str(e),
        }
    }
}

impl From<ReadError> for String {
    fn from(e: ReadError) -> String {
        e.to_string()
    }
}

/// Reads a whole JSON body of at most `max` bytes within `time`; `declared` is its
/// `Content-Length`.
pub(super) async fn json(
    mut body: Incoming,
    declared: Option<u64>,
    max: usize,
    time: Duration,
) -> Result<Bytes, ReadError> {
    if declared.is_some_and(|n| n > max as u64) {
        return Err(ReadError::TooLarge {
            size: declared,
            limit: max,
        });
    }
    let read = async {
        // Sized from the declared length: a large body is copied into place once, never
        // re-copied as a buffer doubles.
        let capacity = declared.map_or(0, |n| usize::try_from(n).unwrap_or(max).min(max));
        let mut out = BytesMut::with_capacity(capacity);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ReadError::Failed(format!("reading the response failed: {}", error_chain(&e)))
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if out.len() + data.len() > max {
                return Err(ReadError::TooLarge {
                    size: None,
                    limit: max,
                });
            }
            out.extend_from_slice(&data);
        }
        Ok(out.freeze())
    };
    tokio::time::timeout(time, read).await.map_err(|_| {
        ReadError::Failed(format!(
            "response body not received within {}s",
            time.as_secs()
        ))
    })?
}

/// Reads SSE events off a response body, with the parser's bounds and an idle timeout.
pub(super) struct SseReader {
    body: Incoming,
    parser: sse::Parser,
    max: usize,
    ready: std::collections::VecDeque<sse::Event>,
}

impl SseReader {
    pub(super) fn new(body: Incoming, max: usize) -> SseReader {
        SseReader {
            body,
            parser: sse::Parser::new(max),
            max,
            ready: std::collections::VecDeque::new(),
        }
    }

    /// The next event, `None` at the end of the stream. After an error the stream is unusable.
    pub(super) async fn next(&mut self) -> Result<Option<sse::Event>, ReadError> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Ok(Some(ev));
            }
            let frame = match tokio::time::timeout(SSE_IDLE, self.body.frame()).await {
                Err(_) => {
                    return Err(ReadError::Failed(format!(
                        "no data for {}s",
                        SSE_IDLE.as_secs()
                    )))
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(ReadError::Failed(error_chain(&e))),
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                let evs = self.parser.feed(&data).map_err(|e| match e {
                    sse::SseError::TooLarge(_) => ReadError::TooLarge {
                        size: None,
                        limit: self.max,
                    },
                })?;
                self.ready.extend(evs);
            }
        }
    }
}
