//! What the server sends on its own: the Streamable HTTP standalone GET stream (reopened when it
//! ends) and the legacy HTTP+SSE transport's event stream.

use std::sync::Arc;

use http::{Method, StatusCode, Uri};

use super::body::{ReadError, SseReader};
use super::*;

impl Remote {
    /// Streamable HTTP: keeps the standalone GET stream open for server-initiated messages
    /// (list_changed, requests), reopening it when it ends.
    pub(super) async fn get_loop(self: Arc<Self>) {
        while !self.is_dead() {
            let req = match self
                .build(Method::GET, &self.url, "text/event-stream", None, true)
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(server = %self.server, error = %e, "cannot open the GET stream");
                    tokio::time::sleep(GET_REOPEN * 5).await;
                    continue;
                }
            };
            let resp = match self.send(req, SHORT_EXCHANGE).await {
                Ok(r) => r,
                Err(SendError::Token(e)) => {
                    tracing::warn!(server = %self.server, error = %e, "cannot open the GET stream without an access token");
                    tokio::time::sleep(GET_REOPEN * 5).await;
                    continue;
                }
                Err(SendError::Connection(e)) => {
                    self.die(format!("lost the connection to the server: {e}"));
                    return;
                }
            };
            match resp.status() {
                StatusCode::METHOD_NOT_ALLOWED => return, // the server offers no GET stream
                StatusCode::NOT_FOUND => {
                    let used = self.session.lock().ok().and_then(|s| s.clone());
                    if let Err(e) = self.reinitialize(used).await {
                        self.die(format!("session expired and re-initialize failed: {e}"));
                        return;
                    }
                    continue;
                }
                s if s.is_success() && is_sse(resp.headers()) => {
                    let mut reader =
                        SseReader::new(resp.into_body(), self.source.max_message_bytes);
                    loop {
                        match reader.next().await {
                            Ok(Some(ev)) => self.deliver_event(ev).await,
                            Ok(None) => break,
                            Err(e @ ReadError::TooLarge { .. }) => {
                                // Only this stream is dropped; it is opened again below.
                                tracing::warn!(server = %self.server, error = %e, "aborted the GET stream: an event over max_message_bytes");
                                break;
                            }
                            Err(e) => {
                                tracing::debug!(server = %self.server, error = %e, "GET stream ended");
                                break;
                            }
                        }
                    }
                }
                s => {
                    tracing::debug!(server = %self.server, status = %s, "GET stream refused; not retrying");
                    return;
                }
            }
            tokio::time::sleep(GET_REOPEN).await;
        }
    }

    pub(super) async fn deliver_event(&self, ev: sse::Event) {
        if ev.event != "message" || ev.data.trim().is_empty() {
            return;
        }
        let Some(message) = parse_incoming(&self.source, ev.data.as_bytes()) else {
            return;
        };
        drop(ev);
        if let Err(reason) =
            dispatch_message(&self.source, &self.conn, &self.events, message, None).await
        {
            self.die(reason);
        }
    }

    /// Legacy transport: GET the SSE endpoint and wait for the `endpoint` event naming where
    /// to POST.
    pub(super) async fn open_legacy(&self) -> Result<(Uri, SseReader), String> {
        let req = self
            .build(Method::GET, &self.url, "text/event-stream", None, false)
            .await?;
        let resp = self.send(req, self.startup_timeout).await?;
        if !resp.status().is_success() || !is_sse(resp.headers()) {
            return Err(format!(
                "the url speaks neither Streamable HTTP nor HTTP+SSE ({})",
                self.status_error(resp, "GET").await
            ));
        }
        let mut reader = SseReader::new(resp.into_body(), self.source.max_message_bytes);
        let deadline = tokio::time::Instant::now() + self.startup_timeout;
        loop {
            let ev = tokio::time::timeout_at(deadline, reader.next())
                .await
                .map_err(|_| "the SSE stream sent no `endpoint` event in time".to_owned())??
                .ok_or("the SSE stream ended before its `endpoint` event")?;
            if ev.event == "endpoint" {
                let endpoint = resolve_endpoint(&self.url, ev.data.trim())?;
                tracing::info!(server = %self.server, "connected over the legacy HTTP+SSE transport");
                return Ok((endpoint, reader));
            }
        }
    }

    pub(super) async fn legacy_read_loop(self: Arc<Self>, mut reader: SseReader) {
        loop {
            match reader.next().await {
                Ok(Some(ev)) => self.deliver_event(ev).await,
                Ok(None) => {
                    self.die("the server closed its SSE stream".to_owned());
                    return;
                }
                Err(e) => {
                    self.die(format!("the server's SSE stream broke: {e}"));
                    return;
                }
            }
        }
    }
}
