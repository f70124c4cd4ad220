//! Resumable SSE streams.
//!
//! Every message for a client is appended to an `EventStream` (the session's standalone stream,
//! or the stream of one POST). A connected HTTP response reads from it; when the connection
//! drops, the events stay buffered (bounded) so that the client can resume with
//! `Last-Event-ID` and miss nothing.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tokio::sync::Notify;

use crate::router::MessageSink;

/// How long a client should wait before reconnecting a dropped stream (SSE `retry:`).
const RECONNECT_MS: u64 = 1000;
/// Buffered events per stream before the oldest are dropped.
const MAX_EVENTS: usize = 1024;
/// Buffered bytes per stream before the oldest events are dropped.
const MAX_BYTES: usize = 8 * 1024 * 1024;

pub struct EventStream {
    /// Unique within its session; part of every event id.
    pub number: u64,
    state: Mutex<State>,
    notify: Notify,
}

struct State {
    events: VecDeque<(u64, Bytes)>,
    bytes: usize,
    next_seq: u64,
    closed: bool,
    attached: bool,
    /// Highest sequence number a reader has been handed (for re-attaching without an id).
    delivered: u64,
    /// Bumped by every attach, so a reader that was taken over knows to end.
    reader_gen: u64,
    closed_at: Option<std::time::Instant>,
}

impl EventStream {
    pub fn new(number: u64) -> Arc<EventStream> {
        Arc::new(EventStream {
            number,
            state: Mutex::new(State {
                events: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                closed: false,
                attached: false,
                delivered: 0,
                reader_gen: 0,
                closed_at: None,
            }),
            notify: Notify::new(),
        })
    }

    pub fn push(&self, message: Bytes) {
        if let Ok(mut s) = self.state.lock() {
            if s.closed {
                return;
            }
            let seq = s.next_seq;
            s.next_seq += 1;
            s.bytes += message.len();
            s.events.push_back((seq, message));
            while s.events.len() > MAX_EVENTS || s.bytes > MAX_BYTES {
                match s.events.pop_front() {
                    Some((_, old)) => s.bytes -= old.len(),
                    None => break,
                }
            }
        }
        self.notify.notify_waiters();
    }

    /// No more events will come; readers end after draining.
    pub fn close(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.closed = true;
            s.closed_at.get_or_insert_with(std::time::Instant::now);
        }
        self.notify.notify_waiters();
    }

    /// Waits until the stream has an event or is closed, at most `limit`.
    pub async fn first_event(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match self.state.lock() {
                    Ok(s) if s.events.is_empty() && !s.closed => {}
                    _ => return,
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    /// Whether `close` was called (cheaper than `closed_for`: no clock read).
    pub fn is_closed(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.closed)
    }

    /// Whether a connection is reading the stream now.
    pub fn is_attached(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.attached)
    }

    pub fn closed_for(&self) -> Option<Duration> {
        self.state.lock().ok()?.closed_at.map(|t| t.elapsed())
    }

    /// Claims the stream for one reader. `after` is the last sequence the client saw, or `None`
    /// to continue from what was last delivered. Without `after`, fails if another reader holds
    /// the stream; with it (a client resuming after a broken connection, which the server may
    /// not have noticed yet) the new reader takes over and the old one ends.
    pub fn attach(self: &Arc<Self>, after: Option<u64>) -> Option<Reader> {
        let mut s = self.state.lock().ok()?;
        if s.attached && after.is_none() {
            return None;
        }
        s.attached = true;
        s.reader_gen += 1;
        let cursor = after.unwrap_or(s.delivered);
        let generation = s.reader_gen;
        drop(s);
        self.notify.notify_waiters();
        Some(Reader {
            stream: self.clone(),
            cursor,
            generation,
        })
    }

    fn event_id(&self, seq: u64) -> String {
        format!("{}-{}", self.number, seq)
    }
}

/// Parses an event id of ours into (stream number, sequence).
pub fn parse_event_id(id: &str) -> Option<(u64, u64)> {
    let (stream, seq) = id.trim().split_once('-')?;
    Some((stream.parse().ok()?, seq.parse().ok()?))
}

impl MessageSink for EventStream {
    fn send(&self, message: Bytes) {
        self.push(message);
    }
}

/// One HTTP response reading a stream. Dropping it (the client went away) releases the stream.
pub struct Reader {
    stream: Arc<EventStream>,
    cursor: u64,
    generation: u64,
}

impl Drop for Reader {
    fn drop(&mut self) {
        if let Ok(mut s) = self.stream.state.lock() {
            if s.reader_gen == self.generation {
                s.attached = false;
                s.delivered = s.delivered.max(self.cursor);
            }
        }
    }
}

enum Next {
    Data(Bytes),
    End,
}

impl Reader {
    /// The next bytes to send; `End` when the stream is finished or `cutoff` has passed (the
    /// stream itself then stays resumable).
    async fn next(&mut self, keepalive: Duration, cutoff: Option<tokio::time::Instant>) -> Next {
        loop {
            let notified = self.stream.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let Ok(mut s) = self.stream.state.lock() else {
                    return Next::End;
                };
                if s.reader_gen != self.generation {
                    // Another connection resumed this stream.
                    return Next::End;
                }
                let cursor = self.cursor;
                let mut out = BytesMut::new();
                for (seq, msg) in s.events.iter().filter(|(seq, _)| *seq > cursor) {
                    frame_event(&mut out, &self.stream.event_id(*seq), msg);
                    self.cursor = *seq;
                }
                s.delivered = s.delivered.max(self.cursor);
                if !out.is_empty() {
                    return Next::Data(out.freeze());
                }
                if s.closed {
                    return Next::End;
                }
            }
            // A disabled branch's sleep is never polled, so it never enters the timer wheel.
            let until = cutoff.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(keepalive) => {
                    return Next::Data(Bytes::from_static(b": keep-alive\n\n"));
                }
                _ = tokio::time::sleep_until(until), if cutoff.is_some() => return Next::End,
            }
        }
    }
}

fn frame_event(out: &mut BytesMut, id: &str, data: &[u8]) {
    out.put_slice(b"id: ");
    out.put_slice(id.as_bytes());
    out.put_slice(b"\nevent: message\ndata: ");
    // Serialized JSON has no raw newlines, so one data line carries the whole message.
    out.put_slice(data);
    out.put_slice(b"\n\n");
}

pub type SseBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The response body for a reader: an optional priming event, then events until the stream
/// ends or, with `poll`, until that much time has passed (the client then resumes with GET).
pub fn body(reader: Reader, priming: bool, keepalive: Duration, poll: Option<Duration>) -> SseBody {
    let cutoff = poll.map(|d| tokio::time::Instant::now() + d);
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    let first = if priming {
        // Priming: an event id with empty data, so the client can resume even before the first
        // real event (spec 2025-11-25).
        let id = reader.stream.event_id(reader.cursor);
        Some(Bytes::from(format!(
            "id: {id}\nretry: {RECONNECT_MS}\ndata: \n\n"
        )))
    } else {
        None
    };
    let stream =
        futures_util::stream::unfold((reader, first), move |(mut reader, first)| async move {
            if let Some(b) = first {
                return Some((b, (reader, None)));
            }
            match reader.next(keepalive, cutoff).await {
                Next::Data(b) => Some((b, (reader, None))),
                Next::End => None,
            }
        });
    BodyExt::boxed(StreamBody::new(
        stream.map(|b| Ok::<_, Infallible>(Frame::data(b))),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(body: SseBody) -> String {
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn delivers_then_ends_when_closed() {
        let s = EventStream::new(3);
        s.push(Bytes::from_static(b"{\"a\":1}"));
        s.push(Bytes::from_static(b"{\"a\":2}"));
        s.close();
        let text = collect(body(
            s.attach(None).unwrap(),
            true,
            Duration::from_secs(5),
            None,
        ))
        .await;
        assert!(
            text.starts_with("id: 3-0\nretry: 1000\ndata: \n\n"),
            "{text}"
        );
        assert!(text.contains("id: 3-1\nevent: message\ndata: {\"a\":1}\n\n"));
        assert!(text.contains("id: 3-2\n"));
    }

    #[tokio::test]
    async fn resumes_after_last_event_id_and_refuses_second_reader() {
        let s = EventStream::new(1);
        for i in 0..3 {
            s.push(Bytes::from(format!("{{\"n\":{i}}}")));
        }
        let r = s.attach(None).unwrap();
        assert!(s.attach(None).is_none(), "second concurrent reader");
        drop(r);
        s.close();
        let text = collect(body(
            s.attach(Some(2)).unwrap(),
            false,
            Duration::from_secs(5),
            None,
        ))
        .await;
        assert!(
            !text.contains("\"n\":0") && !text.contains("\"n\":1"),
            "{text}"
        );
        assert!(
            text.contains("id: 1-3\n") && text.contains("\"n\":2"),
            "{text}"
        );
        assert_eq!(parse_event_id("1-3"), Some((1, 3)));
        assert_eq!(parse_event_id("x"), None);
    }

    #[tokio::test]
    async fn polling_ends_the_response_but_keeps_the_stream() {
        let s = EventStream::new(4);
        let early = collect(body(
            s.attach(None).unwrap(),
            true,
            Duration::from_secs(5),
            Some(Duration::from_millis(20)),
        ))
        .await;
        assert!(early.starts_with("id: 4-0\n"), "{early}");
        s.push(Bytes::from_static(b"{\"late\":true}"));
        s.close();
        let rest = collect(body(
            s.attach(Some(0)).unwrap(),
            false,
            Duration::from_secs(5),
            None,
        ))
        .await;
        assert!(
            rest.contains("id: 4-1\n") && rest.contains("late"),
            "{rest}"
        );
    }

    #[tokio::test]
    async fn first_event_returns_on_the_first_push_or_at_the_bound() {
        let s = EventStream::new(5);
        // Nothing comes: it gives up at its bound rather than waiting for ever.
        let gave_up = tokio::time::timeout(
            Duration::from_secs(10),
            s.first_event(Duration::from_millis(5)),
        )
        .await;
        assert!(gave_up.is_ok(), "did not return at its bound");
        // A push wakes it long before its (one-hour) bound.
        let pusher = s.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            pusher.push(Bytes::from_static(b"{}"));
        });
        let woke = tokio::time::timeout(
            Duration::from_secs(10),
            s.first_event(Duration::from_secs(3600)),
        )
        .await;
        assert!(woke.is_ok(), "a push did not end the wait");
        // A closed stream has nothing more to wait for.
        let closed = EventStream::new(6);
        closed.close();
        let done = tokio::time::timeout(
            Duration::from_secs(10),
            closed.first_event(Duration::from_secs(3600)),
        )
        .await;
        assert!(done.is_ok(), "waited on a closed stream");
    }

    #[tokio::test]
    async fn keepalive_comments_flow_while_idle() {
        let s = EventStream::new(0);
        let mut reader = s.attach(None).unwrap();
        match reader.next(Duration::from_millis(10), None).await {
            Next::Data(b) => assert_eq!(&b[..], b": keep-alive\n\n"),
            Next::End => panic!("ended"),
        }
    }
}
