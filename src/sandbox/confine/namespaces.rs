//! Entering the server's network namespace and making its own namespaces.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{setns, unshare, CloneFlags};

use super::ConfineError;

/// What isolation the helper obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Mount, PID, IPC, UTS and cgroup namespaces (inside a user namespace when not root).
    Namespaces,
    /// The kernel refused an unprivileged user namespace: no mount view, no PID namespace.
    None,
}

/// Enters the network namespace at `path` (the caller is root: `CAP_SYS_ADMIN` is needed).
pub fn enter_net(path: &Path) -> Result<(), ConfineError> {
    let f = File::open(path)
        .map_err(|e| ConfineError::sys(format!("open network namespace {}", path.display()), e))?;
    setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
        .map_err(|e| ConfineError::sys(format!("setns {}", path.display()), e))
}

fn private_namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP
}

/// Makes the server's namespaces. `privileged`: the caller is root. Otherwise a user namespace
/// that maps the caller's own uid and gid comes first, which the kernel may refuse (then
/// [`Isolation::None`]). The new PID namespace applies to children made after this.
pub fn unshare_private(privileged: bool) -> Result<Isolation, ConfineError> {
    if privileged {
        unshare(private_namespaces()).map_err(|e| ConfineError::sys("unshare", e))?;
        return Ok(Isolation::Namespaces);
    }
    let (uid, gid) = (nix::unistd::getuid(), nix::unistd::getgid());
    if unshare(CloneFlags::CLONE_NEWUSER | private_namespaces()).is_err() {
        return Ok(Isolation::None);
    }
    // Only our own ids: an unprivileged process may map nothing else (and must give up
    // setgroups first to map its gid).
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| ConfineError::sys(format!("write /proc/self/{file}"), e))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("{uid} {uid} 1\n"))?;
    write("gid_map", format!("{gid} {gid} 1\n"))?;
    Ok(Isolation::Namespaces)
}

/// Makes the next process of this PID namespace get `pid` (by setting `ns_last_pid`; needs
/// `CAP_SYS_ADMIN` there and the namespace's own `/proc`). Best effort: without it the server
/// is PID 2. The helper passes its own pid in the gateway's namespace, so that the server
/// reports the same pid that the gateway's log and the audit log record for the instance, and
/// instances stay told apart by their pid.
pub fn set_next_pid(pid: i32) {
    if pid > 2 {
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string());
    }
}
