//! Forward-secure checkpoint keys: one Ed25519 key per epoch, each certifying the next.
//!
//! Contract:
//! - At an epoch boundary the writer generates the next key and makes it durable in
//!   `KEY.next` (file, then directory, synced); then writes a `key_rotation` record signed by the
//!   current key, and syncs it; then destroys the current key (its file is overwritten with
//!   zeros and synced) and renames `KEY.next` over `KEY`. The key file only ever holds the key of
//!   the current epoch, so whoever takes the host in epoch N holds no key of an earlier epoch and
//!   can re-sign nothing sealed before it.
//! - A `key_rotation` record is also a checkpoint: it carries `tree_size` (= its own `seq`),
//!   `root` over records `0..seq`, `key_id` of the signing key, and `next_key_id` /
//!   `next_public_key` of the key that signs from the next record on. Its `sig` is Ed25519 by the
//!   current key over `portcullis-key-rotation-v1\n<log_id>\n<tree_size>\n<root>\n<next public
//!   key hex>\n`. A verifier that starts from the log's first public key (the auditor's copy)
//!   follows these certificates; a checkpoint signed by any other key fails.
//! - `kill -9` at any step leaves a log that verifies and a gateway that continues: before the
//!   record is durable, `KEY.next` is an orphan and is destroyed at start-up (the old key is still
//!   current); once the record is durable, start-up finishes the rename. [`reconcile`] decides.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::chain::{to_hex, Hash};
use super::keys;

pub fn message(log_id: &str, tree_size: u64, root: &Hash, next_public: &str) -> Vec<u8> {
    format!(
        "portcullis-key-rotation-v1\n{log_id}\n{tree_size}\n{}\n{next_public}\n",
        to_hex(root)
    )
    .into_bytes()
}

pub fn sign(
    key: &SigningKey,
    log_id: &str,
    tree_size: u64,
    root: &Hash,
    next: &VerifyingKey,
) -> String {
    let next_hex = hex::encode(next.as_bytes());
    hex::encode(
        key.sign(&message(log_id, tree_size, root, &next_hex))
            .to_bytes(),
    )
}

/// Checks a rotation's signature; returns the certified next key when it holds.
pub fn verify(
    key: &VerifyingKey,
    log_id: &str,
    tree_size: u64,
    root: &Hash,
    next_public_hex: &str,
    sig_hex: &str,
) -> Option<VerifyingKey> {
    let mut sig = [0u8; 64];
    hex::decode_to_slice(sig_hex, &mut sig).ok()?;
    key.verify(
        &message(log_id, tree_size, root, next_public_hex),
        &Signature::from_bytes(&sig),
    )
    .ok()?;
    parse_public(next_public_hex)
}

pub fn parse_public(hex_text: &str) -> Option<VerifyingKey> {
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut b).ok()?;
    VerifyingKey::from_bytes(&b).ok()
}

/// Where the next epoch's key waits until its certificate is durable.
pub fn next_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".next");
    PathBuf::from(s)
}

/// Writes `key` to `KEY.next` (0600) and makes it durable with its directory entry.
pub fn stage_next(key_path: &Path, key: &SigningKey) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let next = next_path(key_path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&next)?;
    f.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())?;
    f.sync_all()?;
    sync_parent(key_path)
}

/// Destroys the key in `key_path` and puts `KEY.next` in its place, durably.
pub fn promote_next(key_path: &Path) -> std::io::Result<()> {
    destroy(key_path)?;
    std::fs::rename(next_path(key_path), key_path)?;
    sync_parent(key_path)
}

/// Overwrites a key file with zeros and syncs it, so that its bytes do not linger in the file
/// (copies the file system or the disk keep elsewhere are beyond what a process can reach).
pub fn destroy(path: &Path) -> std::io::Result<()> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(&vec![0u8; usize::try_from(len).unwrap_or(64).max(64)])?;
    f.sync_all()
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// What start-up found about the key, and what it did to get a consistent state.
#[derive(Debug, PartialEq, Eq)]
pub enum Reconciled {
    /// The key file holds the log's current key (or the log has no rotation yet).
    Current,
    /// A rotation was cut before its record was durable: `KEY.next` was destroyed.
    DroppedOrphan,
    /// A rotation was cut after its record was durable: `KEY.next` became the key.
    Finished,
}

#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    #[error("{0}")]
    Key(#[from] keys::KeyError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the signing key {path} (key id {found}) is not the key the log's last key_rotation certified (key id {expected}), and no {expected} key waits in {next}: restore the key file of this log, or start a new log directory")]
    Foreign {
        path: String,
        found: String,
        expected: String,
        next: String,
    },
}

/// Brings the key file in line with the log. `current`: the key id the log's last
/// `key_rotation` certified (`None` when the log has none).
pub fn reconcile(key_path: &Path, current: Option<&str>) -> Result<Reconciled, EpochError> {
    let next = next_path(key_path);
    let io = |source| EpochError::Io {
        path: next.display().to_string(),
        source,
    };
    let staged = if next.exists() {
        Some(keys::read_signing(&next)?)
    } else {
        None
    };
    let Some(expected) = current else {
        if staged.is_some() {
            destroy(&next).map_err(io)?;
            std::fs::remove_file(&next).map_err(io)?;
            return Ok(Reconciled::DroppedOrphan);
        }
        return Ok(Reconciled::Current);
    };
    let on_disk = keys::read_signing(key_path)?;
    let on_disk_id = keys::key_id(&on_disk.verifying_key());
    if on_disk_id == expected {
        if staged.is_some() {
            destroy(&next).map_err(io)?;
            std::fs::remove_file(&next).map_err(io)?;
            return Ok(Reconciled::DroppedOrphan);
        }
        return Ok(Reconciled::Current);
    }
    match staged {
        Some(k) if keys::key_id(&k.verifying_key()) == expected => {
            promote_next(key_path).map_err(io)?;
            Ok(Reconciled::Finished)
        }
        _ => Err(EpochError::Foreign {
            path: key_path.display().to_string(),
            found: on_disk_id,
            expected: expected.to_owned(),
            next: next.display().to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_file(dir: &Path) -> (PathBuf, SigningKey) {
        let p = dir.join("signing.key");
        let k = keys::generate().unwrap();
        keys::write_pair(&p, &k).unwrap();
        (p, k)
    }

    #[test]
    fn a_rotation_certifies_exactly_the_next_key() {
        let a = keys::generate().unwrap();
        let b = keys::generate().unwrap();
        let root = [7u8; 32];
        let sig = sign(&a, "log", 12, &root, &b.verifying_key());
        let b_hex = hex::encode(b.verifying_key().as_bytes());
        assert_eq!(
            verify(&a.verifying_key(), "log", 12, &root, &b_hex, &sig),
            Some(b.verifying_key())
        );
        assert!(verify(&a.verifying_key(), "log", 13, &root, &b_hex, &sig).is_none());
        let c_hex = hex::encode(keys::generate().unwrap().verifying_key().as_bytes());
        assert!(verify(&a.verifying_key(), "log", 12, &root, &c_hex, &sig).is_none());
        assert!(verify(&b.verifying_key(), "log", 12, &root, &b_hex, &sig).is_none());
    }

    #[test]
    fn start_up_resolves_every_crash_point_of_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (path, a) = key_file(dir.path());
        let a_id = keys::key_id(&a.verifying_key());
        // No rotation yet, nothing staged.
        assert_eq!(reconcile(&path, None).unwrap(), Reconciled::Current);
        // Crash after staging, before the record: the orphan goes, the old key stays.
        let b = keys::generate().unwrap();
        stage_next(&path, &b).unwrap();
        assert_eq!(
            reconcile(&path, Some(&a_id)).unwrap(),
            Reconciled::DroppedOrphan
        );
        assert!(!next_path(&path).exists());
        assert_eq!(keys::read_signing(&path).unwrap().to_bytes(), a.to_bytes());
        // Crash after the record, before the rename: finish it.
        stage_next(&path, &b).unwrap();
        let b_id = keys::key_id(&b.verifying_key());
        assert_eq!(reconcile(&path, Some(&b_id)).unwrap(), Reconciled::Finished);
        assert_eq!(keys::read_signing(&path).unwrap().to_bytes(), b.to_bytes());
        assert!(!next_path(&path).exists());
        // Someone else's key: refused, with both ids named.
        let err = reconcile(&path, Some(&a_id)).unwrap_err().to_string();
        assert!(err.contains(&a_id) && err.contains(&b_id), "{err}");
    }

    #[test]
    fn destroyed_keys_leave_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = key_file(dir.path());
        destroy(&path).unwrap();
        assert!(std::fs::read(&path).unwrap().iter().all(|b| *b == 0));
    }
}
