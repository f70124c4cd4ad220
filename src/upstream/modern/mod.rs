//! Speaking MCP 2026-07-28 to a server that supports it, at the upstream edge.
//!
//! Whether a server speaks it is settled once per instance, when it starts: [`probe`] reads its
//! answer to `server/discover` (the transport sends it), and a server that does not answer as a
//! 2026-07-28 one gets the initialize handshake instead. A restart probes again.
//!
//! To the router a modern server looks exactly like a 2025-era one. Requests to it are encoded
//! here: [`envelope`] writes into each request's `_meta` what the handshake used to settle (the
//! revision, the caller's capabilities, the gateway's identity, the caller's log level).
//! Methods the revision replaced are answered at this edge: `resources/subscribe` and
//! `resources/unsubscribe` change the set of URIs the transport's `subscriptions/listen` stream
//! asks for, `logging/setLevel` is carried by each request's `logLevel` instead. Client
//! notifications are not sent (closing a request's response stream is its cancellation), nor are
//! responses (a 2026-07-28 server sends no requests).
//!
//! A multi round-trip result (`InputRequiredResult`) reaches a 2026-07-28 caller as it is (the
//! bridge above seals its `requestState`). For a 2025-era caller, [`input`] plays the pattern on
//! the caller's behalf: each input request becomes a request the router relays to the caller's
//! session, like a 2025-era server's own, and the answers go into the retry.

pub(super) mod envelope;
mod input;
pub(super) mod listen;
pub(super) mod probe;
pub(super) mod stdio_probe;

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::connection::Connection;
use super::{Outcome, Upstream, UpstreamError};
use crate::mcp::error::error_object;
use crate::mcp::{methods, ErrorCode, RequestContext};
pub(super) use input::Asks;
pub(super) use listen::Listening;

/// Rounds of input one request may ask for before the gateway gives up on it.
const MAX_ROUNDS: usize = 16;
/// How long a `resources/subscribe` waits for the server to acknowledge the listen stream that
/// carries the new subscription.
const LISTEN_ACK_WAIT: Duration = Duration::from_secs(5);

/// One request to a modern server, as [`Upstream::call`] got it.
pub(super) struct Call<'a> {
    pub id: u64,
    pub method: &'a str,
    pub params: Option<Box<RawValue>>,
    pub caller: Option<&'a RequestContext>,
    pub deadline: tokio::time::Instant,
    pub timeout: Duration,
}

/// Whether a client notification is sent to a modern server: over stdio only
/// `notifications/cancelled` (the one client notification the revision keeps), over HTTP none
/// (cancellation is closing the request's stream).
pub(super) fn takes_notification(conn: &Connection, method: &str) -> bool {
    conn.is_stdio() && method == methods::CANCELLED
}

fn ok_empty() -> Outcome {
    Ok(crate::mcp::to_raw(&json!({})))
}

fn gateway_error(code: ErrorCode, message: &str) -> Outcome {
    Err(error_object(code, message, None))
}

impl Upstream {
    pub(super) async fn call_modern(
        &self,
        conn: &Arc<Connection>,
        call: Call<'_>,
    ) -> Result<Outcome, UpstreamError> {
        let mut params: Map<String, Value> = match call.params.as_deref() {
            None => Map::new(),
            Some(raw) => match serde_json::from_str(raw.get()) {
                Ok(Value::Object(m)) => m,
                _ => {
                    return Ok(gateway_error(
                        ErrorCode::INVALID_PARAMS,
                        "`params` must be an object",
                    ))
                }
            },
        };
        match call.method {
            methods::RESOURCES_SUBSCRIBE | methods::RESOURCES_UNSUBSCRIBE => {
                let Some(uri) = params.get("uri").and_then(Value::as_str) else {
                    return Ok(gateway_error(
                        ErrorCode::INVALID_PARAMS,
                        "`uri` must be a string",
                    ));
                };
                let on = call.method == methods::RESOURCES_SUBSCRIBE;
                let generation = conn.listening().change(uri, on);
                // Answered once the server has acknowledged the new stream (bounded), so that
                // an update right after the answer is not lost.
                if let (true, Some(g)) = (on, generation) {
                    conn.listening().acknowledged(g, LISTEN_ACK_WAIT).await;
                }
                return Ok(ok_empty());
            }
            methods::LOGGING_SET_LEVEL => return Ok(ok_empty()),
            _ => {}
        }
        let relayed = call
            .caller
            .is_some_and(|c| !envelope::takes_input_required(c));
        for round in 0..MAX_ROUNDS {
            // A retry is a request of its own, with an id of its own.
            let wire = if round == 0 {
                call.id
            } else {
                self.next_request_id()
            };
            let raw = envelope::encode(&params, call.caller, self.client_capabilities);
            let outcome = self
                .exchange(
                    conn,
                    wire,
                    call.method,
                    Some(raw),
                    call.deadline,
                    call.timeout,
                )
                .await?;
            if !relayed {
                return Ok(outcome);
            }
            let asked = match &outcome {
                Ok(result) => input::asked(result),
                Err(_) => None,
            };
            let Some(asked) = asked else {
                return Ok(outcome);
            };
            let answers = match self
                .ask_caller(call.id, asked.requests, call.deadline)
                .await
            {
                Ok(Ok(answers)) => answers,
                Ok(Err(error)) => return Ok(Err(error)),
                Err(()) => {
                    return Err(UpstreamError::Timeout {
                        server: self.name.to_string(),
                        method: call.method.to_owned(),
                        timeout: call.timeout,
                    })
                }
            };
            params.insert("inputResponses".into(), Value::Object(answers));
            match asked.state {
                Some(state) => params.insert("requestState".into(), Value::String(state)),
                None => params.remove("requestState"),
            };
        }
        Ok(gateway_error(
            ErrorCode::INTERNAL_ERROR,
            &format!(
                "server `{}` asked for the client's input more than {MAX_ROUNDS} times in one `{}`; the gateway stopped retrying",
                self.name, call.method
            ),
        ))
    }
}
