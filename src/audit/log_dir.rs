//! The log directory's files: created private, locked against a second writer, the signing key
//! found or generated, segment files opened without adopting one someone else put there; and the
//! retention thread, which reads only sealed segments.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::config::AuditConfig;
use super::keys;

use super::writer::{Msg, Seq, GENERATED_KEY_FILE};

/// Runs retention on its own thread: it reads sealed segments (never the one being written), so
/// appends are not held up while it does; its records go through the writer.
pub(super) fn start_retention(
    dir: PathBuf,
    r: super::retention::Retention,
    tx: Sender<Msg>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    use super::retention::{step, Held};
    std::thread::Builder::new()
        .name("audit-retention".into())
        .spawn(move || {
            let append = |event: Map<String, Value>| -> Result<Seq, String> {
                let (reply, rx) = oneshot::channel();
                tx.send(Msg::LogOnly { event, reply })
                    .map_err(|_| "the audit log is closed".to_owned())?;
                rx.blocking_recv()
                    .map_err(|_| "the audit log is closed".to_owned())?
                    .map_err(|e| e.to_string())
            };
            let mut last_held: Option<Held> = None;
            let mut next = Instant::now();
            while !stop.load(Ordering::Acquire) {
                if Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                next = Instant::now() + r.check_every;
                // Bounded per round, so that a stop request is heard.
                for _ in 0..1000 {
                    if stop.load(Ordering::Acquire) {
                        return;
                    }
                    match step(&dir, &r, &append) {
                        Ok(Ok(removed)) => {
                            tracing::info!(segment = removed.segment, records = removed.records, bytes = removed.bytes, archived = ?removed.archived, "audit retention removed a sealed segment");
                            last_held = None;
                        }
                        Ok(Err(held)) => {
                            if let (Held::Unacknowledged { sink }, false) =
                                (&held, last_held.as_ref() == Some(&held))
                            {
                                tracing::warn!(sink = %sink, "audit retention waits: a sink or witness has not acknowledged the oldest segment (the log grows until it does)");
                            }
                            last_held = Some(held);
                            break;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, dir = %dir.display(), "audit retention failed; the log keeps its segments");
                            break;
                        }
                    }
                }
            }
        })
        .map(|_| ())
}

pub(super) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// One writer per directory: a second gateway on the same log would fork the chain.
pub(super) fn lock_dir(dir: &Path) -> Result<File, String> {
    use std::os::fd::AsRawFd;
    let path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    #[allow(deprecated)]
    nix::fcntl::flock(f.as_raw_fd(), nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|e| format!("another process is writing this log ({e})"))?;
    Ok(f)
}

/// The file holding the current epoch's signing key.
pub(super) fn key_file(config: &AuditConfig) -> PathBuf {
    config
        .signing_key
        .clone()
        .unwrap_or_else(|| config.dir.join(GENERATED_KEY_FILE))
}

pub(super) fn load_or_generate_key(config: &AuditConfig) -> Result<SigningKey, String> {
    if let Some(p) = &config.signing_key {
        return keys::read_signing(p).map_err(|e| e.to_string());
    }
    let p = config.dir.join(GENERATED_KEY_FILE);
    if p.exists() {
        return keys::read_signing(&p).map_err(|e| e.to_string());
    }
    let k = keys::generate().map_err(|e| e.to_string())?;
    keys::write_pair(&p, &k).map_err(|e| e.to_string())?;
    tracing::warn!(
        key = %p.display(),
        public = %keys::pub_path(&p).display(),
        key_id = %keys::key_id(&k.verifying_key()),
        "generated an audit signing key inside the audit directory; copy the .pub file somewhere trusted for `audit verify --pubkey`, and set [audit] signing_key to a key kept outside the log directory"
    );
    Ok(k)
}

pub(super) fn new_log_id() -> Result<String, String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).map_err(|e| e.to_string())?;
    Ok(hex::encode(b))
}

pub(super) fn open_segment(path: &Path, create: bool) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    // Not O_APPEND: records go at the end of the records, inside space allocated ahead.
    o.write(true).mode(0o600);
    if create {
        // Never adopt a file someone else put there.
        o.create_new(true);
    }
    o.open(path)
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
