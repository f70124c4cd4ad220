//! Closing every inherited file descriptor but stdio.
//!
//! The gateway opens its own descriptors close-on-exec, but libraries (netlink sockets, the
//! Docker client, the audit log) or a future change could leak one; the server must not hold
//! any of them, so the helper closes everything from 3 up before it does anything else.

use nix::libc;

pub fn close_inherited() -> std::io::Result<()> {
    // SAFETY: close_range only closes descriptors of this (single-threaded) process.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close what /proc lists (collected first, since reading the
    // directory uses a descriptor of its own).
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor nothing in this process uses; EBADF (the directory's
        // own, already closed) is harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}
