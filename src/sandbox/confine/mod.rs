//! Confinement of a `process` server: what the child becomes before it `exec`s the server.
//!
//! The gateway never forks a server directly. It starts its own binary again as a hidden
//! sub-command ([`SUBCOMMAND`], dispatched by `main` before anything else runs) with a
//! [`Confinement`] as JSON and the server's command line. That helper is single-threaded from
//! its first instruction, so every step below is ordinary code rather than the
//! async-signal-safe subset a `pre_exec` hook in the multi-threaded gateway would allow.
//!
//! The steps, in order (each in its own module):
//! 1. [`fds`]: every inherited descriptor but stdin, stdout and stderr is closed.
//! 2. [`namespaces`]: the server's network namespace is entered (`setns`, egress rules), then
//!    new mount, PID, IPC, UTS and cgroup namespaces are made. When the gateway is not root,
//!    an unprivileged user namespace comes first (it maps only the gateway's own uid and gid);
//!    if the kernel refuses that, the helper says so on stderr and carries on without them.
//! 3. [`init`]: the helper forks. The parent stays in the gateway's PID namespace, forwards
//!    signals and exits with the server's status; the child is PID 1 of the new namespace:
//!    it builds the mount view, drops privileges, forks the server (PID 2), reaps orphans and
//!    exits with the server's status, which takes every process of the namespace with it.
//! 4. [`mounts`]: the host's filesystem read-only, the policy's `mounts` bound in, a private
//!    `/tmp` and `/dev/shm`, a fresh `/proc` (only this namespace's processes), and the
//!    gateway's secrets covered (state directory, audit directory and key, secret files).
//! 5. [`credentials`]: the policy's `user` (supplementary groups cleared), every capability
//!    set emptied (effective, permitted, inheritable, ambient, bounding), `no_new_privs`, and
//!    a check that the result is what was asked for (fail closed otherwise).
//! 6. [`seccomp`]: a filter that refuses namespace, mount, tracing, module, kexec, BPF and
//!    raw-socket system calls with `EPERM`; everything else is allowed, since servers are
//!    arbitrary programs.
//!
//! A failure in any step ends the helper with status [`SETUP_FAILED`] and one line on stderr
//! (which the gateway logs): the server never runs half-confined.

pub mod credentials;
mod fds;
mod init;
mod mounts;
mod namespaces;
pub mod readable;
mod seccomp;

use std::ffi::OsString;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The hidden sub-command of the gateway's binary that runs [`run`].
pub const SUBCOMMAND: &str = "__confine";

/// Exit status of the helper when confinement could not be set up.
pub const SETUP_FAILED: i32 = 125;

/// The default user of a process server: nobody.
pub const NOBODY: u32 = 65534;

/// Everything the helper needs besides the server's command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confinement {
    /// For messages.
    pub server: String,
    pub uid: u32,
    pub gid: u32,
    /// The gateway is root: switch to `uid`/`gid`. Otherwise the server keeps the gateway's
    /// ids inside an unprivileged user namespace (when the kernel allows one).
    pub privileged: bool,
    /// The network namespace to enter (`/run/netns/NAME`), for servers with egress rules.
    pub netns: Option<PathBuf>,
    /// Bound over `/etc/resolv.conf`: the sandbox's only resolver.
    pub resolv_conf: Option<PathBuf>,
    /// The policy's `mounts` (host path -> path in the view).
    pub mounts: Vec<BindMount>,
    /// Paths covered by an empty, unreadable file or directory.
    pub hide: Vec<PathBuf>,
    /// The server's working directory, entered as the server's user.
    pub cwd: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub writable: bool,
}

/// The helper's command line after the program: `SUBCOMMAND JSON -- PROGRAM ARGS...`.
pub fn helper_args(c: &Confinement, program: &str, args: &[String]) -> Vec<OsString> {
    let mut out: Vec<OsString> = vec![
        SUBCOMMAND.into(),
        serde_json::to_string(c).unwrap_or_default().into(),
        "--".into(),
        program.into(),
    ];
    out.extend(args.iter().map(OsString::from));
    out
}

/// Entry point of the helper (`argv[1] == SUBCOMMAND`); `args` are the ones after it. Never
/// returns on success: the process becomes the server's supervisor and exits with its status.
pub fn run(args: Vec<OsString>) -> i32 {
    init::run(args)
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("{step}: {source}")]
    Sys {
        step: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ConfineError {
    pub(crate) fn sys(step: impl Into<String>, e: impl Into<std::io::Error>) -> ConfineError {
        ConfineError::Sys {
            step: step.into(),
            source: e.into(),
        }
    }
}

impl From<nix::Error> for ConfineError {
    fn from(e: nix::Error) -> ConfineError {
        ConfineError::sys("system call", std::io::Error::from(e))
    }
}
