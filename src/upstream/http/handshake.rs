//! The Streamable HTTP handshake with a remote server (2025 revisions): `initialize` on a POST,
//! the session id and protocol version the answer sets for every later request, then
//! `notifications/initialized`. A refusal that means "not Streamable HTTP" hands over to the
//! legacy transport; one that means "2026-07-28 only" is reported as such.

use http::header::HeaderValue;
use http::StatusCode;

use super::{Remote, SESSION_HEADER, SHORT_EXCHANGE};
use crate::mcp::{methods, to_raw, Id, Message, Notification, Request as RpcRequest};
use crate::upstream::supervisor::{init_params, parse_init};
use crate::upstream::InitInfo;

impl Remote {
    /// The Streamable HTTP handshake: POST initialize, read the answer (JSON or SSE), keep the
    /// session id, send `notifications/initialized`. `Ok(None)` means the endpoint does not
    /// speak Streamable HTTP (a 4xx without a JSON-RPC answer), so the legacy transport may.
    pub(super) async fn initialize(&self) -> Result<Option<InitInfo>, String> {
        let msg = Message::Request(RpcRequest {
            id: Id::Num(0),
            method: methods::INITIALIZE.to_owned(),
            params: Some(to_raw(&init_params(self.client_capabilities))),
        })
        .to_bytes();
        let req = self.build_post(&self.url, msg, false).await?;
        let resp = self.send(req, self.startup_timeout).await?;
        let status = resp.status();
        if matches!(
            status,
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) {
            // A server that speaks only 2026-07-28 says so here; the legacy transport would
            // only bury that under a GET refusal.
            if let Some(why) = self.modern_only(resp).await {
                return Err(why);
            }
            tracing::info!(server = %self.server, %status, "initialize over Streamable HTTP refused; trying the legacy HTTP+SSE transport");
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.status_error(resp, "initialize").await);
        }
        let session = resp.headers().get(SESSION_HEADER).cloned();
        let mut answer = None;
        self.read_messages(resp, self.startup_timeout, None, |m| {
            if let Message::Response(r) = m {
                if r.id == Id::Num(0) {
                    answer = Some(r.outcome.clone());
                }
            }
        })
        .await?;
        let outcome = answer.ok_or("the server sent no answer to initialize")?;
        let info = parse_init(outcome)?;
        if let Ok(mut s) = self.session.lock() {
            *s = session;
        }
        if let Ok(mut p) = self.protocol.lock() {
            *p = HeaderValue::from_str(&info.protocol_version).ok();
        }
        let note = Message::Notification(Notification {
            method: methods::INITIALIZED.to_owned(),
            params: None,
        })
        .to_bytes();
        let req = self.build_post(&self.url, note, true).await?;
        let resp = self.send(req, SHORT_EXCHANGE).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, "notifications/initialized").await);
        }
        Ok(Some(info))
    }
}
