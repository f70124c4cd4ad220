//! Whether a uid/gid could read a path through its permission bits (the check behind
//! start-up's warnings and `doctor`).
//!
//! The kernel's rule for a process without capabilities: every directory on the way needs the
//! search bit, and the path itself the read bit (a directory: read or search, since either
//! exposes what is inside), each taken from the owner, group or other class that applies.
//! ACLs are not read: a path an ACL opens is reported as closed, which is why the mount view,
//! not this check, is what keeps the secrets out.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why `uid`/`gid` can read `path`: the first place where the bits let it through, or `None`
/// (closed, or the path does not exist).
pub fn exposure(path: &Path, uid: u32, gid: u32) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    let mut dirs: Vec<PathBuf> = path.ancestors().skip(1).map(Path::to_path_buf).collect();
    dirs.reverse();
    for d in dirs.iter().filter(|d| !d.as_os_str().is_empty()) {
        let m = std::fs::metadata(d).ok()?;
        if !allows(&m, uid, gid, 0o1) {
            return None;
        }
    }
    let ok = if meta.is_dir() {
        allows(&meta, uid, gid, 0o4) || allows(&meta, uid, gid, 0o1)
    } else {
        allows(&meta, uid, gid, 0o4)
    };
    ok.then(|| {
        format!(
            "{} is mode {:o} (owner {}, group {}) and every directory above it is searchable for uid {uid}",
            path.display(),
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        )
    })
}

fn allows(m: &std::fs::Metadata, uid: u32, gid: u32, bit: u32) -> bool {
    let shift = if m.uid() == uid {
        6
    } else if m.gid() == gid {
        3
    } else {
        0
    };
    (m.mode() >> shift) & bit != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_private_file_or_a_closed_directory_is_not_exposed() {
        let dir = tempfile::tempdir().unwrap();
        chmod(dir.path(), 0o755);
        let f = dir.path().join("key");
        std::fs::write(&f, "k").unwrap();
        chmod(&f, 0o644);
        // Owned by whoever runs the test; 65534 is "other" unless the test runs as nobody.
        if nix::unistd::getuid().as_raw() == 65534 {
            return;
        }
        assert!(exposure(&f, 65534, 65534).is_some());
        chmod(&f, 0o600);
        assert!(exposure(&f, 65534, 65534).is_none());
        chmod(&f, 0o644);
        chmod(dir.path(), 0o700);
        assert!(
            exposure(&f, 65534, 65534).is_none(),
            "the directory closes it"
        );
        assert!(exposure(dir.path(), 65534, 65534).is_none());
        chmod(dir.path(), 0o711);
        assert!(exposure(dir.path(), 65534, 65534).is_some(), "searchable");
        assert!(exposure(&dir.path().join("missing"), 65534, 65534).is_none());
    }
}
