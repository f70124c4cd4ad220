//! Records to the local systemd journal over its native protocol (`libsystemd`): one entry per
//! record, with `SYSLOG_IDENTIFIER=portcullis-audit`, the fields `AUDIT_LOG_ID`, `AUDIT_SEQ` and
//! `AUDIT_KIND`, and the record's JSON line as `MESSAGE`.
//!
//! Every send says whether journald took the record: while journald is down (restarting,
//! crashed) sends fail, the batch is not committed, and the sink sends it again from its cursor
//! once journald is back (at least once: records sent before a failure in a batch are sent
//! twice). The one gap is the kernel's: a datagram queued on journald's socket when journald is
//! killed is gone, and the native protocol has no acknowledgement that could tell.

use std::os::unix::net::UnixDatagram;

use libsystemd::logging::{journal_send, Priority};

use super::cursor::Item;

/// Where every journald client sends (the path is fixed by systemd).
const SOCKET: &str = "/run/systemd/journal/socket";
const IDENTIFIER: &str = "portcullis-audit";

pub struct Journald;

/// One record as journal fields.
struct Entry {
    message: String,
    log_id: String,
    seq: String,
    kind: String,
}

impl Journald {
    /// Checks that journald is there (an empty datagram, which journald ignores), so that a
    /// machine without a journal is reported at start-up rather than by endless retries.
    pub fn new() -> Result<Journald, String> {
        UnixDatagram::unbound()
            .and_then(|s| s.send_to(&[], SOCKET))
            .map_err(|e| format!("cannot reach journald at {SOCKET}: {e}"))?;
        Ok(Journald)
    }

    pub async fn send(&mut self, items: &[Item]) -> Result<(), String> {
        let entries: Vec<Entry> = items.iter().map(entry).collect();
        // A datagram socket blocks while journald's queue is full: off the runtime's threads.
        tokio::task::spawn_blocking(move || entries.iter().try_for_each(send_one))
            .await
            .map_err(|e| format!("the journald sender failed: {e}"))?
    }
}

fn entry(i: &Item) -> Entry {
    let kind = serde_json::from_slice::<serde_json::Value>(&i.line)
        .ok()
        .and_then(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .unwrap_or_default();
    Entry {
        message: String::from_utf8_lossy(&i.line).into_owned(),
        log_id: i.log_id.clone(),
        seq: i.seq.to_string(),
        kind,
    }
}

fn send_one(e: &Entry) -> Result<(), String> {
    let fields = [
        ("SYSLOG_IDENTIFIER", IDENTIFIER),
        ("AUDIT_LOG_ID", e.log_id.as_str()),
        ("AUDIT_SEQ", e.seq.as_str()),
        ("AUDIT_KIND", e.kind.as_str()),
    ];
    journal_send(Priority::Info, &e.message, fields.into_iter())
        .map_err(|err| format!("journald did not take record {}: {err}", e.seq))
}
