//! A held call of the multi round-trip bridge (see `client_side.rs`): the queue its server
//! requests and final answer arrive on, the sink the router delivers to, and what is waiting
//! for the client. Only `client_side.rs` makes and reads these.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::access::Identity;
use crate::mcp::{methods, ClientCaps, Id, Message, Request};
use crate::router::{Answer, MessageSink};

pub(super) enum Event {
    Request(Request),
    Done(Result<Box<RawValue>, Answer>),
}

/// Where the router delivers what concerns an exchange: server requests become events, other
/// messages (progress, logs) go to the client's current response stream, if any.
pub(super) struct ExchangeSink {
    pub(super) events: mpsc::Sender<Event>,
    pub(super) out: Mutex<Option<Arc<dyn MessageSink>>>,
}

impl ExchangeSink {
    pub(super) fn set_out(&self, out: Option<Arc<dyn MessageSink>>) {
        if let Ok(mut o) = self.out.lock() {
            *o = out;
        }
    }
}

impl MessageSink for ExchangeSink {
    fn send(&self, message: Bytes) {
        match Message::parse(&message) {
            Ok(Message::Request(req)) => {
                let refused = self.events.try_send(Event::Request(req)).is_err();
                if refused {
                    tracing::warn!("server request to a held call dropped: its queue is full");
                }
            }
            // Only what concerns this request goes on its response; list changes and resource
            // updates belong on `subscriptions/listen` streams.
            Ok(Message::Notification(n))
                if n.method == methods::PROGRESS || n.method == methods::MESSAGE =>
            {
                let out = self.out.lock().ok().and_then(|o| o.clone());
                if let Some(out) = out {
                    out.send(message);
                }
            }
            _ => {}
        }
    }
}

/// A server request waiting for the client.
pub(super) struct Waiting {
    pub(super) key: String,
    pub(super) method: String,
    pub(super) params: Option<Box<RawValue>>,
}

#[derive(Default)]
pub(super) struct Progress {
    pub(super) waiting: Vec<Waiting>,
    /// Bumped each time the exchange is held; a token names the round it answers.
    pub(super) round: u64,
    pub(super) parked: bool,
}

pub(super) struct Exchange {
    pub(super) id: u64,
    pub(super) session: Arc<str>,
    pub(super) identity: Identity,
    pub(super) caps: ClientCaps,
    pub(super) method: String,
    /// The tool or prompt name, or resource URI, the call is about.
    pub(super) item: String,
    /// The first request's id: how the router knows the call in flight.
    pub(super) first_id: Id,
    /// The call was sent as a 2025-11-25 task.
    pub(super) legacy_task: bool,
    /// The call's params without what a retry adds: a retry must repeat them, so that what
    /// was decided on (and approved, for a `confirm` rule) is what runs.
    pub(super) params: Map<String, Value>,
    pub(super) sink: Arc<ExchangeSink>,
    pub(super) events: tokio::sync::Mutex<mpsc::Receiver<Event>>,
    pub(super) progress: Mutex<Progress>,
}

/// How waiting on an exchange ended.
pub(super) enum Waited {
    /// The server answered the call (its result or its error).
    Server(Result<Box<RawValue>, Answer>),
    /// The call is held for the client's input: an `InputRequiredResult` of ours.
    Held(Box<RawValue>),
    /// The gateway ended it (cancelled, refused).
    Gateway(Answer),
}

impl Waited {
    /// The answer for the client; `wrap` sees the server's own results only.
    pub(super) fn into_answer(
        self,
        wrap: impl FnOnce(Box<RawValue>) -> Box<RawValue>,
    ) -> Result<Box<RawValue>, Answer> {
        match self {
            Waited::Server(Ok(r)) => Ok(wrap(r)),
            Waited::Server(Err(a)) | Waited::Gateway(a) => Err(a),
            Waited::Held(r) => Ok(r),
        }
    }
}
