//! Resumable SSE streams.
//!
//! Every message for a client is appended to an `EventStream` (the session's standalone stream,
//! or the stream of one POST). A connected HTTP response reads from it; when the connection
//! drops, the events stay buffered so that the client can resume with `Last-Event-ID`.
//!
//! The buffer's contract: answers (responses) and requests to the client are never dropped,
//! whatever their size; they wait until the stream is read or expires with its session.
//! Notifications are bounded ([`MAX_EVENTS`], [`MAX_BYTES`]): past that the oldest are dropped.
//! When notifications a client has not read are dropped, the next reader gets one
//! `notifications/message` warning saying how many, in their place and before anything
//! after them (once per burst), and `/metrics` counts them by session and server.
//!
//! Messages go out as they were buffered: a large one is handed to the connection as the same
//! shared bytes, never copied into its SSE frame.

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
/// Buffered notifications per stream before the oldest are dropped.
pub const MAX_EVENTS: usize = 1024;
/// Buffered notification bytes per stream before the oldest are dropped (the newest is kept
/// even when it alone is larger).
pub const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Messages up to this size are copied into their frame; larger ones are sent as they are.
const COPY_BELOW: usize = 16 * 1024;

pub struct EventStream {
    /// Unique within its session; part of every event id.
    pub number: u64,
    /// The session's digest, for metrics.
    session: Arc<str>,
    state: Mutex<State>,
    notify: Notify,
}

struct Event {
    seq: u64,
    message: Bytes,
    /// A notification (may be dropped under pressure), and who sent it.
    notification: Option<Arc<str>>,
    /// An answer already let go of (see [`EventStream::let_go`]): only a stand-in is left.
    spent: bool,
}

struct State {
    events: VecDeque<Event>,
    /// Notifications in `events`, and their bytes.
    notifications: usize,
    notification_bytes: usize,
    /// Notifications dropped before any reader had them, since the last warning.
    unreported: u64,
    /// Answers (and requests) a reader has been handed that are still buffered, and their
    /// bytes: kept for resumption within the same bounds as notifications.
    sent_answers: usize,
    sent_answer_bytes: usize,
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
    /// A stream of the session whose audit digest is `session`.
    pub fn new(number: u64, session: Arc<str>) -> Arc<EventStream> {
        Arc::new(EventStream {
            number,
            session,
            state: Mutex::new(State {
                events: VecDeque::new(),
                notifications: 0,
                notification_bytes: 0,
                unreported: 0,
                sent_answers: 0,
                sent_answer_bytes: 0,
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

    /// Appends a message the gateway itself sends.
    pub fn push(&self, message: Bytes) {
        self.append(None, message);
    }

    fn append(&self, server: Option<&str>, message: Bytes) {
        if let Ok(mut s) = self.state.lock() {
            if s.closed {
                return;
            }
            let seq = s.next_seq;
            s.next_seq += 1;
            let notification = crate::mcp::is_notification(&message)
                .then(|| Arc::from(server.unwrap_or("gateway")));
            if notification.is_some() {
                s.notifications += 1;
                s.notification_bytes += message.len();
            }
            s.events.push_back(Event {
                seq,
                message,
                notification,
                spent: false,
            });
            self.evict(&mut s);
        }
        self.notify.notify_waiters();
    }

    /// Keeps what is buffered within the bounds: drops the oldest notifications (never the one
    /// just pushed) and lets go of answers already handed to a reader, oldest first. An answer
    /// no reader has had is never touched.
    fn evict(&self, s: &mut State) {
        while s.notifications + s.sent_answers > MAX_EVENTS
            || s.notification_bytes + s.sent_answer_bytes > MAX_BYTES
        {
            let newest = s.events.len().saturating_sub(1);
            let delivered = s.delivered;
            let Some(i) = s
                .events
                .iter()
                .enumerate()
                .position(|(i, e)| match &e.notification {
                    Some(_) => i < newest,
                    None => e.seq <= delivered,
                })
            else {
                return;
            };
            if s.events[i].notification.is_none() {
                self.let_go(s, i);
                continue;
            }
            let Some(old) = s.events.remove(i) else {
                return;
            };
            s.notifications -= 1;
            s.notification_bytes -= old.message.len();
            if old.seq > s.delivered {
                s.unreported += 1;
                let server = old.notification.as_deref().unwrap_or("gateway");
                crate::metrics::global().stream_dropped(&self.session, server);
            }
        }
    }

    /// Lets go of the answer at `i`, which a reader already had: a large one is replaced by an
    /// error for the same request, so that a client resuming from before it (its connection
    /// broke while the answer was on its way) learns to ask again instead of waiting.
    fn let_go(&self, s: &mut State, i: usize) {
        let ev = &mut s.events[i];
        let len = ev.message.len();
        if !ev.spent && len >= COPY_BELOW {
            let head = crate::mcp::head::read(&ev.message[..len.min(4096)]);
            if let (Some(id), true) = (head.id, head.is_response) {
                ev.message = crate::mcp::error_response_bytes(
                    Some(&id),
                    crate::mcp::ErrorCode::OVER_CAPACITY,
                    &format!(
                        "the answer to this request ({len} bytes) was sent on an earlier connection and is no longer kept for resumption (a stream keeps {} MiB of what it sent): send the request again",
                        MAX_BYTES >> 20
                    ),
                );
                ev.spent = true;
                s.sent_answer_bytes = s.sent_answer_bytes - len + ev.message.len();
                return;
            }
        }
        if let Some(old) = s.events.remove(i) {
            s.sent_answers -= 1;
            s.sent_answer_bytes -= old.message.len();
        }
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
        self.append(None, message);
    }

    fn send_from(&self, server: &str, message: Bytes) {
        self.append(Some(server), message);
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
                mark_delivered(&mut s, self.cursor);
            }
        }
    }
}

enum Next {
    /// Frames to write, in order.
    Data(VecDeque<Bytes>),
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
                let mut out = Frames::default();
                if s.unreported > 0 {
                    warn(&self.stream, &mut self.cursor, &mut s, &mut out);
                }
                let cursor = self.cursor;
                for ev in s.events.iter().filter(|e| e.seq > cursor) {
                    out.event(&self.stream.event_id(ev.seq), &ev.message);
                    self.cursor = ev.seq;
                }
                mark_delivered(&mut s, self.cursor);
                // What was just handed out counts against the bounds from now on: a large
                // answer on a finished stream is let go of once it is on its way.
                self.stream.evict(&mut s);
                let frames = out.finish();
                if !frames.is_empty() {
                    return Next::Data(frames);
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
                    return Next::Data(VecDeque::from([Bytes::from_static(b": keep-alive\n\n")]));
                }
                _ = tokio::time::sleep_until(until), if cutoff.is_some() => return Next::End,
            }
        }
    }
}

/// Moves the delivered mark to `upto`, counting the answers it passes.
fn mark_delivered(s: &mut State, upto: u64) {
    if upto <= s.delivered {
        return;
    }
    let from = s.delivered;
    for e in s.events.iter() {
        if e.seq > from && e.seq <= upto && e.notification.is_none() {
            s.sent_answers += 1;
            s.sent_answer_bytes += e.message.len();
        }
    }
    s.delivered = upto;
}

/// Writes the warning about dropped notifications where they were: before the first event
/// still buffered after `cursor`. Its id is the one before that event's, so a client that
/// resumes after the warning misses nothing that is left.
fn warn(stream: &EventStream, cursor: &mut u64, s: &mut State, out: &mut Frames) {
    let dropped = std::mem::take(&mut s.unreported);
    let next = s
        .events
        .iter()
        .find(|e| e.seq > *cursor)
        .map_or(s.next_seq, |e| e.seq);
    let id = (next - 1).max(*cursor);
    out.event(&stream.event_id(id), &drop_warning(dropped));
    *cursor = id;
    crate::metrics::global().stream_drop_warning(&stream.session);
}

/// The `notifications/message` that tells a client its stream lost notifications.
fn drop_warning(dropped: u64) -> Bytes {
    let params = serde_json::json!({
        "level": "warning",
        "logger": "portcullis",
        "data": format!(
            "portcullis dropped {dropped} notification(s) from this stream: more arrived than the \
             client read ({MAX_EVENTS} notifications or {} MiB are kept per stream). Answers are \
             never dropped.",
            MAX_BYTES >> 20
        ),
    });
    crate::mcp::Message::Notification(crate::mcp::Notification {
        method: crate::mcp::methods::MESSAGE.to_owned(),
        params: Some(crate::mcp::to_raw(&params)),
    })
    .to_bytes()
}

/// SSE frames for a batch of events: small events are copied into one buffer, a large message
/// becomes a frame of its own that shares the buffered bytes.
#[derive(Default)]
struct Frames {
    done: VecDeque<Bytes>,
    current: BytesMut,
}

impl Frames {
    fn event(&mut self, id: &str, data: &Bytes) {
        self.current.put_slice(b"id: ");
        self.current.put_slice(id.as_bytes());
        // Serialized JSON has no raw newlines, so one data line carries the whole message.
        self.current.put_slice(b"\nevent: message\ndata: ");
        if data.len() < COPY_BELOW {
            self.current.put_slice(data);
        } else {
            self.done.push_back(self.current.split().freeze());
            self.done.push_back(data.clone());
        }
        self.current.put_slice(b"\n\n");
    }

    fn finish(mut self) -> VecDeque<Bytes> {
        if !self.current.is_empty() {
            self.done.push_back(self.current.freeze());
        }
        self.done
    }
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
    let queue: VecDeque<Bytes> = first.into_iter().collect();
    let stream =
        futures_util::stream::unfold((reader, queue), move |(mut reader, mut queue)| async move {
            if let Some(b) = queue.pop_front() {
                return Some((b, (reader, queue)));
            }
            match reader.next(keepalive, cutoff).await {
                Next::Data(mut frames) => {
                    let b = frames.pop_front()?;
                    Some((b, (reader, frames)))
                }
                Next::End => None,
            }
        });
    BodyExt::boxed(StreamBody::new(
        stream.map(|b| Ok::<_, Infallible>(Frame::data(b))),
    ))
}

#[cfg(test)]
#[path = "event_stream_tests.rs"]
mod tests;
