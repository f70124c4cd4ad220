//! Run-time settings of the log, filled from the policy's `[audit]` table.

use std::path::PathBuf;
use std::time::Duration;

use crate::policy::{self, FsyncMode};

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    pub fsync: FsyncMode,
    pub fail_closed: bool,
    /// `None`: `DIR/signing.key`, generated at first start.
    pub signing_key: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    pub checkpoint_every: u64,
    pub max_segment_bytes: u64,
    pub rotate_interval: Duration,
    pub record_arguments: bool,
    /// Length of a checkpoint key's epoch; `None`: one key for the life of the log.
    pub key_epoch: Option<Duration>,
    /// Removal of old sealed segments; `None`: the log keeps everything.
    pub retention: Option<super::retention::Retention>,
    /// Appends waiting for the writer at most; further appenders wait for room (backpressure).
    pub queue_capacity: usize,
    /// Records written with one `fdatasync` at most (group mode).
    pub max_batch: usize,
    /// An append that is not durable within this time fails with [`super::AuditError::Timeout`].
    pub append_timeout: Duration,
    /// `serve --replica`: written as `replica` in every record, so a fleet's logs say which
    /// replica wrote them even when collected together.
    pub replica: Option<String>,
}

impl AuditConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let d = policy::Audit::default();
        AuditConfig {
            dir: dir.into(),
            ..Self::from_policy(&d)
        }
    }

    pub fn from_policy(a: &policy::Audit) -> Self {
        AuditConfig {
            dir: a.dir.clone(),
            fsync: a.fsync,
            fail_closed: a.fail_closed,
            signing_key: a.signing_key.clone(),
            checkpoint_interval: a.checkpoint_interval,
            checkpoint_every: a.checkpoint_every,
            max_segment_bytes: a.max_segment_bytes,
            rotate_interval: a.rotate_interval,
            record_arguments: a.record_arguments,
            key_epoch: a.key_epoch,
            retention: a.retention.as_ref().map(|r| super::retention::Retention {
                max_age: r.max_age,
                max_bytes: r.max_bytes,
                archive_dir: r.archive_dir.clone(),
                // Every outlet reads the log through its cursor; none may miss a record.
                sinks: a
                    .sinks
                    .iter()
                    .chain(&a.witnesses)
                    .map(|s| s.name.clone())
                    .collect(),
                check_every: Duration::from_secs(60),
            }),
            queue_capacity: 4096,
            max_batch: 1024,
            append_timeout: Duration::from_secs(30),
            replica: crate::fleet::replica::name().map(str::to_owned),
        }
    }
}
