//! The gateway's own `subscriptions/listen` stream to a 2026-07-28 server, which replaces the
//! 2025 era's standing GET stream and `resources/subscribe`.
//!
//! It asks for the list changes the server's capabilities offer and for updates of the
//! resources some client subscribed to (the set [`Listening`] holds; a 2025-era client's
//! `resources/subscribe` changes it). When the set changes, the stream is replaced by one with
//! the new filter; `resources/subscribe` is answered once the server acknowledged that (bounded),
//! so that an update right after the answer is not lost. What arrives on the stream is handed on
//! like any server notification, without the stream's `subscriptionId` (ours, not a client's);
//! the acknowledgement itself stays here.
//!
//! Over HTTP the transport keeps the stream (`super::super::http`); over stdio, where every
//! subscription shares the pipe, [`stdio_loop`] keeps it as a request that stays pending, and
//! replaces it by cancelling it (`notifications/cancelled`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::watch;

use super::super::connection::Connection;
use crate::mcp::{meta, methods, Id, Notification};

/// Waits before a stdio listen request that the server ended is sent again.
const REOPEN: Duration = Duration::from_secs(1);

/// What the listen stream should ask for, with a generation that grows with each change.
#[derive(Debug, Default, Clone)]
pub(in crate::upstream) struct ListenSet {
    pub uris: BTreeSet<String>,
    pub generation: u64,
}

/// The listen state of one connection.
pub(in crate::upstream) struct Listening {
    set: watch::Sender<ListenSet>,
    /// The generation the server last acknowledged (`u64::MAX` once nothing will be).
    acked: watch::Sender<u64>,
    /// The id of the listen request now open, and the generation it asks for.
    open: Mutex<Option<(Id, u64)>>,
}

impl Default for Listening {
    fn default() -> Self {
        Listening {
            set: watch::channel(ListenSet::default()).0,
            acked: watch::channel(0).0,
            open: Mutex::new(None),
        }
    }
}

impl Listening {
    /// Adds (`on`) or removes `uri`; the new generation when the set changed.
    pub(in crate::upstream) fn change(&self, uri: &str, on: bool) -> Option<u64> {
        let mut generation = None;
        self.set.send_if_modified(|set| {
            let changed = if on {
                set.uris.insert(uri.to_owned())
            } else {
                set.uris.remove(uri)
            };
            if changed {
                set.generation += 1;
                generation = Some(set.generation);
            }
            changed
        });
        generation
    }

    /// Waits (at most `limit`) until the server acknowledged generation `g` or later.
    pub(in crate::upstream) async fn acknowledged(&self, g: u64, limit: Duration) {
        let mut acked = self.acked.subscribe();
        let _ = tokio::time::timeout(limit, acked.wait_for(|a| *a >= g)).await;
    }

    pub(in crate::upstream) fn watch(&self) -> watch::Receiver<ListenSet> {
        self.set.subscribe()
    }

    /// Records that listen request `id` (asking for `generation`) is the one now open.
    pub(in crate::upstream) fn opened(&self, id: Id, generation: u64) {
        if let Ok(mut o) = self.open.lock() {
            *o = Some((id, generation));
        }
    }

    /// Records that generation `g` needs no acknowledgement (nothing to ask for, or the server
    /// offers no listen stream: `u64::MAX`).
    pub(in crate::upstream) fn settled(&self, g: u64) {
        self.acked.send_replace(g);
    }

    /// A notification that came from the server: `None` when it was the acknowledgement of our
    /// stream (taken here), else the notification without its `subscriptionId`.
    pub(in crate::upstream) fn incoming(&self, n: Notification) -> Option<Notification> {
        if n.method == methods::SUBSCRIPTIONS_ACKNOWLEDGED {
            let id = subscription_id(&n);
            let open = self.open.lock().ok().and_then(|o| o.clone());
            if let Some((open_id, generation)) = open {
                if id.as_ref().is_none_or(|i| *i == open_id) {
                    tracing::debug!(generation, "subscriptions/listen acknowledged");
                    self.acked.send_replace(generation);
                }
            }
            return None;
        }
        Some(without_subscription_id(n))
    }
}

fn subscription_id(n: &Notification) -> Option<Id> {
    let params: Value = serde_json::from_str(n.params.as_deref()?.get()).ok()?;
    serde_json::from_value(params.get("_meta")?.get(meta::SUBSCRIPTION_ID)?.clone()).ok()
}

/// `n` without the listen stream's `subscriptionId`.
fn without_subscription_id(mut n: Notification) -> Notification {
    let Some(raw) = n.params.as_deref() else {
        return n;
    };
    if !raw.get().contains(meta::SUBSCRIPTION_ID) {
        return n;
    }
    if let Ok(Value::Object(mut params)) = serde_json::from_str::<Value>(raw.get()) {
        if let Some(Value::Object(m)) = params.get_mut("_meta") {
            m.remove(meta::SUBSCRIPTION_ID);
            if m.is_empty() {
                params.remove("_meta");
            }
        }
        n.params = Some(crate::mcp::to_raw(&params));
    }
    n
}

/// The `notifications` filter of the gateway's listen stream; `None` when there is nothing to
/// listen for.
pub(in crate::upstream) fn filter(caps: &Value, uris: &BTreeSet<String>) -> Option<Value> {
    let flag = |kind: &str, key: &str| {
        caps.get(kind)
            .and_then(|c| c.get(key))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let mut f = Map::new();
    for (kind, field) in [
        ("tools", "toolsListChanged"),
        ("prompts", "promptsListChanged"),
        ("resources", "resourcesListChanged"),
    ] {
        if flag(kind, "listChanged") {
            f.insert(field.into(), Value::Bool(true));
        }
    }
    if flag("resources", "subscribe") && !uris.is_empty() {
        f.insert("resourceSubscriptions".into(), json!(uris));
    }
    (!f.is_empty()).then_some(Value::Object(f))
}

/// The params of a listen request asking for `filter`.
pub(in crate::upstream) fn params(
    filter: Value,
    policy: crate::policy::ClientCapabilities,
) -> Box<serde_json::value::RawValue> {
    super::envelope::encode(
        &Map::from_iter([("notifications".to_owned(), filter)]),
        None,
        policy,
    )
}

/// Keeps a listen request open on a stdio connection while it lives (see the module
/// documentation). Ends when the connection is gone.
pub(in crate::upstream) async fn stdio_loop(
    conn: Arc<Connection>,
    caps: Value,
    policy: crate::policy::ClientCapabilities,
    next_id: impl Fn() -> u64,
) {
    let listening = conn.listening();
    let mut set = listening.watch();
    loop {
        let (f, generation) = {
            let s = set.borrow_and_update();
            (filter(&caps, &s.uris), s.generation)
        };
        let Some(f) = f else {
            listening.settled(generation);
            if set.changed().await.is_err() {
                return;
            }
            continue;
        };
        let id = next_id();
        let Ok(wire) = i64::try_from(id) else { return };
        listening.opened(Id::Num(wire), generation);
        let Ok(answer) = conn
            .request(id, methods::SUBSCRIPTIONS_LISTEN, Some(params(f, policy)))
            .await
        else {
            return;
        };
        tokio::select! {
            r = answer => match r {
                // The server ended the subscription: ask again.
                Ok(Ok(_)) => tokio::time::sleep(REOPEN).await,
                // The connection is gone (or the server refused to listen).
                Ok(Err(_)) | Err(_) => return,
            },
            r = set.changed() => {
                // A stdio subscription ends when the client cancels its request.
                conn.forget_request(id);
                let params = crate::mcp::to_raw(&json!({ "requestId": wire, "reason": "the gateway replaces this subscription" }));
                conn.notify(methods::CANCELLED, Some(params)).await;
                if r.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_follows_capabilities_and_subscriptions() {
        let caps = json!({"tools": {"listChanged": true}, "resources": {"subscribe": true}});
        let none = BTreeSet::new();
        assert_eq!(
            filter(&caps, &none),
            Some(json!({"toolsListChanged": true}))
        );
        let uris: BTreeSet<String> = ["file:///a".to_owned()].into();
        assert_eq!(
            filter(&caps, &uris),
            Some(json!({"toolsListChanged": true, "resourceSubscriptions": ["file:///a"]}))
        );
        assert_eq!(filter(&json!({"tools": {}}), &uris), None);
    }

    #[test]
    fn the_acknowledgement_is_taken_and_the_subscription_id_removed() {
        let l = Listening::default();
        let g = l.change("file:///a", true).unwrap();
        l.opened(Id::Str("pc-listen-1".into()), g);
        let ack = Notification {
            method: methods::SUBSCRIPTIONS_ACKNOWLEDGED.into(),
            params: Some(crate::mcp::to_raw(
                &json!({"_meta": {"io.modelcontextprotocol/subscriptionId": "pc-listen-1"}}),
            )),
        };
        assert!(l.incoming(ack).is_none());
        assert_eq!(*l.acked.borrow(), g);
        let n = Notification {
            method: "notifications/resources/updated".into(),
            params: Some(crate::mcp::to_raw(&json!({
                "uri": "file:///a",
                "_meta": {"io.modelcontextprotocol/subscriptionId": "pc-listen-1", "k": 1}
            }))),
        };
        let out: Value =
            serde_json::from_str(l.incoming(n).unwrap().params.unwrap().get()).unwrap();
        assert_eq!(out, json!({"uri": "file:///a", "_meta": {"k": 1}}));
        assert!(
            l.change("file:///a", true).is_none(),
            "no change, no generation"
        );
    }
}
