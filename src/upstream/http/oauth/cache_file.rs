//! The token cache of one server: a JSON file readable only by the gateway's user.
//!
//! The file lives in `STATE_DIR/oauth/` (directory 0700, file 0600, both owned by the gateway's
//! user). Wider permissions on our own file or directory are repaired, with a warning, because
//! the tokens may have been readable by others; a file or directory owned by another user is
//! refused. Writes go to a fresh temporary file that is renamed over the old one, so a crash
//! leaves the old cache or the new one, never half of each: losing a rotated refresh token
//! would lock the gateway out.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE_MODE: u32 = 0o600;
const DIR_MODE: u32 = 0o700;
/// A cache larger than this is not ours.
const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("token cache `{path}`: {reason}")]
    Io { path: String, reason: String },
    #[error("token cache `{path}` is owned by uid {owner}, not by the gateway's user (uid {me}); refusing to use it. Remove it, or give it to the gateway's user")]
    Owner { path: String, owner: u32, me: u32 },
}

/// What is cached. The settings fields say which configuration the tokens were issued for: a
/// cache written for another authorization server, client, scope or audience is not used.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Stored {
    pub token_url: String,
    /// The issuer the tokens came from (`oauth.issuer`); caches written before it was
    /// recorded read as `None`.
    #[serde(default)]
    pub issuer: Option<String>,
    pub client_id: String,
    pub scope: Option<String>,
    pub resource: Option<String>,
    pub audience: Option<String>,
    /// SHA-256 (hex) of the refresh token configured in the policy when this cache was
    /// written: a new one there replaces the rotated one kept here.
    pub configured_refresh_sha256: Option<String>,
    pub access_token: Option<String>,
    /// Unix time in milliseconds; `None` when the server did not say.
    pub expires_at_ms: Option<u64>,
    /// The token's lifetime as issued, in seconds (decides how early it is renewed).
    pub lifetime_s: Option<u64>,
    pub refresh_token: Option<String>,
}

pub struct CacheFile {
    path: PathBuf,
}

fn io_err(path: &Path, e: impl std::fmt::Display) -> CacheError {
    CacheError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

impl CacheFile {
    pub fn new(path: PathBuf) -> CacheFile {
        CacheFile { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the cache; `Ok(None)` when there is none yet. Blocking file I/O.
    pub fn load(&self) -> Result<Option<Stored>, CacheError> {
        let path = &self.path;
        if let Some(dir) = path.parent() {
            if dir.exists() {
                secure_dir(dir)?;
            }
        }
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(path, e)),
        };
        let meta = file.metadata().map_err(|e| io_err(path, e))?;
        if !meta.is_file() {
            return Err(io_err(path, "not a regular file"));
        }
        check_owner(path, meta.uid())?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
                .map_err(|e| io_err(path, format!("cannot repair its mode {mode:o}: {e}")))?;
            tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "the token cache was readable by other users; repaired it to 0600. The tokens in it may have been exposed: consider revoking them at the authorization server");
        }
        if meta.len() > MAX_BYTES {
            return Err(io_err(path, "larger than 1 MiB; not a token cache"));
        }
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| io_err(path, e))?;
        match serde_json::from_str(&text) {
            Ok(s) => Ok(Some(s)),
            Err(e) => {
                // Not fatal: the next token replaces it.
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable token cache");
                Ok(None)
            }
        }
    }

    /// Replaces the cache atomically: a new 0600 file in the same directory, synced, renamed
    /// over the old one, and the directory synced. Blocking file I/O.
    pub fn store(&self, stored: &Stored) -> Result<(), CacheError> {
        let path = &self.path;
        let dir = path
            .parent()
            .ok_or_else(|| io_err(path, "has no parent directory"))?;
        if dir.exists() {
            secure_dir(dir)?;
        } else {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(|e| io_err(dir, format!("cannot create the directory: {e}")))?;
        }
        let body = serde_json::to_vec_pretty(stored).map_err(|e| io_err(path, e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(
            ".{name}.{}.{:x}.tmp",
            std::process::id(),
            rand_suffix()
        ));
        let written = (|| -> std::io::Result<()> {
            let mut f: File = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&tmp)?;
            // The mode given to open is masked by the umask; make sure of it.
            f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_err(path, e));
        }
        Ok(())
    }
}

fn check_owner(path: &Path, owner: u32) -> Result<(), CacheError> {
    let me = nix::unistd::geteuid().as_raw();
    if owner != me {
        return Err(CacheError::Owner {
            path: path.display().to_string(),
            owner,
            me,
        });
    }
    Ok(())
}

/// The cache directory must be ours and closed to others (no one else may list, swap or
/// replace the cache file); wider permissions are repaired.
fn secure_dir(dir: &Path) -> Result<(), CacheError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io_err(dir, e))?;
    if !meta.is_dir() {
        return Err(io_err(dir, "is not a directory"));
    }
    check_owner(dir, meta.uid())?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| io_err(dir, format!("cannot repair its mode {mode:o}: {e}")))?;
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:o}"), "the token cache directory was open to other users; repaired it to 0700");
    }
    Ok(())
}

fn rand_suffix() -> u64 {
    let mut b = [0u8; 8];
    // A failure leaves zeros; `create_new` still refuses to reuse an existing name.
    let _ = getrandom::getrandom(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> Stored {
        Stored {
            token_url: "https://as/token".into(),
            client_id: "gw".into(),
            access_token: Some("at-1".into()),
            refresh_token: Some("rt-1".into()),
            expires_at_ms: Some(42),
            ..Stored::default()
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn round_trip_creates_private_file_and_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let cache = CacheFile::new(tmp.path().join("state/oauth/s.json"));
        assert_eq!(cache.load().unwrap(), None);
        cache.store(&stored()).unwrap();
        assert_eq!(mode(cache.path()), 0o600);
        assert_eq!(mode(&tmp.path().join("state/oauth")), 0o700);
        assert_eq!(cache.load().unwrap(), Some(stored()));
        let mut next = stored();
        next.refresh_token = Some("rt-2".into());
        cache.store(&next).unwrap();
        assert_eq!(cache.load().unwrap(), Some(next));
        // Only the cache itself is left: no temporary files.
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("state/oauth"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["s.json"]);
    }

    #[test]
    fn wider_permissions_are_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("oauth");
        let cache = CacheFile::new(dir.join("s.json"));
        cache.store(&stored()).unwrap();
        std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(cache.load().unwrap(), Some(stored()));
        assert_eq!(mode(cache.path()), 0o600);
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn symlinks_and_garbage_are_not_followed_or_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("oauth");
        std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
        let target = tmp.path().join("elsewhere.json");
        std::fs::write(&target, serde_json::to_vec(&stored()).unwrap()).unwrap();
        std::os::unix::fs::symlink(&target, dir.join("s.json")).unwrap();
        let cache = CacheFile::new(dir.join("s.json"));
        assert!(cache.load().is_err(), "followed a symlink");
        std::fs::remove_file(dir.join("s.json")).unwrap();
        std::fs::write(dir.join("s.json"), "not json").unwrap();
        std::fs::set_permissions(dir.join("s.json"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        assert_eq!(cache.load().unwrap(), None);
        // A store replaces the garbage.
        cache.store(&stored()).unwrap();
        assert_eq!(cache.load().unwrap(), Some(stored()));
    }
}
