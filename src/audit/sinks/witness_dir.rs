//! A witness directory: the log's checkpoints and key rotations, appended to
//! `DIR/witness-LOG_ID.jsonl` exactly as the log holds them, one `fsync` per batch.
//!
//! Put it on another volume or mount than the log (a network share, a disk whose writes the
//! gateway host cannot rewrite): `audit verify --witness DIR` then finds a cut tail, a rollback
//! or a forked rewrite of the log, since the witness keeps seals the log no longer has.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::cursor::Item;

pub struct WitnessDir {
    dir: PathBuf,
}

impl WitnessDir {
    pub fn new(dir: &Path) -> Result<WitnessDir, String> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the witness directory {}: {e}", dir.display()))?;
        Ok(WitnessDir {
            dir: dir.to_path_buf(),
        })
    }

    /// The witness file of one log.
    pub fn file(dir: &Path, log_id: &str) -> PathBuf {
        let safe: String = log_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        dir.join(format!("witness-{safe}.jsonl"))
    }

    /// Appends the batch and syncs it: `Ok` means the seals are durable in the witness.
    pub fn send(&mut self, items: &[Item]) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut by_log: std::collections::BTreeMap<&str, Vec<u8>> = Default::default();
        for i in items {
            let buf = by_log.entry(i.log_id.as_str()).or_default();
            buf.extend_from_slice(&i.line);
            buf.push(b'\n');
        }
        for (log_id, buf) in by_log {
            let path = Self::file(&self.dir, log_id);
            let fresh = !path.exists();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            f.write_all(&buf)
                .and_then(|()| f.sync_data())
                .map_err(|e| format!("{}: {e}", path.display()))?;
            if fresh {
                std::fs::File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(|e| format!("{}: {e}", self.dir.display()))?;
            }
        }
        Ok(())
    }
}

/// Whether a record is one a witness keeps: a checkpoint or a key rotation.
pub fn is_seal(line: &[u8]) -> bool {
    let has = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
    has(br#""kind":"checkpoint""#) || has(br#""kind":"key_rotation""#)
}
