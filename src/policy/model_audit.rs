//! The validated `[audit]` table: where and how the audit log is written, its retention and its
//! SIEM sinks. Part of the policy model (see `model.rs`).

use std::path::PathBuf;
use std::time::Duration;

use super::model::*;
/// The `[audit]` table: where and how the tamper-evident audit log is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub enabled: bool,
    /// Resolved against the policy file's directory when relative.
    pub dir: PathBuf,
    pub fsync: FsyncMode,
    /// Refuse calls when the log cannot be written.
    pub fail_closed: bool,
    /// Private key for checkpoints; `None` = `DIR/signing.key`, generated at first start.
    pub signing_key: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    pub checkpoint_every: u64,
    pub max_segment_bytes: u64,
    pub rotate_interval: Duration,
    /// Write call arguments (redacted) besides their SHA-256.
    pub record_arguments: bool,
    /// Each checkpoint key signs for this long, then certifies the next and is destroyed;
    /// `None` (`key_epoch = "off"`): one key for the life of the log.
    pub key_epoch: Option<Duration>,
    pub sinks: Vec<AuditSink>,
    /// Where checkpoints and key rotations are also written, for `audit verify --witness`.
    pub witnesses: Vec<AuditSink>,
    /// How long sealed segments are kept; `None`: forever.
    pub retention: Option<AuditRetention>,
}

/// `[audit] retention = { max_age, max_bytes, archive_dir }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRetention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    /// Removed segments are gzipped here; `None`: deleted.
    pub archive_dir: Option<PathBuf>,
}

/// Default audit directory, relative to the policy file (or the working directory for the
/// embedded default policy).
pub const DEFAULT_AUDIT_DIR: &str = "portcullis-audit";

impl Default for Audit {
    fn default() -> Self {
        Audit {
            enabled: true,
            dir: PathBuf::from(DEFAULT_AUDIT_DIR),
            fsync: FsyncMode::Group,
            fail_closed: true,
            signing_key: None,
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_every: 10_000,
            max_segment_bytes: 64 << 20,
            rotate_interval: Duration::from_secs(24 * 3600),
            record_arguments: false,
            key_epoch: Some(Duration::from_secs(3600)),
            sinks: Vec::new(),
            witnesses: Vec::new(),
            retention: None,
        }
    }
}

/// When an appended record counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// `fdatasync` after every record.
    Always,
    /// One `fdatasync` per batch of queued records (group commit).
    Group,
    /// After `write(2)` only: survives a gateway crash, not a machine crash.
    None,
}

impl FsyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Group => "group",
            FsyncMode::None => "none",
        }
    }
}

/// One `[[audit.sinks]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSink {
    /// Names the sink's cursor file `DIR/cursors/NAME.json`; default `TYPE-N` (1-based).
    pub name: String,
    pub kind: SinkKind,
    /// A witness: only checkpoints and key rotations are sent.
    pub witness: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// RFC 5424 over TCP (octet counting), optionally TLS.
    Syslog {
        /// `host:port`.
        address: String,
        tls: bool,
        ca_file: Option<PathBuf>,
        /// TLS server name; default the host part of `address`.
        server_name: Option<String>,
        format: SinkFormat,
    },
    /// Splunk HEC (`hec_token`) or a generic webhook (`hmac_secret`).
    Http {
        url: String,
        auth: HttpSinkAuth,
        ca_file: Option<PathBuf>,
    },
    /// The local systemd journal.
    Journald,
    /// Appended to `DIR/witness-LOG_ID.jsonl` with an fsync per batch (a witness on another
    /// volume or mount).
    WitnessDir { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    Json,
    Cef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpSinkAuth {
    HecToken(SecretRef),
    HmacSecret(SecretRef),
    None,
}
