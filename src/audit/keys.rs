//! Checkpoint signing keys.
//!
//! Files are text: the private key file holds the 32-byte Ed25519 seed as 64 lower-case hex
//! digits and a newline (mode 0600); `PATH.pub` holds the 32-byte public key the same way. The key
//! id is the first 8 bytes (16 hex digits) of SHA-256 of the public key bytes.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a key file (expected 64 hex digits)")]
    Format { path: String },
    #[error("{path}: not a valid Ed25519 public key")]
    Invalid { path: String },
    #[error("cannot get random bytes from the OS: {0}")]
    Random(String),
}

pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

pub fn pub_path(private: &Path) -> PathBuf {
    let mut s = private.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Writes `path` (0600, refusing to overwrite) and `path.pub`.
pub fn write_pair(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| KeyError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(format!("{}\n", hex::encode(key.to_bytes())).as_bytes())
        .map_err(io)?;
    f.sync_all().map_err(io)?;
    let pubp = pub_path(path);
    std::fs::write(
        &pubp,
        format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
    )
    .map_err(|source| KeyError::Io {
        path: pubp.display().to_string(),
        source,
    })
}

fn read32(path: &Path) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).map_err(|_| KeyError::Format {
        path: path.display().to_string(),
    })?;
    Ok(out)
}

pub fn read_signing(path: &Path) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&read32(path)?))
}

pub fn read_verifying(path: &Path) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&read32(path)?).map_err(|_| KeyError::Invalid {
        path: path.display().to_string(),
    })
}
