//! The era probe over stdio: `server/discover` sent on a started server's pipe, and what its
//! answer (or its silence) means for the server's `protocol` choice.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::connection::{Connection, PendingGuard};
use super::super::InitInfo;
use super::probe::{self, Verdict};
use crate::mcp::{methods, to_raw};
use crate::policy::ProtocolChoice;

/// Sends `server/discover` on a stdio connection and reads the verdict.
pub(in crate::upstream) async fn send(conn: &Connection) -> Verdict {
    let id = super::super::NEXT_REQUEST_ID.fetch_add(1, Ordering::Relaxed);
    let params = Some(to_raw(&probe::discover_params()));
    let Ok(rx) = conn.request(id, methods::SERVER_DISCOVER, params).await else {
        return Verdict::Legacy("the probe could not be sent".into());
    };
    let guard = PendingGuard::new(conn, id);
    let verdict = match rx.await {
        Ok(Ok(Ok(result))) => probe::verdict(Ok(result.get())),
        Ok(Ok(Err(error))) => probe::verdict(Err(error.get())),
        _ => Verdict::Legacy("the probe got no answer".into()),
    };
    guard.disarm();
    verdict
}

/// What a stdio probe means for a server configured with `choice`: its `InitInfo` when it is
/// to be spoken to in 2026-07-28, `None` for the handshake, or why it cannot start.
pub(in crate::upstream) fn settle(
    choice: ProtocolChoice,
    verdict: Result<Verdict, tokio::time::error::Elapsed>,
    waited: Duration,
) -> Result<Option<InitInfo>, String> {
    let why = match verdict {
        Ok(Verdict::Modern(info)) => return Ok(Some(*info)),
        Ok(Verdict::Refused(why)) => return Err(why),
        Ok(Verdict::Legacy(why)) => why,
        Err(_) => format!(
            "no answer to server/discover within {}s",
            waited.as_secs_f32()
        ),
    };
    if choice == ProtocolChoice::Modern {
        return Err(format!(
            "the server does not speak {}, which the policy requires (protocol = \"{}\"): {why}",
            probe::VERSION,
            probe::VERSION
        ));
    }
    tracing::info!(reason = %why, "the server speaks the 2025 era; using the initialize handshake");
    Ok(None)
}
