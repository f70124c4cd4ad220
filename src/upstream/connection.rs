//! The message layer over one live server: the table of requests waiting for answers, the
//! outbox a transport drains, and the dispatch of incoming messages. The stdio transport
//! (newline-delimited JSON-RPC over a pipe pair) lives here too; the HTTP transport in
//! `super::http` feeds the same `dispatch`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

use super::modern::Listening;
use super::{Era, Handled, Outcome, UpstreamEvent};
use crate::mcp::{Id, Message, Notification, Request, Response};
use crate::sandbox::{BoxRead, BoxWrite};

/// Longest wait for the router to take a server-initiated message before reading on; the
/// router handles these without waiting on the network, so this only bounds a stall.
const HANDLED_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Messages queued for the writer before senders wait.
const OUTBOX_CAPACITY: usize = 1024;

type Waiter = oneshot::Sender<Result<Outcome, Broken>>;

/// Why a request got no answer from its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Broken {
    /// The connection, or this request's exchange, failed.
    Lost(String),
    /// The answer was over the server's message-size limit and was dropped unread; `size` is
    /// `None` when the transport stopped reading before it could tell.
    TooLarge { size: Option<u64>, limit: usize },
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Broken::Lost(reason) => f.write_str(reason),
            Broken::TooLarge { size, limit } => {
                match size {
                    Some(n) => write!(f, "its answer of {n} bytes")?,
                    None => write!(f, "its answer of more than {limit} bytes")?,
                }
                write!(f, " is over the limit of {limit} bytes (max_message_bytes)")
            }
        }
    }
}

impl From<Broken> for String {
    fn from(b: Broken) -> String {
        b.to_string()
    }
}

/// The work of delivering one request, driven by whoever waits for its answer.
pub(super) type Delivery = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A transport that takes each message itself instead of through the outbox queue (HTTP: one
/// POST per message), which saves a queue hop and task wake-ups per call.
pub(super) trait Direct: Send + Sync {
    /// The delivery of `msg` as a future (a request's is driven by the caller waiting for its
    /// answer, anything else runs in a task of its own), or the message back when it cannot be
    /// taken now: it then goes through the outbox, whose drainer waits for room.
    /// `request_id`: the id when `msg` is a request.
    fn deliver(&self, msg: Bytes, request_id: Option<u64>) -> Result<Delivery, Bytes>;
}

/// The answer to one request. Awaiting it also drives the request's delivery when the transport
/// left that to the caller; dropping it abandons both.
pub(super) struct Answer {
    rx: oneshot::Receiver<Result<Outcome, Broken>>,
    delivery: Option<Delivery>,
}

impl Future for Answer {
    type Output = Result<Result<Outcome, Broken>, oneshot::error::RecvError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(d) = self.delivery.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                self.delivery = None;
            }
        }
        let answer = Pin::new(&mut self.rx).poll(cx);
        if answer.is_ready() {
            if let Some(rest) = self.delivery.take() {
                // The answer came before the end of its response (an SSE stream): reading
                // that to the end lets the connection be reused.
                tokio::spawn(rest);
            }
        }
        answer
    }
}

pub struct Connection {
    outbox: mpsc::Sender<Bytes>,
    direct: OnceLock<Box<dyn Direct>>,
    pending: Mutex<HashMap<u64, Waiter>>,
    /// Set once the probe or the handshake has settled it; `Legacy` until then.
    era: OnceLock<Era>,
    /// A stdio connection, where a client cancels a request with `notifications/cancelled`
    /// in every era (over HTTP, a 2026-07-28 client closes the request's stream instead).
    stdio: bool,
    /// 2026-07-28: the `subscriptions/listen` stream the transport keeps open.
    listening: Listening,
}

impl Connection {
    /// Starts the writer and reader tasks. The returned future of the reader resolves with the
    /// reason the stream ended.
    pub(super) fn start(
        source: Arc<super::Source>,
        stdin: BoxWrite,
        stdout: BoxRead,
        events: mpsc::Sender<UpstreamEvent>,
    ) -> (Arc<Connection>, tokio::task::JoinHandle<String>) {
        let (conn, rx) = Connection::new(true);
        tokio::spawn(super::stdio::write_loop(stdin, rx));
        let reader = tokio::spawn(super::stdio::read_loop(
            source,
            stdout,
            conn.clone(),
            events,
        ));
        (conn, reader)
    }

    /// A connection without a transport: the caller drains the returned outbox (messages as
    /// serialized JSON) and feeds what arrives to [`dispatch`].
    pub(super) fn detached() -> (Arc<Connection>, mpsc::Receiver<Bytes>) {
        Connection::new(false)
    }

    fn new(stdio: bool) -> (Arc<Connection>, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        let conn = Arc::new(Connection {
            outbox: tx,
            direct: OnceLock::new(),
            pending: Mutex::new(HashMap::new()),
            era: OnceLock::new(),
            stdio,
            listening: Listening::default(),
        });
        (conn, rx)
    }

    /// Whether this is a stdio connection.
    pub(super) fn is_stdio(&self) -> bool {
        self.stdio
    }

    /// The era the server on the other end speaks.
    pub(super) fn era(&self) -> Era {
        self.era.get().copied().unwrap_or_default()
    }

    /// Records the era the probe settled. Set once; a second call is ignored.
    pub(super) fn set_era(&self, era: Era) {
        let _ = self.era.set(era);
    }

    /// The `subscriptions/listen` stream of a 2026-07-28 server.
    pub(super) fn listening(&self) -> &Listening {
        &self.listening
    }

    /// From now on messages go to `direct` first. Set once; a second call is ignored.
    pub(super) fn set_direct(&self, direct: Box<dyn Direct>) {
        let _ = self.direct.set(direct);
    }

    /// Hands `msg` to the direct transport if there is one and it takes it, else queues it.
    async fn send(&self, msg: Bytes) -> Result<(), ()> {
        let msg = match self.direct.get() {
            Some(d) => match d.deliver(msg, None) {
                Ok(delivery) => {
                    tokio::spawn(delivery);
                    return Ok(());
                }
                Err(msg) => msg,
            },
            None => msg,
        };
        self.outbox.send(msg).await.map_err(|_| ())
    }

    /// Fails one waiting request (its message could not be delivered).
    pub(super) fn fail(&self, id: u64, reason: &str) {
        self.break_off(id, Broken::Lost(reason.to_owned()));
    }

    /// Ends one waiting request without an answer, for `why`; false if it was not waiting.
    pub(super) fn break_off(&self, id: u64, why: Broken) -> bool {
        let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        match waiter {
            Some(w) => {
                let _ = w.send(Err(why));
                true
            }
            None => false,
        }
    }

    /// Whether request `id` still waits for an answer.
    pub(super) fn is_pending(&self, id: u64) -> bool {
        self.pending.lock().is_ok_and(|p| p.contains_key(&id))
    }

    /// Queues request `id`; the receiver gets the answer, or the reason there will be none.
    pub(super) async fn request(
        &self,
        id: u64,
        method: &str,
        params: Option<Box<RawValue>>,
    ) -> Result<Answer, String> {
        let (tx, rx) = oneshot::channel();
        let Ok(id_num) = i64::try_from(id) else {
            return Err("request id space exhausted".to_owned());
        };
        if let Ok(mut p) = self.pending.lock() {
            p.insert(id, tx);
        }
        let msg = Message::Request(Request {
            id: Id::Num(id_num),
            method: method.to_owned(),
            params,
        });
        let mut msg = msg.to_bytes();
        if let Some(d) = self.direct.get() {
            match d.deliver(msg, Some(id)) {
                Ok(delivery) => {
                    return Ok(Answer {
                        rx,
                        delivery: Some(delivery),
                    })
                }
                Err(back) => msg = back,
            }
        }
        if self.outbox.send(msg).await.is_err() {
            self.forget(id);
            return Err("the connection closed".to_owned());
        }
        Ok(Answer { rx, delivery: None })
    }

    pub(super) async fn notify(&self, method: &str, params: Option<Box<RawValue>>) {
        let msg = Message::Notification(Notification {
            method: method.to_owned(),
            params,
        });
        let _ = self.send(msg.to_bytes()).await;
    }

    pub(super) async fn respond(&self, id: Id, outcome: Outcome) {
        let msg = Message::Response(Response { id, outcome });
        let _ = self.send(msg.to_bytes()).await;
    }

    /// Stops waiting for request `id` (the caller ends it another way).
    pub(super) fn forget_request(&self, id: u64) {
        self.forget(id);
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&id);
        }
    }

    fn complete(&self, id: u64, outcome: Outcome) -> bool {
        let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        match waiter {
            Some(w) => {
                let _ = w.send(Ok(outcome));
                true
            }
            None => false,
        }
    }

    /// Fails every waiting request at once with `reason`.
    pub(super) fn fail_all(&self, reason: &str) {
        let waiters: Vec<Waiter> = match self.pending.lock() {
            Ok(mut p) => p.drain().map(|(_, w)| w).collect(),
            Err(_) => Vec::new(),
        };
        for w in waiters {
            let _ = w.send(Err(Broken::Lost(reason.to_owned())));
        }
    }
}

/// Removes a request from the pending table when its caller gives up (timeout, cancellation).
pub(super) struct PendingGuard<'a> {
    conn: &'a Connection,
    id: u64,
    armed: bool,
}

impl<'a> PendingGuard<'a> {
    pub(super) fn new(conn: &'a Connection, id: u64) -> Self {
        PendingGuard {
            conn,
            id,
            armed: true,
        }
    }

    pub(super) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.forget(self.id);
        }
    }
}

/// Parses one incoming message; one that is not JSON-RPC is logged and skipped (servers
/// sometimes print banners to stdout), not a reason to drop the server.
///
/// Transports parse, then let go of what they read, then [`dispatch_message`]: the parsed
/// message holds its own copy, and a large answer should not be held twice while it travels on.
pub(super) fn parse_incoming(source: &super::Source, text: &[u8]) -> Option<Message> {
    match Message::parse(text) {
        Ok(message) => Some(message),
        Err(e) => {
            tracing::warn!(server = %source.server, error = %e, line = %String::from_utf8_lossy(&text[..text.len().min(200)]), "ignoring a message that is not JSON-RPC");
            None
        }
    }
}

/// Hands one incoming message to its waiter (responses) or to the router (everything else),
/// waiting for the router's ack so that order is kept. `related`: the request it came for,
/// when the transport knows. `Err` means the gateway is stopping.
pub(super) async fn dispatch_message(
    source: &Arc<super::Source>,
    conn: &Connection,
    events: &mpsc::Sender<UpstreamEvent>,
    message: Message,
    related: Option<u64>,
) -> Result<(), String> {
    match message {
        Message::Response(resp) => {
            let known = match &resp.id {
                Id::Num(n) => u64::try_from(*n).is_ok_and(|id| conn.complete(id, resp.outcome)),
                Id::Str(_) => false,
            };
            if !known {
                tracing::debug!(server = %source.server, id = %resp.id, "answer to an unknown or abandoned request");
            }
        }
        Message::Notification(message) => {
            let message = match conn.era() {
                Era::Modern => match conn.listening.incoming(message) {
                    Some(m) => m,
                    None => return Ok(()),
                },
                Era::Legacy => message,
            };
            let (handled, done) = Handled::new();
            let ev = UpstreamEvent::Notification {
                from: source.clone(),
                message,
                handled,
                related,
            };
            if events.send(ev).await.is_err() {
                return Err("gateway stopped".to_owned());
            }
            let _ = tokio::time::timeout(HANDLED_WAIT, done).await;
        }
        Message::Request(message) => {
            let (handled, done) = Handled::new();
            let ev = UpstreamEvent::Request {
                from: source.clone(),
                message,
                handled,
                related,
            };
            if events.send(ev).await.is_err() {
                return Err("gateway stopped".to_owned());
            }
            let _ = tokio::time::timeout(HANDLED_WAIT, done).await;
        }
    }
    Ok(())
}

/// Deals with a message over the size limit that was skipped unread; `head` is its first bytes
/// and `size` its length when the transport read to its end. The request it answers fails with
/// [`Broken::TooLarge`] when its id can be read in `head` (otherwise it fails at its timeout); a
/// request from the server gets an error back, so that the server does not wait for ever.
pub(super) async fn oversized(
    source: &super::Source,
    conn: &Connection,
    head: &[u8],
    size: Option<u64>,
    limit: usize,
) {
    let h = crate::mcp::head::read(head);
    let what = match (&h.id, h.has_method) {
        (Some(id), false) => {
            let pending = match id {
                Id::Num(n) => u64::try_from(*n)
                    .is_ok_and(|n| conn.break_off(n, Broken::TooLarge { size, limit })),
                Id::Str(_) => false,
            };
            if pending {
                format!("the answer to request {id}, which fails with an error")
            } else {
                format!("an answer to request {id}, which is not waiting")
            }
        }
        (None, false) if h.is_response => {
            "an answer whose id is not at its start: its request fails at its timeout".to_owned()
        }
        (Some(id), true) => {
            let message = format!(
                "the gateway refused a request of more than {limit} bytes (max_message_bytes)"
            );
            let error = crate::mcp::error::error_object(
                crate::mcp::ErrorCode::MESSAGE_TOO_LARGE,
                &message,
                None,
            );
            conn.respond(id.clone(), Err(error)).await;
            format!("request {id} from the server, refused")
        }
        (None, true) => "a notification, dropped".to_owned(),
        (None, false) => "a message whose start is not JSON-RPC, dropped".to_owned(),
    };
    let size = size.map_or_else(|| format!("more than {limit}"), |n| n.to_string());
    tracing::warn!(server = %source.server, size = %size, limit, "skipped a message over max_message_bytes: {what}");
}
