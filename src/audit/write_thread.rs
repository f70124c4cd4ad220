//! The writer thread: owns the segment file and the chain state; takes records from the
//! front's bounded queue, writes them in batches (group commit through the sync thread),
//! checkpoints and signs, rotates segments and keys, and fails closed on the first write error.

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use serde_json::{Map, Value};

use super::chain::{leaf_hash, record_hash, to_hex, Hash};
use super::config::AuditConfig;
use super::error::AuditError;
use super::merkle::Frontier;
use super::record::{format_ts, Kind, FORMAT_VERSION};
use super::syncer::{self, Reply, Syncer};
use super::{canonical, checkpoint, epochs, keys, recover, segment};
use crate::policy::FsyncMode;

use super::log_dir::{open_segment, sync_dir};
use super::writer::{Msg, Seq, Shared};

/// How much segment space is allocated ahead of the records at a time.
const PREALLOCATE_STEP: u64 = 1 << 20;

pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) cfg: AuditConfig,
    pub(super) key: SigningKey,
    /// Where the current epoch's key is kept; `None`: in memory only.
    pub(super) key_path: Option<PathBuf>,
    pub(super) epoch_began: Instant,
    pub(super) key_id: String,
    pub(super) log_id: String,
    pub(super) next_seq: Seq,
    pub(super) prev: Hash,
    pub(super) frontier: Frontier,
    pub(super) since_checkpoint: u64,
    pub(super) last_checkpoint: Instant,
    pub(super) seg_index: u64,
    pub(super) seg_path: PathBuf,
    pub(super) seg_len: u64,
    /// The segment file's length: zeros from `seg_len` on.
    pub(super) seg_allocated: u64,
    /// Records in the current segment written by this process.
    pub(super) seg_records: u64,
    pub(super) seg_opened: Instant,
    pub(super) file: Arc<File>,
    /// Bytes of an unfinished batch may be in the file.
    pub(super) dirty: bool,
    pub(super) shared: Arc<Shared>,
    /// Group mode: batches are synced and acknowledged there while the next one is written.
    pub(super) syncer: Option<Syncer>,
    pub(super) _lock: File,
}

/// Chain state to return to when a batch could not be written.
struct Snapshot {
    next_seq: Seq,
    prev: Hash,
    frontier: Frontier,
    since_checkpoint: u64,
    seg_len: u64,
    seg_records: u64,
}

/// What the sync thread does when `fdatasync` fails: the log stops whatever `fail_closed`
/// says, because the records of that batch (and any written after it) cannot be proven durable;
/// with `fail_closed = false` the gateway goes on unaudited.
pub(super) fn sync_failure(shared: Arc<Shared>, dir: PathBuf) -> syncer::OnFailure {
    Box::new(move |e: &str| {
        let err = format!("fdatasync failed: {e}");
        shared.set_failed(&err);
        tracing::error!(error = %err, dir = %dir.display(), "AUDIT LOG FAILED: records written since the last good sync may be lost; the log accepts no more records until the gateway is restarted");
        AuditError::Io(err)
    })
}

impl Writer {
    /// Records written synchronously at open: the new segment's header and what recovery did.
    pub(super) fn start(&mut self, tail: &recover::Tail) -> Result<(), AuditError> {
        let mut buf = Vec::new();
        if self.seg_len == 0 {
            let prev_segment = (self.seg_index > 1).then(|| segment::name(self.seg_index - 1));
            self.segment_start(&mut buf, prev_segment)?;
        }
        // A clean stop ends with a checkpoint, and rotation writes a segment's header at once,
        // so an empty newest segment after earlier records also means the run was cut short.
        let empty_newest = matches!(&tail.segment, Some((_, _, 0)));
        let unclean =
            tail.next_seq > 0 && (tail.last_kind.as_deref() != Some("checkpoint") || empty_newest);
        if tail.truncated.is_some() || unclean {
            let mut m = Map::new();
            m.insert("kind".into(), Kind::Recovery.as_str().into());
            let detail = match &tail.truncated {
                Some((name, offset, bytes)) => {
                    m.insert("segment".into(), name.clone().into());
                    m.insert("offset".into(), (*offset).into());
                    m.insert("truncated_bytes".into(), (*bytes).into());
                    format!(
                        "cut a torn final record of {bytes} bytes at offset {offset} of {name}; records from seq {} on continue the chain",
                        self.next_seq
                    )
                }
                None => "the previous run stopped without a final checkpoint (crash or kill); the chain continues".to_string(),
            };
            tracing::warn!(detail = %detail, "audit log recovery");
            m.insert("detail".into(), detail.into());
            self.encode(&mut buf, m)?;
        }
        if buf.is_empty() {
            return Ok(());
        }
        self.write_durable(&buf, true)
            .map_err(|e| AuditError::Io(e.to_string()))
    }

    pub(super) fn run(mut self, rx: Receiver<Msg>) {
        loop {
            let wait = self
                .next_deadline()
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            let first = match rx.recv_timeout(wait) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => {
                    self.tick();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.finish();
                    return;
                }
            };
            let mut appends = Vec::new();
            let mut shutdown = None;
            let mut log_only = Vec::new();
            let mut push = |m: Msg, appends: &mut Vec<(Map<String, Value>, Reply)>| match m {
                Msg::Append { event, reply, .. } => appends.push((event, reply)),
                Msg::Shutdown(tx) => shutdown = Some(tx),
                Msg::LogOnly { event, reply } => log_only.push((event, reply)),
            };
            push(first, &mut appends);
            while appends.len() < self.cfg.max_batch.max(1) {
                match rx.try_recv() {
                    Ok(m) => push(m, &mut appends),
                    Err(_) => break,
                }
            }
            if self.cfg.fsync == FsyncMode::Always {
                for a in appends {
                    self.commit(vec![a]);
                }
            } else if !appends.is_empty() {
                self.commit(appends);
            }
            for (event, reply) in log_only {
                let _ = reply.send(self.log_only(event));
            }
            self.tick();
            if let Some(tx) = shutdown {
                let done = self.finish();
                // Release the directory lock before answering: whoever waits for the shutdown
                // may open the log again at once.
                drop(self);
                let _ = tx.send(done);
                return;
            }
        }
    }

    fn next_deadline(&self) -> Instant {
        let mut d = self.seg_opened + self.cfg.rotate_interval;
        if self.since_checkpoint > 0 {
            d = d.min(self.last_checkpoint + self.cfg.checkpoint_interval);
        }
        if let Some(epoch) = self.cfg.key_epoch {
            d = d.min(self.epoch_began + epoch);
        }
        d
    }

    fn tick(&mut self) {
        if self.shared.failure().is_some() {
            return;
        }
        let now = Instant::now();
        if self
            .cfg
            .key_epoch
            .is_some_and(|e| now >= self.epoch_began + e)
        {
            if let Err(e) = self.rotate_key() {
                self.fail(&e);
                return;
            }
        }
        let r = if now >= self.seg_opened + self.cfg.rotate_interval && self.seg_records > 1 {
            self.rotate()
        } else if self.since_checkpoint > 0
            && now >= self.last_checkpoint + self.cfg.checkpoint_interval
        {
            self.standalone_checkpoint()
        } else {
            Ok(())
        };
        if let Err(e) = r {
            self.fail(&e);
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            next_seq: self.next_seq,
            prev: self.prev,
            frontier: self.frontier.clone(),
            since_checkpoint: self.since_checkpoint,
            seg_len: self.seg_len,
            seg_records: self.seg_records,
        }
    }

    fn restore(&mut self, s: Snapshot) -> std::io::Result<()> {
        self.next_seq = s.next_seq;
        self.prev = s.prev;
        self.frontier = s.frontier;
        self.since_checkpoint = s.since_checkpoint;
        self.seg_records = s.seg_records;
        if std::mem::take(&mut self.dirty) {
            // A partial (or unsynced) write would otherwise sit in front of the next record.
            self.file.set_len(s.seg_len)?;
            self.seg_allocated = s.seg_len;
        }
        self.seg_len = s.seg_len;
        Ok(())
    }

    fn commit(&mut self, appends: Vec<(Map<String, Value>, Reply)>) {
        if let Some(reason) = self.shared.failure() {
            for (_, r) in appends {
                let _ = r.send(Err(AuditError::Failed(reason.clone())));
            }
            return;
        }
        if self.seg_len >= self.cfg.max_segment_bytes {
            if let Err(e) = self.rotate() {
                let e = self.fail(&e);
                for (_, r) in appends {
                    let _ = r.send(Err(e.clone()));
                }
                return;
            }
        }
        let snap = self.snapshot();
        let mut buf = Vec::with_capacity(appends.len() * 320);
        let mut waiting = Vec::with_capacity(appends.len());
        for (fields, reply) in appends {
            match self.encode(&mut buf, fields) {
                Ok(seq) => waiting.push((seq, reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if self.since_checkpoint >= self.cfg.checkpoint_every {
            if let Err(e) = self.checkpoint(&mut buf) {
                for (_, r) in waiting {
                    let _ = r.send(Err(e.clone()));
                }
                return;
            }
        }
        let sync = self.cfg.fsync == FsyncMode::Always;
        match self.write_durable(&buf, sync) {
            Ok(()) => match &self.syncer {
                Some(s) => {
                    if let Err(waiting) = s.submit(self.file.clone(), waiting) {
                        let e = self.fail("the audit sync thread is gone");
                        for (_, r) in waiting {
                            let _ = r.send(Err(e.clone()));
                        }
                    }
                }
                None => {
                    for (seq, r) in waiting {
                        let _ = r.send(Ok(seq));
                    }
                }
            },
            Err(e) => {
                let mut err = e.to_string();
                if let Err(e2) = self.restore(snap) {
                    err = format!("{err}; and cannot undo the partial write: {e2}");
                    self.set_failed(&err);
                }
                let e = self.fail(&err);
                for (_, r) in waiting {
                    let _ = r.send(Err(e.clone()));
                }
            }
        }
    }

    /// Handles a write failure; returns the error the affected appenders get.
    fn fail(&mut self, err: &(impl std::fmt::Display + ?Sized)) -> AuditError {
        let err = err.to_string();
        if self.cfg.fail_closed {
            self.set_failed(&err);
            tracing::error!(error = %err, dir = %self.dir.display(), "AUDIT LOG FAILED: fail_closed is on, every call is now refused until the log is fixed and the gateway restarted");
        } else {
            tracing::error!(error = %err, dir = %self.dir.display(), "AUDIT RECORDS LOST: the audit log cannot be written and fail_closed is off, so calls continue unaudited");
        }
        AuditError::Io(err)
    }

    fn set_failed(&self, err: &str) {
        self.shared.set_failed(err);
    }

    /// Adds the header, serializes, and advances the chain state (in memory only).
    fn encode(
        &mut self,
        buf: &mut Vec<u8>,
        mut fields: Map<String, Value>,
    ) -> Result<Seq, AuditError> {
        let seq = self.next_seq;
        fields.insert("v".into(), FORMAT_VERSION.into());
        fields.insert("log_id".into(), self.log_id.clone().into());
        if let Some(r) = &self.cfg.replica {
            fields.insert("replica".into(), r.clone().into());
        }
        fields.insert("seq".into(), seq.into());
        fields.insert("ts".into(), format_ts(SystemTime::now()).into());
        fields.insert("prev".into(), to_hex(&self.prev).into());
        let bytes = canonical::to_vec(&Value::Object(fields))
            .map_err(|e| AuditError::Encode(e.to_string()))?;
        self.prev = record_hash(&bytes);
        self.frontier.push(leaf_hash(&bytes));
        self.next_seq += 1;
        self.since_checkpoint += 1;
        self.seg_records += 1;
        buf.extend_from_slice(&bytes);
        buf.push(b'\n');
        Ok(seq)
    }

    fn checkpoint(&mut self, buf: &mut Vec<u8>) -> Result<Seq, AuditError> {
        let size = self.next_seq;
        let root = self.frontier.root();
        let mut m = Map::new();
        m.insert("kind".into(), Kind::Checkpoint.as_str().into());
        m.insert("tree_size".into(), size.into());
        m.insert("root".into(), to_hex(&root).into());
        m.insert("key_id".into(), self.key_id.clone().into());
        m.insert(
            "sig".into(),
            checkpoint::sign(&self.key, &self.log_id, size, &root).into(),
        );
        let seq = self.encode(buf, m)?;
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        Ok(seq)
    }

    /// Ends the key's epoch: the next key is durable first, then its certificate (a
    /// `key_rotation` record signed by this key) is durable, then this key is destroyed. See
    /// [`epochs`] for what a crash between the steps leaves.
    fn rotate_key(&mut self) -> Result<(), String> {
        let next = keys::generate().map_err(|e| e.to_string())?;
        if let Some(p) = &self.key_path {
            epochs::stage_next(p, &next)
                .map_err(|e| format!("cannot store the next checkpoint key: {e}"))?;
        }
        let snap = self.snapshot();
        let mut buf = Vec::new();
        let size = self.next_seq;
        let root = self.frontier.root();
        let next_public = next.verifying_key();
        let mut m = Map::new();
        m.insert("kind".into(), Kind::KeyRotation.as_str().into());
        m.insert("tree_size".into(), size.into());
        m.insert("root".into(), to_hex(&root).into());
        m.insert("key_id".into(), self.key_id.clone().into());
        m.insert("next_key_id".into(), keys::key_id(&next_public).into());
        m.insert(
            "next_public_key".into(),
            hex::encode(next_public.as_bytes()).into(),
        );
        m.insert(
            "sig".into(),
            epochs::sign(&self.key, &self.log_id, size, &root, &next_public).into(),
        );
        self.encode(&mut buf, m).map_err(|e| e.to_string())?;
        if let Err(e) = self.write_durable(&buf, true) {
            if let Err(e2) = self.restore(snap) {
                self.set_failed(&format!("{e}; and cannot undo the partial write: {e2}"));
            }
            // The staged key certifies nothing: start-up would destroy it; do so now.
            if let Some(p) = &self.key_path {
                let _ = epochs::destroy(&epochs::next_path(p));
                let _ = std::fs::remove_file(epochs::next_path(p));
            }
            return Err(format!("cannot write the key rotation record: {e}"));
        }
        if let Some(p) = &self.key_path {
            epochs::promote_next(p).map_err(|e| {
                format!("the key rotation is recorded but the old key could not be destroyed: {e}")
            })?;
        }
        // A rotation seals everything before it, like a checkpoint.
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.key_id = keys::key_id(&next_public);
        self.key = next;
        self.epoch_began = Instant::now();
        Ok(())
    }

    /// Writes one log-only record durably (a retention removal waits for it).
    fn log_only(&mut self, fields: Map<String, Value>) -> Result<Seq, AuditError> {
        if let Some(reason) = self.shared.failure() {
            return Err(AuditError::Failed(reason));
        }
        let snap = self.snapshot();
        let mut buf = Vec::new();
        let seq = self.encode(&mut buf, fields)?;
        if let Err(e) = self.write_durable(&buf, self.cfg.fsync != FsyncMode::None) {
            if let Err(e2) = self.restore(snap) {
                self.set_failed(&format!("{e}; and cannot undo the partial write: {e2}"));
            }
            return Err(self.fail(&e));
        }
        Ok(seq)
    }

    fn standalone_checkpoint(&mut self) -> Result<(), String> {
        let snap = self.snapshot();
        let mut buf = Vec::new();
        self.checkpoint(&mut buf).map_err(|e| e.to_string())?;
        let sync = self.cfg.fsync != FsyncMode::None;
        if let Err(e) = self.write_durable(&buf, sync) {
            if let Err(e2) = self.restore(snap) {
                self.set_failed(&format!("{e}; and cannot undo the partial write: {e2}"));
            }
            return Err(e.to_string());
        }
        Ok(())
    }

    fn segment_start(
        &mut self,
        buf: &mut Vec<u8>,
        prev_segment: Option<String>,
    ) -> Result<Seq, AuditError> {
        let mut m = Map::new();
        m.insert("kind".into(), Kind::SegmentStart.as_str().into());
        m.insert("segment".into(), segment::name(self.seg_index).into());
        if let Some(p) = prev_segment {
            m.insert("prev_segment".into(), p.into());
        }
        self.encode(buf, m)
    }

    /// Closes the segment with a checkpoint and starts the next one with its header.
    fn rotate(&mut self) -> Result<(), String> {
        if self.since_checkpoint > 0 {
            self.standalone_checkpoint()?;
        }
        let next = self.seg_index + 1;
        let path = self.dir.join(segment::name(next));
        let file = open_segment(&path, true).map_err(|e| format!("{}: {e}", path.display()))?;
        sync_dir(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let old = segment::name(self.seg_index);
        // A finished segment keeps no space allocated ahead. Readers would stop at the zeros
        // anyway, so a failure here costs disk space only.
        if let Err(e) = self.trim() {
            tracing::warn!(error = %e, segment = %old, "could not trim a finished audit segment");
        }
        // Batches still waiting for their sync keep the old file open until it is done.
        self.file = Arc::new(file);
        self.seg_index = next;
        self.seg_path = path;
        self.seg_len = 0;
        self.seg_allocated = 0;
        self.seg_records = 0;
        self.seg_opened = Instant::now();
        let mut buf = Vec::new();
        self.segment_start(&mut buf, Some(old))
            .map_err(|e| e.to_string())?;
        self.write_durable(&buf, self.cfg.fsync != FsyncMode::None)
            .map_err(|e| format!("{}: {e}", self.seg_path.display()))
    }

    /// Allocates the segment's space ahead of its records, in steps of [`PREALLOCATE_STEP`],
    /// by writing zeros. The file's size then changes once per step instead of with every
    /// batch, so that `fdatasync` need not write the inode each time (about a third of its
    /// latency on ext4). Zeros rather than `fallocate`: a record then overwrites written
    /// blocks, and its durability does not hang on the file system converting unwritten
    /// extents at `fdatasync`.
    fn allocate_for(&mut self, end: u64) {
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        if end <= self.seg_allocated {
            return;
        }
        let to = end.div_ceil(PREALLOCATE_STEP) * PREALLOCATE_STEP;
        while self.seg_allocated < to {
            let n = (to - self.seg_allocated).min(ZEROS.len() as u64) as usize;
            match self.file.write_at(&ZEROS[..n], self.seg_allocated) {
                Ok(0) => return,
                Ok(w) => self.seg_allocated += w as u64,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Out of space and the like: the record's own write will tell.
                Err(_) => return,
            }
        }
    }

    /// Gives back the space allocated ahead of the current segment's records.
    fn trim(&mut self) -> std::io::Result<()> {
        if self.seg_allocated > self.seg_len {
            self.file.set_len(self.seg_len)?;
            self.seg_allocated = self.seg_len;
        }
        Ok(())
    }

    fn write_durable(&mut self, buf: &[u8], sync: bool) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.allocate_for(self.seg_len + buf.len() as u64);
        let mut rest = buf;
        let mut at = self.seg_len;
        while !rest.is_empty() {
            match self.file.write_at(rest, at) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        "the segment accepted no more bytes",
                    ))
                }
                Ok(n) => {
                    self.dirty = true;
                    rest = &rest[n..];
                    at += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if sync {
            self.file.sync_data()?;
        }
        self.dirty = false;
        self.seg_len += buf.len() as u64;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), AuditError> {
        // Joins the sync thread after every handed-over batch is acknowledged.
        drop(self.syncer.take());
        if let Some(reason) = self.shared.failure() {
            return Err(AuditError::Failed(reason));
        }
        if self.since_checkpoint > 0 {
            self.standalone_checkpoint().map_err(|e| self.fail(&e))?;
        }
        self.trim().map_err(|e| AuditError::Io(e.to_string()))?;
        self.file
            .sync_all()
            .map_err(|e| AuditError::Io(e.to_string()))
    }
}
