//! The lock that says a live gateway holds an instance: an exclusive `flock` on
//! `<state_dir>/gateway.lock`, held for the gateway's whole life. The kernel drops it when the
//! process dies, however it dies, so a lock that is free means nobody runs there (and the
//! leftovers of an earlier run may be cleaned up), and a lock that is held means a live
//! gateway that must not be disturbed.
//!
//! The file names the holder (pid, instance, listener, directories) so that a refused second
//! start can say who is in the way. Its content is only a description: whether the instance
//! is in use is decided by the lock alone.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::InstanceId;

pub const FILE: &str = "gateway.lock";

/// Who holds an instance, as written in its lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Holder {
    pub pid: u32,
    pub instance: String,
    /// The listener's URL, once it is bound.
    pub listen: Option<String>,
    pub state_dir: String,
    pub audit_dir: Option<String>,
    pub policy: Option<String>,
}

impl Holder {
    /// `pid 12, listening on http://127.0.0.1:8811/mcp, state dir /x, audit dir /y, policy /p`
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("pid {}", self.pid)];
        match &self.listen {
            Some(l) => parts.push(format!("listening on {l}")),
            None => parts.push("not listening yet".to_owned()),
        }
        parts.push(format!("state dir {}", self.state_dir));
        if let Some(a) = &self.audit_dir {
            parts.push(format!("audit dir {a}"));
        }
        if let Some(p) = &self.policy {
            parts.push(format!("policy {p}"));
        }
        parts.join(", ")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("instance `{instance}` is in use: another gateway holds {} ({}); stop that gateway first, or give this one its own instance (`--instance` / [gateway] instance) or state directory (`--state-dir` / [gateway] state_dir)", path.display(), holder.as_ref().map_or_else(|| "it did not say who it is".to_owned(), |h| h.describe()))]
    InUse {
        instance: String,
        path: PathBuf,
        holder: Option<Box<Holder>>,
    },
    #[error("cannot lock instance `{instance}` in {}: {source}; make the state directory (`--state-dir` / [gateway] state_dir) a writable directory", path.display())]
    Io {
        instance: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A held instance; dropping it releases the lock.
#[derive(Debug)]
pub struct InstanceLock {
    file: Flock<File>,
    path: PathBuf,
    holder: Holder,
}

/// What a gateway writes into its egress table's comment: enough for a refused second start
/// to find the holder's lock file (and in it, its listener and directories).
pub fn comment_for(holder: &Holder) -> String {
    format!(
        "portcullis instance {} pid {} state {}",
        holder.instance, holder.pid, holder.state_dir
    )
}

/// The holder a table comment written by [`comment_for`] points at, as its lock file
/// describes it now (`None` if the comment is another's, or the file names someone else).
pub fn holder_of_comment(comment: &str) -> Option<Holder> {
    let rest = comment.strip_prefix("portcullis instance ")?;
    let (_, rest) = rest.split_once(" pid ")?;
    let (pid, dir) = rest.split_once(" state ")?;
    let pid: u32 = pid.parse().ok()?;
    read_holder(Path::new(dir)).filter(|h| h.pid == pid)
}

/// The holder named in the lock file of `state_dir`, if the file names one.
pub fn read_holder(state_dir: &Path) -> Option<Holder> {
    let text = std::fs::read_to_string(state_dir.join(FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

impl InstanceLock {
    /// Takes `instance`'s lock in `state_dir` (created, mode 0700, if missing) for `holder`, or
    /// says who holds it. Never waits.
    pub fn acquire(
        state_dir: &Path,
        instance: &InstanceId,
        holder: Holder,
    ) -> Result<InstanceLock, LockError> {
        let path = state_dir.join(FILE);
        let io = |source| LockError::Io {
            instance: instance.to_string(),
            path: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(io)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                return Err(LockError::InUse {
                    instance: instance.to_string(),
                    path,
                    holder: serde_json::from_str(&text).ok().map(Box::new),
                });
            }
            Err((_, e)) => return Err(io(std::io::Error::from_raw_os_error(e as i32))),
        };
        let mut lock = InstanceLock {
            file,
            path: path.clone(),
            holder,
        };
        lock.write().map_err(io)?;
        Ok(lock)
    }

    /// Records the bound listener in the lock file (for the message a refused start prints).
    pub fn set_listener(&mut self, url: &str) -> std::io::Result<()> {
        self.holder.listen = Some(url.to_owned());
        self.write()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self) -> std::io::Result<()> {
        let text = serde_json::to_string(&self.holder).map_err(std::io::Error::other)?;
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()
    }
}

impl Drop for InstanceLock {
    fn drop(&mut self) {
        // The description goes with the lock: a free lock file names nobody.
        let _ = self.file.set_len(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: u32, dir: &Path) -> Holder {
        Holder {
            pid,
            instance: "t".into(),
            listen: None,
            state_dir: dir.display().to_string(),
            audit_dir: Some("/audit".into()),
            policy: None,
        }
    }

    #[test]
    fn a_held_instance_is_refused_with_who_holds_it_and_free_again_after() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let id = InstanceId::parse("t").unwrap();
        let mut first = InstanceLock::acquire(&state, &id, holder(11, &state)).unwrap();
        first.set_listener("http://127.0.0.1:8811/mcp").unwrap();
        // flock locks belong to the open file, so a second open in this process conflicts
        // just as another process would.
        let e = InstanceLock::acquire(&state, &id, holder(22, &state)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("instance `t` is in use")
                && msg.contains("pid 11")
                && msg.contains("listening on http://127.0.0.1:8811/mcp")
                && msg.contains("audit dir /audit")
                && msg.contains(&state.display().to_string()),
            "{msg}"
        );
        assert_eq!(read_holder(&state).map(|h| h.pid), Some(11));
        drop(first);
        assert_eq!(read_holder(&state), None, "a free lock names nobody");
        let again = InstanceLock::acquire(&state, &id, holder(33, &state)).unwrap();
        assert_eq!(read_holder(&state).map(|h| h.pid), Some(33));
        drop(again);
    }

    #[test]
    fn a_table_comment_leads_to_the_holders_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let id = InstanceId::parse("t").unwrap();
        let h = holder(std::process::id(), &state);
        let _lock = InstanceLock::acquire(&state, &id, h.clone()).unwrap();
        let comment = comment_for(&h);
        assert_eq!(holder_of_comment(&comment), Some(h.clone()));
        let other_pid = comment.replace(&format!("pid {}", h.pid), "pid 1");
        assert_eq!(holder_of_comment(&other_pid), None, "someone else now");
        assert_eq!(holder_of_comment("made by hand"), None);
    }

    #[test]
    fn an_unusable_state_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let id = InstanceId::parse("t").unwrap();
        let e = InstanceLock::acquire(&file, &id, holder(1, &file)).unwrap_err();
        assert!(e.to_string().contains("writable directory"), "{e}");
    }
}
