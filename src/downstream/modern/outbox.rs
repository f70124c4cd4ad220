//! The response to one 2026-07-28 request. The answer goes out as JSON when it is ready before
//! anything else is (with the HTTP status its error code calls for); when a related message
//! (progress, a log message) comes first, or the answer takes longer than a keep-alive period,
//! the response becomes an SSE stream: those messages, keep-alive comments while waiting, then
//! the answer. There are no event ids: the revision has no resumption.
//!
//! Whoever waits on the response holds a guard; when the client goes away (the connection
//! closes, the stream is dropped) the guard is dropped with it, and that is the request's
//! cancellation.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderValue, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::sync::Notify;

use super::super::reply::{self, Reply};
use crate::router::MessageSink;

/// Related messages held for a client that is slower than the server, before the oldest are
/// dropped (the answer itself is never dropped).
const MAX_QUEUED: usize = 1024;
const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

/// The answer and how to send it.
pub struct Final {
    pub status: StatusCode,
    pub bytes: Bytes,
    pub retry_after: Option<u64>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Bytes>,
    bytes: usize,
    dropped: u64,
    answer: Option<Final>,
}

#[derive(Default)]
pub struct Outbox {
    state: Mutex<State>,
    notify: Notify,
}

impl MessageSink for Outbox {
    fn send(&self, message: Bytes) {
        if let Ok(mut s) = self.state.lock() {
            if s.answer.is_some() {
                return;
            }
            s.bytes += message.len();
            s.queue.push_back(message);
            while s.queue.len() > MAX_QUEUED || s.bytes > MAX_QUEUED_BYTES {
                match s.queue.pop_front() {
                    Some(old) => {
                        s.bytes -= old.len();
                        s.dropped += 1;
                    }
                    None => break,
                }
            }
        }
        self.notify.notify_waiters();
    }
}

enum Ready {
    /// The answer, with nothing before it.
    Answer(Final),
    /// Related messages are queued (or the wait was long): stream.
    Stream,
}

impl Outbox {
    pub fn new() -> Arc<Outbox> {
        Arc::new(Outbox::default())
    }

    /// Sets the answer; messages sent after it are ignored.
    pub fn finish(&self, answer: Final) {
        if let Ok(mut s) = self.state.lock() {
            s.answer.get_or_insert(answer);
        }
        self.notify.notify_waiters();
    }

    /// Waits for the answer alone (`stream` false), or until streaming is called for, or for
    /// at most `window` when streaming is allowed.
    async fn ready(&self, stream: bool, window: Duration) -> Ready {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(mut s) = self.state.lock() {
                if stream && !s.queue.is_empty() {
                    return Ready::Stream;
                }
                if let Some(a) = s.answer.take() {
                    return Ready::Answer(a);
                }
            }
            if stream {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep_until(deadline) => return Ready::Stream,
                }
            } else {
                notified.await;
            }
        }
    }

    /// The next bytes of the SSE stream: queued messages, then (last) the answer.
    async fn next_frame(&self, keepalive: Duration) -> Next {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Ok(mut s) = self.state.lock() {
                if s.dropped > 0 {
                    tracing::warn!(
                        dropped = s.dropped,
                        "related messages dropped: the client read its stream too slowly"
                    );
                    s.dropped = 0;
                }
                let mut out = BytesMut::new();
                while let Some(m) = s.queue.pop_front() {
                    s.bytes -= m.len();
                    frame(&mut out, &m);
                }
                if let Some(a) = s.answer.take() {
                    frame(&mut out, &a.bytes);
                    return Next::Last(out.freeze());
                }
                if !out.is_empty() {
                    return Next::Data(out.freeze());
                }
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(keepalive) => {
                    return Next::Data(Bytes::from_static(b": keep-alive\n\n"))
                }
            }
        }
    }
}

enum Next {
    Data(Bytes),
    Last(Bytes),
}

fn frame(out: &mut BytesMut, data: &[u8]) {
    out.put_slice(b"event: message\ndata: ");
    // Serialized JSON has no raw newlines, so one data line carries the whole message.
    out.put_slice(data);
    out.put_slice(b"\n\n");
}

/// A JSON reply with `answer`'s status.
pub fn json(answer: Final) -> Reply {
    let mut r = reply::json(answer.status, answer.bytes);
    if let Some(secs) = answer.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

/// The reply for a request whose answer will arrive in `outbox`. `sse`: the client accepts an
/// event stream. `guard` is dropped when the client goes away (its cancellation) or after the
/// answer was handed over.
pub async fn respond<G: Send + Sync + 'static>(
    outbox: Arc<Outbox>,
    sse: bool,
    keepalive: Duration,
    guard: G,
) -> Reply {
    match outbox.ready(sse, keepalive).await {
        Ready::Answer(a) => {
            drop(guard);
            json(a)
        }
        Ready::Stream => reply::sse(stream(outbox, keepalive, guard)),
    }
}

/// An SSE body over `outbox`, ending after the answer; holds `guard` until then.
pub fn stream<G: Send + Sync + 'static>(
    outbox: Arc<Outbox>,
    keepalive: Duration,
    guard: G,
) -> super::super::reply::Body {
    use futures_util::StreamExt;
    let frames =
        futures_util::stream::unfold((outbox, Some(guard)), move |(outbox, guard)| async move {
            guard.as_ref()?;
            match outbox.next_frame(keepalive).await {
                Next::Data(b) => Some((b, (outbox, guard))),
                Next::Last(b) => Some((b, (outbox, None))),
            }
        });
    BodyExt::boxed(StreamBody::new(
        frames.map(|b| Ok::<_, Infallible>(Frame::data(b))),
    ))
}
