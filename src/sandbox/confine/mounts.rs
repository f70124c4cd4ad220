//! The server's view of the filesystem, built in its private mount namespace.
//!
//! - The host's filesystem, read-only and `nosuid` (every mount, recursively): programs,
//!   interpreters and virtualenvs work unchanged, and nothing on the host can be changed.
//! - A private, empty `/tmp` and `/dev/shm` (tmpfs), shared with no other process: the host's
//!   `/tmp` is not in the view.
//! - The policy's `mounts`: `source` bound at `target` (a path that exists on the host, or one
//!   under the private `/tmp`, which is made), read-only unless `read_only = false`.
//! - A fresh `/proc` of the server's PID namespace: other processes are not there. Its `sys`,
//!   `sysrq-trigger`, `irq`, `bus` and `fs` are read-only (a server running as uid 0 without
//!   capabilities could otherwise write root-owned sysctls and trigger SysRq).
//! - The gateway's secrets covered: each hidden directory by an empty tmpfs with mode 000, each
//!   hidden file by an empty file with mode 000 (root-owned), so reading them fails also for a
//!   server that runs as root (`allow_root`: it has no `CAP_DAC_OVERRIDE`).
//! - `/etc/resolv.conf` replaced by the sandbox's (egress rules: the gateway's resolver only).
//! - The namespace-file mounts the copy of the host's table holds (`/run/netns/*` and the like)
//!   detached, so that this namespace does not keep other network namespaces alive.

use std::path::{Path, PathBuf};

use nix::libc;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{BindMount, ConfineError};

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const AT_RECURSIVE: libc::c_uint = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn setattr(path: &Path, recursive: bool, set: u64, clear: u64) -> Result<(), ConfineError> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| ConfineError::Invalid(format!("{}: NUL in path", path.display())))?;
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clear,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr reads `attr` (of the size given) and the NUL-terminated path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        let hint = if e.raw_os_error() == Some(libc::ENOSYS) {
            " (mount_setattr needs Linux 5.12 or later)"
        } else {
            ""
        };
        return Err(ConfineError::sys(
            format!("change the mount flags of {}{hint}", path.display()),
            e,
        ));
    }
    Ok(())
}

fn bind(source: &Path, target: &Path) -> Result<(), ConfineError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        ConfineError::sys(
            format!("bind {} at {}", source.display(), target.display()),
            e,
        )
    })
}

fn tmpfs(target: &Path, options: &str, read_only: bool) -> Result<(), ConfineError> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if read_only {
        flags |= MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC;
    }
    mount(Some("tmpfs"), target, Some("tmpfs"), flags, Some(options))
        .map_err(|e| ConfineError::sys(format!("mount a tmpfs at {}", target.display()), e))
}

/// Mount points of namespace files (fstype `nsfs`) in this mount namespace, deepest first.
fn nsfs_mounts() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let point = left.split_whitespace().nth(4)?;
            (fstype == "nsfs").then(|| PathBuf::from(unescape(point)))
        })
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(n)) => {
                out.push(n);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the view is made of.
pub struct View<'a> {
    pub mounts: &'a [BindMount],
    pub hide: &'a [PathBuf],
    pub resolv_conf: Option<&'a Path>,
    /// Mount a fresh sysfs (the server has its own network namespace and the helper is root).
    pub sysfs: bool,
}

/// Builds the view. The caller is PID 1 of the new PID namespace, in the new mount namespace,
/// still holding `CAP_SYS_ADMIN` there.
pub fn build(view: &View<'_>) -> Result<(), ConfineError> {
    // Nothing done here may reach the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| ConfineError::sys("make the mount namespace private", e))?;
    for point in nsfs_mounts() {
        // Locked mounts (inside a user namespace) cannot go; they only keep a namespace of
        // someone else's alive a little longer, so that is not worth failing for.
        let _ = umount2(&point, MntFlags::MNT_DETACH);
    }
    // Sources are held open first: one under the host's /tmp is out of sight once the private
    // /tmp is mounted.
    let sources = view
        .mounts
        .iter()
        .map(|m| open_path(&m.source))
        .collect::<Result<Vec<_>, _>>()?;
    // The private /tmp and /dev/shm come before the binds, so that a target may be in /tmp.
    tmpfs(Path::new("/tmp"), "mode=1777,size=256m", false)?;
    let shm = Path::new("/dev/shm").is_dir();
    if shm {
        tmpfs(Path::new("/dev/shm"), "mode=1777,size=64m", false)?;
    }
    for (m, src) in view.mounts.iter().zip(&sources) {
        let is_dir = src.metadata().is_ok_and(|md| md.is_dir());
        prepare_target(m, is_dir)?;
        bind(&fd_path(src), &m.target)?;
    }
    if let Some(rc) = view.resolv_conf {
        bind(rc, Path::new("/etc/resolv.conf"))?;
    }
    setattr(
        Path::new("/"),
        true,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
        0,
    )?;
    let mut writable: Vec<&Path> = vec![Path::new("/tmp")];
    if shm {
        writable.push(Path::new("/dev/shm"));
    }
    writable.extend(
        view.mounts
            .iter()
            .filter(|m| m.writable)
            .map(|m| m.target.as_path()),
    );
    for p in writable {
        setattr(p, false, 0, MOUNT_ATTR_RDONLY)?;
    }
    hide(view.hide)?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| ConfineError::sys("mount /proc for the PID namespace", e))?;
    if view.sysfs {
        mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| ConfineError::sys("mount /sys for the network namespace", e))?;
    }
    Ok(())
}

/// `path` opened without reading it (`O_PATH`), to bind from later.
fn open_path(path: &Path) -> Result<std::fs::File, ConfineError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(|e| ConfineError::sys(format!("open mount source {}", path.display()), e))
}

/// The `/proc` link of an open file: a bind from it binds what the file is.
fn fd_path(f: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()))
}

/// A policy mount's target must exist in the view: in the private /tmp it is made (the host's
/// /tmp is not there); anywhere else it must exist on the host.
fn prepare_target(m: &BindMount, is_dir: bool) -> Result<(), ConfineError> {
    if m.target.exists() {
        return Ok(());
    }
    if !m.target.starts_with("/tmp") {
        return Err(ConfineError::Invalid(format!(
            "mount target {} does not exist; for a process server the target is a path on the host's filesystem (the view is the host's, read-only) or under its private /tmp; create it first",
            m.target.display()
        )));
    }
    let made = if is_dir {
        std::fs::create_dir_all(&m.target)
    } else {
        m.target
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&m.target, b""))
    };
    made.map_err(|e| ConfineError::sys(format!("create mount target {}", m.target.display()), e))
}

/// The parts of the fresh `/proc` that change the host rather than describe a process.
const PROC_READ_ONLY: [&str; 5] = [
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

/// Makes [`PROC_READ_ONLY`] read-only (after [`build`], and after anything that still had to
/// write to `/proc/sys`).
pub fn lock_proc() -> Result<(), ConfineError> {
    for p in PROC_READ_ONLY.iter().map(Path::new).filter(|p| p.exists()) {
        bind(p, p)?;
        setattr(p, false, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)?;
    }
    Ok(())
}

/// Covers each existing path in `paths`. Files get a bind of one empty mode-000 file made in
/// the private /tmp and unlinked again (the binds keep it).
fn hide(paths: &[PathBuf]) -> Result<(), ConfineError> {
    use std::os::unix::fs::OpenOptionsExt;
    let blank = Path::new("/tmp/.portcullis-hidden");
    let mut made = false;
    // One cover per file: a second bind onto the same file (`/var/run/x` and `/run/x`) would
    // land on the blank itself.
    let mut real: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    real.sort();
    real.dedup();
    for p in &real {
        let Ok(meta) = std::fs::metadata(p) else {
            continue;
        };
        if meta.is_dir() {
            tmpfs(p, "mode=000,size=4k", true)?;
            continue;
        }
        if !made {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o000)
                .open(blank)
                .map_err(|e| ConfineError::sys("create the blank file", e))?;
            made = true;
        }
        bind(blank, p)?;
        setattr(p, false, MOUNT_ATTR_RDONLY, 0)?;
    }
    if made {
        std::fs::remove_file(blank).map_err(|e| ConfineError::sys("remove the blank file", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/run/netns/a\\040b"), "/run/netns/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }
}
