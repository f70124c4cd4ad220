//! Can a process server's user read the gateway's secrets, and how confined will it be?

use std::process::{Command, Stdio};

use super::{Finding, Status};
use crate::policy::{Policy, Runtime};
use crate::sandbox::confine::{self, Confinement};
use crate::sandbox::hidden;

pub fn check(policy: &Policy) -> Vec<Finding> {
    let servers: Vec<&str> = policy
        .servers
        .values()
        .filter(|s| matches!(s.runtime, Runtime::Process(_)))
        .map(|s| s.name.as_str())
        .collect();
    if servers.is_empty() {
        return Vec::new();
    }
    if !crate::egress::netns::is_root() {
        return vec![unprivileged(&servers)];
    }
    let exposed = hidden::exposures(policy);
    if exposed.is_empty() {
        return vec![Finding::ok(
            "process servers: their users cannot read the audit signing key, the state directory or the secret files (by mode; their mount view also hides them)",
        )];
    }
    exposed
        .into_iter()
        .map(|e| {
            Finding::problem(
                Status::Fail,
                format!(
                    "process server {} (uid {}) could read {}: {}",
                    e.server, e.uid, e.what, e.why
                ),
                format!(
                    "`chmod go-rwx {}` (or close a directory above it); its mount view hides it, but the mode is the second line",
                    e.path.display()
                ),
            )
        })
        .collect()
}

/// Not root: the servers keep the gateway's uid; whether they get a mount view and a PID
/// namespace depends on user namespaces, so the helper is run once to find out.
fn unprivileged(servers: &[&str]) -> Finding {
    let spec = Confinement {
        server: "doctor".into(),
        uid: confine::NOBODY,
        gid: confine::NOBODY,
        privileged: false,
        netns: None,
        resolv_conf: None,
        mounts: Vec::new(),
        hide: Vec::new(),
        cwd: None,
    };
    let out = Command::new("/proc/self/exe")
        .args(confine::helper_args(&spec, "true", &[]))
        .stdin(Stdio::null())
        .output();
    let list = servers.join(", ");
    match out {
        Ok(o) if o.status.success() && o.stderr.is_empty() => Finding::problem(
            Status::Warn,
            format!("process servers ({list}): the gateway is not root, so they run as its own uid (policy `user` does not apply), in a user namespace with the read-only view, the hidden secrets and their own PID namespace"),
            "run the gateway as root for a separate user per server",
        ),
        Ok(o) => Finding::problem(
            Status::Warn,
            format!(
                "process servers ({list}): the gateway is not root and the confinement helper reports: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            "run the gateway as root, or allow unprivileged user namespaces (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone)",
        ),
        Err(e) => Finding::problem(
            Status::Fail,
            format!("process servers ({list}): the confinement helper does not start: {e}"),
            "check that /proc is mounted",
        ),
    }
}
