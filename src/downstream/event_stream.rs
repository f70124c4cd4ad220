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
}

struct State {
    events: VecDeque<Event>,
    /// Notifications in `events`, and their bytes.
    notifications: usize,
    notification_bytes: usize,
    /// Notifications dropped before any reader had them, since the last warning.
    unreported: u64,
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
            });
            self.evict(&mut s);
        }
        self.notify.notify_waiters();
    }

    /// Drops the oldest notifications while over the bounds, never the newest event.
    fn evict(&self, s: &mut State) {
        while s.notifications > MAX_EVENTS || s.notification_bytes > MAX_BYTES {
            let newest = s.events.len().saturating_sub(1);
            let Some(i) = s
                .events
                .iter()
                .take(newest)
                .position(|e| e.notification.is_some())
            else {
                return;
            };
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
                s.delivered = s.delivered.max(self.cursor);
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
                s.delivered = s.delivered.max(self.cursor);
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
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn collect(body: SseBody) -> String {
        let bytes = body.collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn delivers_then_ends_when_closed() {
        let s = EventStream::new(3, Arc::from("t"));
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
        let s = EventStream::new(1, Arc::from("t"));
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
        let s = EventStream::new(4, Arc::from("t"));
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
        let s = EventStream::new(5, Arc::from("t"));
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
        let closed = EventStream::new(6, Arc::from("t"));
        closed.close();
        let done = tokio::time::timeout(
            Duration::from_secs(10),
            closed.first_event(Duration::from_secs(3600)),
        )
        .await;
        assert!(done.is_ok(), "waited on a closed stream");
    }

    /// Everything a reader resuming after `seq` gets from a closed stream.
    async fn read_from(s: &Arc<EventStream>, seq: u64) -> String {
        let reader = s.attach(Some(seq)).unwrap();
        collect(body(reader, false, Duration::from_secs(5), None)).await
    }

    fn notification(i: usize) -> Bytes {
        Bytes::from(format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"level":"info","data":"n{i}"}}}}"#
        ))
    }

    fn response(len: usize) -> Bytes {
        let mut v = br#"{"jsonrpc":"2.0","id":1,"result":{"t":""#.to_vec();
        v.resize(len - 3, b'a');
        v.extend_from_slice(br#""}}"#);
        Bytes::from(v)
    }

    #[tokio::test]
    async fn a_message_larger_than_the_whole_buffer_is_delivered_unchanged() {
        // The regression of issue 29: an answer over MAX_BYTES was evicted as it was pushed.
        let s = EventStream::new(2, Arc::from("t"));
        let answer = response(MAX_BYTES + (1 << 20));
        s.push(answer.clone());
        s.close();
        let mut reader = s.attach(None).unwrap();
        let Next::Data(frames) = reader.next(Duration::from_secs(5), None).await else {
            panic!("ended without the answer");
        };
        assert!(
            frames
                .iter()
                .any(|f| f.as_ptr() == answer.as_ptr() && f.len() == answer.len()),
            "the answer was copied or cut rather than sent as it was buffered"
        );
        let text: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        assert!(text.starts_with(b"id: 2-1\nevent: message\ndata: {"));
        assert!(text.ends_with(b"\"}}\n\n"));
    }

    #[tokio::test]
    async fn under_pressure_notifications_go_the_answer_stays_and_the_client_is_told_once() {
        let s = EventStream::new(7, Arc::from("t"));
        for i in 0..2000 {
            s.push(notification(i));
        }
        let answer = response(20 << 20);
        s.push(answer.clone());
        s.close();
        let text = read_from(&s, 0).await;
        let dropped = 2000 - MAX_EVENTS;
        let warning = text.find("dropped").expect("no warning");
        assert!(
            text.contains(&format!("portcullis dropped {dropped} notification(s)")),
            "{}",
            &text[..400]
        );
        // In place of what was dropped: before the first notification left, with the id just
        // before it, so resuming after the warning misses nothing.
        let first_left = text.find(&format!("\"n{dropped}\"")).unwrap();
        assert!(warning < first_left);
        assert!(
            text.starts_with(&format!("id: 7-{dropped}\n")),
            "{}",
            &text[..100]
        );
        assert!(!text.contains(&format!("\"n{}\"", dropped - 1)));
        assert_eq!(
            text.matches("portcullis dropped").count(),
            1,
            "one warning per burst"
        );
        assert!(text.contains(&format!("id: 7-{}\n", 2001)));
        assert!(
            text.contains(std::str::from_utf8(&answer).unwrap()),
            "the answer is whole"
        );
        // Nothing new was dropped: a second reader gets no second warning.
        let again = read_from(&s, 0).await;
        assert!(!again.contains("dropped"));
    }

    #[tokio::test]
    async fn notification_bytes_are_bounded_but_the_newest_is_kept() {
        let s = EventStream::new(8, Arc::from("t"));
        let big = |i: usize| {
            let mut v = notification(i).to_vec();
            v.truncate(v.len() - 3);
            v.resize(3 << 20, b'x');
            v.extend_from_slice(b"\"}}");
            Bytes::from(v)
        };
        for i in 0..4 {
            s.push(big(i));
        }
        let st = s.state.lock().unwrap();
        assert!(
            st.notification_bytes <= MAX_BYTES,
            "{}",
            st.notification_bytes
        );
        assert_eq!(st.unreported, 2);
        drop(st);
        let huge = Bytes::from({
            let mut v = notification(9).to_vec();
            v.truncate(v.len() - 3);
            v.resize(MAX_BYTES + 1, b'y');
            v.extend_from_slice(b"\"}}");
            v
        });
        s.push(huge);
        let st = s.state.lock().unwrap();
        assert_eq!(st.events.len(), 1, "only the newest is left");
        assert!(st.notification_bytes > MAX_BYTES);
    }

    #[tokio::test]
    async fn keepalive_comments_flow_while_idle() {
        let s = EventStream::new(0, Arc::from("t"));
        let mut reader = s.attach(None).unwrap();
        match reader.next(Duration::from_millis(10), None).await {
            Next::Data(b) => assert_eq!(&b[0][..], b": keep-alive\n\n"),
            Next::End => panic!("ended"),
        }
    }
}
