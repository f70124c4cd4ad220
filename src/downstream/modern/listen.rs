//! `subscriptions/listen`: a long-lived SSE response carrying the change notifications a
//! 2026-07-28 client opted in to, fanned in from every server behind the gateway.
//!
//! The stream is a router session of its own (no requests, only what the router announces to
//! the client's sessions): list changes reach it only when this client's view of that list
//! changed (its rules apply, as for any session), resource updates only for the URIs it
//! subscribed to and the gateway could subscribe to at their server. It opens with
//! `notifications/subscriptions/acknowledged` naming what is honoured; every message carries
//! `io.modelcontextprotocol/subscriptionId` (the listen request's id); keep-alive comments flow
//! while it is quiet; when the gateway shuts down it sends the listen request's result and ends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};

use super::super::reply::{self, Reply};
use super::super::Shared;
use super::encode;
use super::envelope::{Decoded, Rejection};
use super::outbox::{self, Final, Outbox};
use crate::access::Identity;
use crate::mcp::{meta, methods, ClientCaps, ErrorCode, Id, LogLevel, Message, Request};
use crate::router::{Inbound, MessageSink, SessionInfo};

/// URIs one stream may subscribe to.
const MAX_URIS: usize = 256;
const MAX_URI_LEN: usize = 4096;

/// What the client opted in to.
#[derive(Debug, Default, Clone)]
struct Filter {
    tools: bool,
    prompts: bool,
    resources: bool,
    uris: Vec<String>,
}

impl Filter {
    fn parse(v: Option<&Value>) -> Result<Filter, String> {
        let Some(Value::Object(o)) = v else {
            return Err("`notifications` must be an object (the notification filter)".into());
        };
        let flag = |k: &str| match o.get(k) {
            None | Some(Value::Null) => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(format!("`notifications.{k}` must be a boolean")),
        };
        let uris = match o.get("resourceSubscriptions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) if a.len() <= MAX_URIS => a
                .iter()
                .map(|u| match u.as_str() {
                    Some(s) if !s.is_empty() && s.len() <= MAX_URI_LEN => Ok(s.to_owned()),
                    _ => Err(format!(
                        "`notifications.resourceSubscriptions` must hold URIs (strings of 1 to {MAX_URI_LEN} bytes)"
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => {
                return Err(format!(
                    "`notifications.resourceSubscriptions` must be an array of at most {MAX_URIS} URIs"
                ))
            }
        };
        Ok(Filter {
            tools: flag("toolsListChanged")?,
            prompts: flag("promptsListChanged")?,
            resources: flag("resourcesListChanged")?,
            uris,
        })
    }

    fn to_json(&self) -> Value {
        let mut o = Map::new();
        for (k, on) in [
            ("toolsListChanged", self.tools),
            ("promptsListChanged", self.prompts),
            ("resourcesListChanged", self.resources),
        ] {
            if on {
                o.insert(k.into(), Value::Bool(true));
            }
        }
        if !self.uris.is_empty() {
            o.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(o)
    }
}

/// The router's side of a stream: passes what the client opted in to, tagged.
struct ListenSink {
    id: Id,
    filter: Filter,
    uris: HashSet<String>,
    outbox: Arc<Outbox>,
}

impl MessageSink for ListenSink {
    fn send(&self, message: Bytes) {
        let Ok(Message::Notification(n)) = Message::parse(&message) else {
            return;
        };
        let mut params = n
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str::<Map<String, Value>>(p.get()).ok())
            .unwrap_or_default();
        let wanted = match n.method.as_str() {
            methods::TOOLS_LIST_CHANGED => self.filter.tools,
            methods::PROMPTS_LIST_CHANGED => self.filter.prompts,
            methods::RESOURCES_LIST_CHANGED => self.filter.resources,
            methods::RESOURCES_UPDATED => params
                .get("uri")
                .and_then(Value::as_str)
                .is_some_and(|u| self.uris.contains(u)),
            _ => false,
        };
        if wanted {
            tag(&mut params, &self.id);
            self.outbox.send(notification(&n.method, params));
        }
    }
}

fn tag(params: &mut Map<String, Value>, id: &Id) {
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = meta {
        m.insert(meta::SUBSCRIPTION_ID.into(), json!(id));
    }
}

fn notification(method: &str, params: Map<String, Value>) -> Bytes {
    Message::Notification(crate::mcp::Notification {
        method: method.to_owned(),
        params: Some(crate::mcp::to_raw(&params)),
    })
    .to_bytes()
}

/// One open stream: its listen request, where its messages go, and whose it is.
struct Open {
    id: Id,
    outbox: Weak<Outbox>,
    client: Arc<str>,
}

/// Open streams: counted per client against its quota, and ended gracefully at shutdown.
#[derive(Default)]
pub struct Streams {
    open: Mutex<HashMap<u64, Open>>,
    next: AtomicU64,
}

impl Streams {
    /// Counts a new stream of `client`, unless it holds `max` already; its number.
    fn reserve(&self, client: &Arc<str>, max: usize, id: &Id, outbox: &Arc<Outbox>) -> Option<u64> {
        // Counted and inserted under one lock, so concurrent opens cannot pass the quota.
        let mut m = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if m.values().filter(|o| o.client == *client).count() >= max {
            return None;
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        m.insert(
            number,
            Open {
                id: id.clone(),
                outbox: Arc::downgrade(outbox),
                client: client.clone(),
            },
        );
        Some(number)
    }

    /// Ends every stream with its listen request's result (the graceful close).
    pub fn close_all(&self) {
        let open: Vec<Open> = self
            .open
            .lock()
            .map(|mut m| m.drain().map(|(_, v)| v).collect())
            .unwrap_or_default();
        for o in open {
            if let Some(outbox) = o.outbox.upgrade() {
                outbox.finish(closing(&o.id));
            }
        }
    }
}

fn closing(id: &Id) -> Final {
    let result = json!({ "_meta": { meta::SUBSCRIPTION_ID: id } }).to_string();
    Final {
        status: StatusCode::OK,
        bytes: encode::response(id, &encode::result(&result, None)),
        retry_after: None,
    }
}

/// Forgets the stream when the client closes it.
struct Closer {
    shared: Weak<Shared>,
    key: Arc<str>,
    number: u64,
}

impl Drop for Closer {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if let Ok(mut m) = shared.listens.open.lock() {
            m.remove(&self.number);
        }
        let key = self.key.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { shared.router.close_session(&key).await });
        }
    }
}

/// Opens a stream for `d`, a `subscriptions/listen` request of `identity`.
pub async fn open(shared: &Arc<Shared>, identity: Identity, d: Decoded) -> Reply {
    let filter = match Filter::parse(d.params.get("notifications")) {
        Ok(f) => f,
        Err(why) => {
            let rej = Rejection::new(ErrorCode::INVALID_PARAMS, why);
            return reply::json(rej.status(), rej.bytes(Some(&d.id)));
        }
    };
    let key: Arc<str> = Arc::from(super::session_key("listen").as_str());
    let outbox = Outbox::new();
    let limit = shared.access.limits.session_limit(&identity.client);
    let Some(number) = shared
        .listens
        .reserve(&identity.client, limit.max, &d.id, &outbox)
    else {
        return super::super::session_open::listen_refused(shared, &identity.client, limit, &d.id);
    };
    // From here the stream is counted: the closer forgets it (and the router session with
    // its subscriptions) however this ends, also when the client goes during the subscribing.
    let closer = Closer {
        shared: Arc::downgrade(shared),
        key: key.clone(),
        number,
    };
    // Subscribe at the servers first, through the router like any request (each is audited
    // and decided on); a URI no server would subscribe to is left out of the acknowledgement.
    let mut honoured = filter.clone();
    honoured.uris.clear();
    for uri in &filter.uris {
        let inbound = Inbound {
            identity: identity.clone(),
            session: key.clone(),
            request: Request {
                id: d.id.clone(),
                method: methods::RESOURCES_SUBSCRIBE.to_owned(),
                params: Some(crate::mcp::to_raw(&json!({ "uri": uri }))),
            },
            context: d.context.clone(),
        };
        match shared.router.handle(inbound, None, None).await {
            Ok(_) => honoured.uris.push(uri.clone()),
            Err(a) => {
                tracing::info!(uri, code = ?a.code, "listen: resource subscription not honoured")
            }
        }
    }
    shared.router.open_session(SessionInfo {
        key: key.clone(),
        client: identity.client.clone(),
        caps: ClientCaps::default(),
        log: LogLevel::Silent,
        sink: Arc::new(ListenSink {
            id: d.id.clone(),
            uris: honoured.uris.iter().cloned().collect(),
            filter: honoured.clone(),
            outbox: outbox.clone(),
        }),
    });
    let mut ack = Map::new();
    ack.insert("notifications".into(), honoured.to_json());
    tag(&mut ack, &d.id);
    outbox.send(notification(methods::SUBSCRIPTIONS_ACKNOWLEDGED, ack));
    tracing::info!(client = %identity.client, filter = %honoured.to_json(), "subscriptions/listen stream opened");
    reply::sse(outbox::stream(outbox, shared.keepalive, closer))
}
