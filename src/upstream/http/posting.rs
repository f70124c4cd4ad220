//! Messages to the server: the outbox drained one POST per message, concurrently, each answer
//! (JSON or an SSE stream) read back into the connection, and a lost session re-initialized.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{StatusCode, Uri};
use tokio::sync::{mpsc, Semaphore};

use super::body::ReadError;
use super::*;

impl Remote {
    /// Drains the connection's outbox: one POST per message, concurrently (a long tool call
    /// must not hold up a `notifications/cancelled` behind it). In Streamable mode this only
    /// sees what [`DirectPost`] gave back for lack of a free slot, and what was queued before.
    pub(super) async fn write_loop(
        self: Arc<Self>,
        mode: Mode,
        mut outbox: mpsc::Receiver<Bytes>,
        to: Uri,
        permits: Arc<Semaphore>,
    ) {
        while let Some(msg) = outbox.recv().await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let request_id = match Message::parse(&msg) {
                Ok(Message::Request(r)) => match r.id {
                    Id::Num(n) => u64::try_from(n).ok(),
                    Id::Str(_) => None,
                },
                _ => None,
            };
            let me = self.clone();
            let to = to.clone();
            tokio::spawn(async move {
                me.post(mode, &to, msg, request_id).await;
                drop(permit);
            });
        }
    }

    /// Sends one message and handles what comes back.
    pub(super) async fn post(&self, mode: Mode, to: &Uri, msg: Bytes, request_id: Option<u64>) {
        let limit = if request_id.is_some() {
            LONG_EXCHANGE
        } else {
            SHORT_EXCHANGE
        };
        let fail = |reason: String| {
            if let Some(id) = request_id {
                self.conn.fail(id, &reason);
            }
        };
        let mut retried = false;
        let resp = loop {
            match self.post_once(mode, to, msg.clone(), limit).await {
                Ok(Posted::Response(r)) => break r,
                Ok(Posted::SessionExpired) if !retried => {
                    retried = true;
                    let used = self.session.lock().ok().and_then(|s| s.clone());
                    if let Err(e) = self.reinitialize(used).await {
                        fail(format!(
                            "the server expired our session and re-initializing failed: {e}"
                        ));
                        self.die(format!("session expired and re-initialize failed: {e}"));
                        return;
                    }
                }
                Ok(Posted::SessionExpired) => {
                    fail(
                        "the server expired the session again right after re-initializing"
                            .to_owned(),
                    );
                    return;
                }
                Err(SendError::Token(e)) => {
                    // The server may be fine; only this request goes without a token. The
                    // next one tries the authorization server again.
                    fail(e);
                    return;
                }
                Err(SendError::Connection(e)) => {
                    // A connection-level failure: the server is gone. Fail this request at once
                    // and let the supervisor reconnect (it fails every other pending request).
                    fail(format!("lost the connection to the server: {e}"));
                    self.die(e);
                    return;
                }
            }
        };
        let status = resp.status();
        if !status.is_success() {
            let e = self.status_error(resp, "POST").await;
            fail(e);
            return;
        }
        if mode == Mode::Legacy || status == StatusCode::ACCEPTED {
            return; // answers arrive on the SSE stream
        }
        let modern = mode == Mode::Modern;
        let read = self
            .read_messages(resp, limit, request_id, |m| {
                if let (true, Message::Response(r)) = (modern, m) {
                    if let Ok(result) = &r.outcome {
                        self.mirrors.note(&self.server, result);
                    }
                }
            })
            .await;
        if let Err(ReadError::TooLarge { size, limit }) = &read {
            // The response is dropped unread (aborted): the connection and every other
            // request go on.
            let size = size.map_or_else(|| format!("more than {limit}"), |n| n.to_string());
            tracing::warn!(server = %self.server, size = %size, limit, "aborted a response over max_message_bytes");
        }
        if let Some(id) = request_id {
            if self.conn.is_pending(id) {
                let why = match read {
                    Err(ReadError::TooLarge { size, limit }) => Broken::TooLarge { size, limit },
                    Err(e) => Broken::Lost(format!("the server's answer broke off: {e}")),
                    Ok(()) => {
                        Broken::Lost("the server ended its response without answering".to_owned())
                    }
                };
                self.conn.break_off(id, why);
            }
        }
    }

    pub(super) async fn post_once(
        &self,
        mode: Mode,
        to: &Uri,
        msg: Bytes,
        limit: Duration,
    ) -> Result<Posted, SendError> {
        let with_session = mode == Mode::Streamable;
        let had_session = with_session && self.session.lock().is_ok_and(|s| s.is_some());
        let req = if mode == Mode::Modern {
            self.build_modern(to, msg.clone()).await
        } else {
            self.build_post(to, msg.clone(), with_session).await
        }
        .map_err(SendError::Connection)?;
        let mut req = req;
        crate::telemetry::propagation::mirror_headers(&msg, req.headers_mut());
        let resp = self.send(req, limit).await?;
        if resp.status() == StatusCode::NOT_FOUND && had_session {
            return Ok(Posted::SessionExpired);
        }
        Ok(Posted::Response(resp))
    }

    /// Starts a new MCP session after the server forgot ours. Concurrent callers that used
    /// the same old session wait for one re-initialization.
    pub(super) async fn reinitialize(&self, used: Option<HeaderValue>) -> Result<(), String> {
        let _one = self.reinit.lock().await;
        let current = self.session.lock().ok().and_then(|s| s.clone());
        if current != used {
            return Ok(()); // someone else already did it
        }
        tracing::info!(server = %self.server, "the server expired our session; initializing a new one");
        if let Ok(mut s) = self.session.lock() {
            *s = None;
        }
        match self.initialize().await? {
            Some(_) => Ok(()),
            None => Err("the server refused initialize".to_owned()),
        }
    }
}
