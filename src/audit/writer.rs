//! The log's front: [`AuditLog`] (async, bounded) opens the directory and hands records to the
//! writer thread ([`super::write_thread`]: blocking file I/O, group commit, checkpoints,
//! rotation); the directory's files are in [`super::log_dir`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::chain::GENESIS;
use super::config::AuditConfig;
use super::error::AuditError;
use super::log_dir::{
    create_private_dir, key_file, load_or_generate_key, lock_dir, new_log_id, open_segment,
    start_retention, sync_dir,
};
use super::record::{AuditEvent, Redact};
use super::syncer::Syncer;
use super::write_thread::{sync_failure, Writer};
use super::{epochs, keys, recover, segment};
use crate::policy::FsyncMode;

/// A record's sequence number.
pub type Seq = u64;

/// File name of the key generated when the policy names none.
pub const GENERATED_KEY_FILE: &str = "signing.key";

pub(super) enum Msg {
    Append {
        event: Map<String, Value>,
        reply: oneshot::Sender<Result<Seq, AuditError>>,
        // Held until the writer has taken the record: this is the queue bound.
        _slot: OwnedSemaphorePermit,
    },
    Shutdown(oneshot::Sender<Result<(), AuditError>>),
    /// A record of the log's own (retention), written and synced on its own.
    LogOnly {
        event: Map<String, Value>,
        reply: oneshot::Sender<Result<Seq, AuditError>>,
    },
}

pub(super) struct Shared {
    pub(super) failed: Mutex<Option<String>>,
    pub(super) is_failed: AtomicBool,
}

impl Shared {
    pub(super) fn set_failed(&self, err: &str) {
        if let Ok(mut g) = self.failed.lock() {
            if g.is_none() {
                *g = Some(err.to_string());
            }
        }
        self.is_failed.store(true, Ordering::Release);
    }

    pub(super) fn failure(&self) -> Option<String> {
        if !self.is_failed.load(Ordering::Acquire) {
            return None;
        }
        self.failed.lock().ok().and_then(|g| g.clone())
    }
}

/// The audit log. Cheap to clone; all clones write to the same log.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Mutex<Option<Sender<Msg>>>,
    slots: Arc<Semaphore>,
    shared: Arc<Shared>,
    redactor: RwLock<Option<Arc<dyn Redact>>>,
    record_arguments: bool,
    fail_closed: bool,
    append_timeout: Duration,
    log_id: String,
    dir: PathBuf,
    key_id: String,
    stop_retention: Arc<AtomicBool>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("dir", &self.inner.dir)
            .field("log_id", &self.inner.log_id)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (or creates) the log in `config.dir`: takes an exclusive lock on the directory,
    /// cuts a torn final record and records that it did, and starts the writer thread.
    ///
    /// `key`: the checkpoint signing key; `None` reads `config.signing_key`, or else
    /// `DIR/signing.key`, which is generated (0600, with `signing.key.pub`) if missing.
    pub fn open(config: &AuditConfig, key: Option<SigningKey>) -> Result<AuditLog, AuditError> {
        let dir = config.dir.clone();
        let err = |reason: String| AuditError::Open {
            dir: dir.display().to_string(),
            reason,
        };
        create_private_dir(&dir).map_err(|e| err(format!("cannot create: {e}")))?;
        let lock = lock_dir(&dir).map_err(err)?;
        let tail = recover::scan(&dir).map_err(err)?;
        // A key handed in by the caller lives in memory only: its epochs are not persisted.
        let key_path = key.is_none().then(|| key_file(config));
        if let Some(p) = &key_path {
            if p.exists() {
                let done = epochs::reconcile(p, tail.current_key.as_deref())
                    .map_err(|e| err(e.to_string()))?;
                if done != epochs::Reconciled::Current {
                    tracing::warn!(key = %p.display(), outcome = ?done, "audit key rotation was cut short by a crash; completed it");
                }
            }
        }
        let key = match key {
            Some(k) => k,
            None => load_or_generate_key(config).map_err(err)?,
        };
        let key_id = keys::key_id(&key.verifying_key());
        let log_id = match &tail.log_id {
            Some(id) => id.clone(),
            None => new_log_id().map_err(err)?,
        };
        let (index, path, len, fresh) = match &tail.segment {
            Some((i, p, len)) => (*i, p.clone(), *len, false),
            None => (1, dir.join(segment::name(1)), 0, true),
        };
        let file =
            open_segment(&path, fresh).map_err(|e| err(format!("{}: {e}", path.display())))?;
        let shared = Arc::new(Shared {
            failed: Mutex::new(None),
            is_failed: AtomicBool::new(false),
        });
        let syncer = match config.fsync {
            FsyncMode::Group => Some(
                Syncer::start(sync_failure(shared.clone(), dir.clone()))
                    .map_err(|e| err(format!("cannot start the sync thread: {e}")))?,
            ),
            FsyncMode::Always | FsyncMode::None => None,
        };
        if fresh {
            // The new file's directory entry must be durable before any record in it counts.
            sync_dir(&dir).map_err(|e| err(e.to_string()))?;
        }
        // The epoch began at the last rotation (or the log's first record): restarts do not
        // extend it.
        let epoch_age = tail
            .epoch_began_ms
            .map(|ms| {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                now.saturating_sub(Duration::from_millis(ms))
            })
            .unwrap_or_default();
        let epoch_began = Instant::now()
            .checked_sub(epoch_age)
            .unwrap_or_else(Instant::now);
        let mut w = Writer {
            dir: dir.clone(),
            cfg: config.clone(),
            key,
            key_path,
            epoch_began,
            key_id: key_id.clone(),
            log_id: log_id.clone(),
            next_seq: tail.next_seq,
            prev: tail.prev,
            frontier: tail.frontier.clone(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            seg_index: index,
            seg_path: path,
            seg_len: len,
            seg_allocated: len,
            seg_records: 0,
            seg_opened: Instant::now(),
            file: Arc::new(file),
            dirty: false,
            shared,
            syncer,
            _lock: lock,
        };
        if tail.next_seq > 0 && tail.prev == GENESIS {
            return Err(err("inconsistent log state".into()));
        }
        w.start(&tail).map_err(|e| err(e.to_string()))?;
        let shared = w.shared.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| err(format!("cannot start the writer thread: {e}")))?;
        let stop_retention = Arc::new(AtomicBool::new(false));
        if let Some(r) = &config.retention {
            start_retention(dir.clone(), r.clone(), tx.clone(), stop_retention.clone())
                .map_err(|e| err(format!("cannot start the retention thread: {e}")))?;
        }
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx: Mutex::new(Some(tx)),
                slots: Arc::new(Semaphore::new(config.queue_capacity.max(1))),
                shared,
                redactor: RwLock::new(None),
                record_arguments: config.record_arguments,
                fail_closed: config.fail_closed,
                append_timeout: config.append_timeout,
                log_id,
                dir,
                key_id,
                stop_retention,
            }),
        })
    }

    /// Appends one record. Resolves with its `seq` once the record is durable as the fsync mode
    /// says: `always`/`group` after `fdatasync` of the batch holding it, `none` after `write(2)`.
    /// Waits (asynchronously) while the queue is full.
    ///
    /// Errors: [`AuditError::Failed`] once the log is fail-closed after a write error (every
    /// later append too); [`AuditError::Io`] for the batch that hit the error; `Timeout`, `Closed`,
    /// `Reserved`, `Encode` as documented there. When [`AuditLog::fail_closed`] is true the
    /// gateway must refuse the call on any error.
    pub fn append(
        &self,
        event: AuditEvent,
    ) -> impl std::future::Future<Output = Result<Seq, AuditError>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            if event.kind.log_only() {
                return Err(AuditError::Reserved(event.kind.as_str()));
            }
            if let Some(reason) = inner.shared.failure() {
                return Err(AuditError::Failed(reason));
            }
            let limit = inner.append_timeout;
            let work = async {
                let slot = inner
                    .slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| AuditError::Closed)?;
                let (reply, rx) = oneshot::channel();
                let event = inner.prepare(event);
                let sent = match inner.tx.lock() {
                    Ok(g) => g.as_ref().map(|tx| {
                        tx.send(Msg::Append {
                            event,
                            reply,
                            _slot: slot,
                        })
                    }),
                    Err(_) => None,
                };
                match sent {
                    Some(Ok(())) => {}
                    _ => return Err(AuditError::Closed),
                }
                rx.await.map_err(|_| AuditError::Closed)?
            };
            tokio::time::timeout(limit, work)
                .await
                .map_err(|_| AuditError::Timeout(limit))?
        }
    }

    /// Writes a final checkpoint, syncs, and stops the writer. Later appends fail with `Closed`.
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        self.inner.stop_retention.store(true, Ordering::Release);
        let (reply, rx) = oneshot::channel();
        let tx = self.inner.tx.lock().ok().and_then(|mut g| g.take());
        let Some(tx) = tx else {
            return Err(AuditError::Closed);
        };
        tx.send(Msg::Shutdown(reply))
            .map_err(|_| AuditError::Closed)?;
        tokio::time::timeout(self.inner.append_timeout, rx)
            .await
            .map_err(|_| AuditError::Timeout(self.inner.append_timeout))?
            .map_err(|_| AuditError::Closed)?
    }

    /// Sets what replaces secret values in `detail` and recorded arguments. Until one is set,
    /// arguments are never written even with `record_arguments = true`.
    pub fn set_redactor(&self, r: Arc<dyn Redact>) {
        if let Ok(mut g) = self.inner.redactor.write() {
            *g = Some(r);
        }
    }

    /// Whether the gateway must refuse calls when `append` fails.
    pub fn fail_closed(&self) -> bool {
        self.inner.fail_closed
    }

    /// The reason the log stopped accepting records, if it did.
    pub fn failure(&self) -> Option<String> {
        self.inner.shared.failure()
    }

    pub fn log_id(&self) -> &str {
        &self.inner.log_id
    }

    pub fn key_id(&self) -> &str {
        &self.inner.key_id
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The retention thread holds a sender to the writer: let both end.
        self.stop_retention.store(true, Ordering::Release);
    }
}

impl Inner {
    fn prepare(&self, event: AuditEvent) -> Map<String, Value> {
        let red = self.redactor.read().ok().and_then(|g| g.clone());
        event.into_fields(self.record_arguments, red.as_deref())
    }
}
