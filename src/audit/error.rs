use std::time::Duration;

/// Why an append (or opening the log) failed. Cloneable: one failed `fdatasync` fails every
/// waiter of its batch with the same error.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    /// The log hit a write or sync error earlier and is fail-closed: nothing more is written
    /// until the gateway restarts. The gateway must refuse the call.
    #[error("the audit log is unavailable after an earlier write failure ({0}); calls are refused rather than run unaudited")]
    Failed(String),
    /// This batch could not be written or synced. With `fail_closed` the log is now failed too.
    #[error("cannot write the audit log: {0}")]
    Io(String),
    /// The record was not durable within `append_timeout` (it may still be written later).
    #[error("the audit log did not make the record durable within {0:?}")]
    Timeout(Duration),
    /// The log was shut down.
    #[error("the audit log is shut down")]
    Closed,
    /// The gateway passed a kind only the log itself writes (checkpoint, recovery, segment_start).
    #[error("record kind `{0}` is written by the audit log itself")]
    Reserved(&'static str),
    #[error("cannot encode the audit record: {0}")]
    Encode(String),
    /// Opening the directory, reading the existing log or the key failed.
    #[error("audit log {dir}: {reason}")]
    Open { dir: String, reason: String },
}
