//! Relaying what servers send on their own to the right client session: progress, logging,
//! resource updates, and requests (sampling, elicitation, roots) whose answers go back upstream.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::{notification_bytes, MessageSink, Router};
use crate::access::Target;
use crate::mcp::{methods, ErrorCode, Id, Message, Notification, Request};
use crate::upstream::Source;

/// Server requests awaiting a client's answer, per session, before new ones are refused.
const MAX_PENDING_PER_SESSION: usize = 64;

struct Pending {
    session: Arc<str>,
    /// The instance that asked, which must get the answer.
    instance: u64,
    upstream_id: Id,
}

#[derive(Default)]
struct Table {
    pending: HashMap<String, Pending>,
    subscriptions: HashMap<(Arc<str>, String), HashSet<Arc<str>>>,
}

#[derive(Default)]
pub(super) struct Relay {
    table: Mutex<Table>,
    counter: AtomicU64,
}

impl Relay {
    fn add_pending(&self, session: &Arc<str>, instance: u64, upstream_id: Id) -> Option<String> {
        let mut t = self.table.lock().ok()?;
        if t.pending.values().filter(|p| p.session == *session).count() >= MAX_PENDING_PER_SESSION {
            return None;
        }
        let id = format!("pc-srv-{}", self.counter.fetch_add(1, Ordering::Relaxed));
        t.pending.insert(
            id.clone(),
            Pending {
                session: session.clone(),
                instance,
                upstream_id,
            },
        );
        Some(id)
    }

    pub fn take_pending(&self, session: &str, id: &Id) -> Option<(u64, Id)> {
        let Id::Str(key) = id else { return None };
        let mut t = self.table.lock().ok()?;
        // Only the session the request went to may answer it.
        if t.pending.get(key).is_some_and(|p| &*p.session == session) {
            t.pending.remove(key).map(|p| (p.instance, p.upstream_id))
        } else {
            None
        }
    }

    fn downstream_id_of(&self, instance: u64, upstream_id: &Id) -> Option<(String, Arc<str>)> {
        let t = self.table.lock().ok()?;
        t.pending
            .iter()
            .find(|(_, p)| p.instance == instance && p.upstream_id == *upstream_id)
            .map(|(k, p)| (k.clone(), p.session.clone()))
    }

    pub fn drop_pending_for(&self, session: &str) -> Vec<(u64, Id)> {
        let Ok(mut t) = self.table.lock() else {
            return Vec::new();
        };
        let keys: Vec<String> = t
            .pending
            .iter()
            .filter(|(_, p)| &*p.session == session)
            .map(|(k, _)| k.clone())
            .collect();
        keys.into_iter()
            .filter_map(|k| t.pending.remove(&k))
            .map(|p| (p.instance, p.upstream_id))
            .collect()
    }

    pub fn subscribe(&self, session: &str, server: &Arc<str>, uri: &str) {
        if let Ok(mut t) = self.table.lock() {
            t.subscriptions
                .entry((server.clone(), uri.to_owned()))
                .or_default()
                .insert(Arc::from(session));
        }
    }

    /// Removes one subscription; true when no session is left subscribed to `uri` at `server`.
    pub fn unsubscribe(&self, session: &str, server: &Arc<str>, uri: &str) -> bool {
        let Ok(mut t) = self.table.lock() else {
            return true;
        };
        let key = (server.clone(), uri.to_owned());
        let Some(set) = t.subscriptions.get_mut(&key) else {
            return true;
        };
        set.remove(session);
        if set.is_empty() {
            t.subscriptions.remove(&key);
            true
        } else {
            false
        }
    }

    /// Drops every subscription of `session`; returns those it was the last subscriber of.
    pub fn drop_session(&self, session: &str) -> Vec<(Arc<str>, String)> {
        let Ok(mut t) = self.table.lock() else {
            return Vec::new();
        };
        let mut emptied = Vec::new();
        t.subscriptions.retain(|(server, uri), set| {
            if set.remove(session) && set.is_empty() {
                emptied.push((server.clone(), uri.clone()));
                return false;
            }
            !set.is_empty()
        });
        emptied
    }

    fn subscribers(&self, server: &Arc<str>, uri: &str) -> Vec<Arc<str>> {
        self.table
            .lock()
            .ok()
            .and_then(|t| {
                t.subscriptions
                    .get(&(server.clone(), uri.to_owned()))
                    .map(|s| s.iter().cloned().collect())
            })
            .unwrap_or_default()
    }
}

impl Router {
    /// Hands `message`, from `server`, to the request's stream or else the session's.
    fn deliver(
        &self,
        server: &str,
        session: &str,
        related: Option<&Arc<dyn MessageSink>>,
        message: bytes::Bytes,
    ) {
        match related {
            Some(r) => r.send_from(server, message),
            None => {
                if let Some(e) = self.sessions.get(session) {
                    e.info.sink.send_from(server, message);
                }
            }
        }
    }

    /// Who a server-initiated message from `from` is for: the caller of the request it came
    /// for when the transport knows it (`related`), else its owner session for a dedicated
    /// instance, else the newest caller in flight there.
    fn addressee(&self, from: &Source, related: Option<u64>) -> Option<super::forward::Caller> {
        if let Some(caller) = related.and_then(|id| self.flights.caller_of(id)) {
            return Some(caller);
        }
        match from.owner.get() {
            Some(owner) => Some(
                self.flights
                    .newest_at(from.instance, Some(owner))
                    .unwrap_or_else(|| (owner.clone(), None)),
            ),
            None => self.flights.newest_at(from.instance, None),
        }
    }

    pub(super) fn relay_notification(
        &self,
        from: &Arc<Source>,
        n: Notification,
        related: Option<u64>,
    ) {
        let server = &from.server;
        let params: Option<Value> = n
            .params
            .as_deref()
            .and_then(|p| serde_json::from_str(p.get()).ok());
        match n.method.as_str() {
            methods::PROGRESS => {
                let Some(mut params) = params else { return };
                let Some(token) = params.get("progressToken").and_then(Value::as_str) else {
                    return;
                };
                let Some(route) = self.flights.progress_route(token) else {
                    tracing::debug!(server = %server, token, "progress for a request no longer in flight");
                    return;
                };
                params["progressToken"] = route.original.clone();
                let msg = notification_bytes(methods::PROGRESS, Some(crate::mcp::to_raw(&params)));
                self.deliver(server, &route.session, route.related.as_ref(), msg);
            }
            methods::MESSAGE => {
                // Log messages are not tied to a request on the wire; the newest caller at this
                // server is who caused them. With nobody in flight they stay in the gateway's
                // log rather than leak into an unrelated session.
                let level = params
                    .as_ref()
                    .and_then(|p| p.get("level"))
                    .and_then(Value::as_str)
                    .unwrap_or("info");
                match self.addressee(from, related) {
                    Some((session, related)) => {
                        if self
                            .sessions
                            .get(&session)
                            .is_some_and(|e| e.wants_log(level))
                        {
                            self.deliver(
                                server,
                                &session,
                                related.as_ref(),
                                Message::Notification(n).to_bytes(),
                            );
                        }
                    }
                    None => {
                        tracing::debug!(server = %server, level, "server log message with no caller in flight")
                    }
                }
            }
            methods::RESOURCES_UPDATED => {
                let Some(uri) = params
                    .as_ref()
                    .and_then(|p| p.get("uri"))
                    .and_then(Value::as_str)
                else {
                    return;
                };
                let msg = Message::Notification(n.clone()).to_bytes();
                let target = Target::Resource { server, uri };
                let clients = self.access.clients();
                for session in self.relay.subscribers(server, uri) {
                    // A dedicated instance's updates are its owner's business only, and an
                    // update goes only to a session whose client may read the URI now (a
                    // reload may have taken the grant away since it subscribed).
                    let owner_ok = from.owner.get().is_none_or(|o| *o == session);
                    let may_read = self
                        .sessions
                        .get(&session)
                        .is_some_and(|e| clients.rules(&e.info.client).allows(&target));
                    if owner_ok && may_read {
                        self.tell(&session, methods::RESOURCES_UPDATED, uri, msg.clone());
                    }
                }
            }
            methods::CANCELLED => {
                let Some(mut params) = params else { return };
                let Some(up_id) = params
                    .get("requestId")
                    .and_then(|v| serde_json::from_value::<Id>(v.clone()).ok())
                else {
                    return;
                };
                if let Some((down_id, session)) = self.relay.downstream_id_of(from.instance, &up_id)
                {
                    params["requestId"] = Value::String(down_id);
                    let msg =
                        notification_bytes(methods::CANCELLED, Some(crate::mcp::to_raw(&params)));
                    self.deliver(server, &session, None, msg);
                }
            }
            other => {
                tracing::debug!(server = %server, method = other, "dropping server notification")
            }
        }
    }

    pub(super) async fn relay_request(
        &self,
        from: &Arc<Source>,
        req: Request,
        related: Option<u64>,
    ) {
        let server = &from.server;
        let Some(up) = self.servers.instance(from.instance) else {
            return;
        };
        let refuse = |code: ErrorCode, message: String| {
            Err(crate::mcp::error::error_object(code, &message, None))
        };
        if req.method == methods::PING {
            up.respond(req.id, Ok(crate::mcp::to_raw(&json!({})))).await;
            return;
        }
        let needs: fn(&super::ClientCaps) -> bool = match req.method.as_str() {
            methods::SAMPLING_CREATE_MESSAGE => |c| c.sampling,
            methods::ELICITATION_CREATE => |c| c.elicitation,
            methods::ROOTS_LIST => |c| c.roots,
            other => {
                let msg = format!("the gateway does not relay `{other}` to clients");
                up.respond(req.id, refuse(ErrorCode::METHOD_NOT_FOUND, msg))
                    .await;
                return;
            }
        };
        let addressee = self
            .addressee(from, related)
            .and_then(|(session, related)| {
                let entry = self.sessions.get(&session)?;
                Some((session, related, entry))
            });
        // A server asking for roots when no session can be asked (a shared server between
        // calls) or of a client without roots gets the policy's roots, not an error.
        if req.method == methods::ROOTS_LIST
            && addressee
                .as_ref()
                .is_none_or(|(_, _, e)| !e.info.caps.roots)
        {
            up.respond(req.id, Ok(crate::mcp::to_raw(&up.configured_roots())))
                .await;
            return;
        }
        let Some((session, related, entry)) = addressee else {
            let msg = format!(
                "no client session is waiting on server `{server}`, so `{}` has no one to ask",
                req.method
            );
            up.respond(req.id, refuse(ErrorCode::INTERNAL_ERROR, msg))
                .await;
            return;
        };
        if !needs(&entry.info.caps) {
            let msg = format!(
                "the client did not declare the capability `{}` needs",
                req.method
            );
            up.respond(req.id, refuse(ErrorCode::METHOD_NOT_FOUND, msg))
                .await;
            return;
        }
        let Some(down_id) = self
            .relay
            .add_pending(&session, from.instance, req.id.clone())
        else {
            let msg = "too many requests waiting on this client".to_owned();
            up.respond(req.id, refuse(ErrorCode::OVER_CAPACITY, msg))
                .await;
            return;
        };
        let msg = Message::Request(Request {
            id: Id::Str(down_id),
            method: req.method,
            params: req.params,
        })
        .to_bytes();
        self.deliver(server, &session, related.as_ref(), msg);
    }
}
