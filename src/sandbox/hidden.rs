//! What a `process` server must never read: the gateway's own secrets, taken from the policy.
//!
//! The audit key, the state directory and secret files are checked by mode as well (their
//! content is a credential); the audit directory (its files are 0600, written by the gateway),
//! the policy file (reviewed text, token hashes only) and the engine sockets are only hidden.
//!
//! The confinement helper covers these paths in the server's mount view
//! ([`super::confine`]); start-up and `portcullis doctor` also check that the server's uid
//! could not read them anyway ([`super::confine::readable`]), so that a server without a mount
//! view (a gateway that is not root, on a kernel without user namespaces) is not the only line.

use std::path::PathBuf;

use crate::policy::{Policy, SecretRef};

/// Sockets that give whoever can connect to them root on the host.
const ENGINE_SOCKETS: [&str; 3] = [
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/run/containerd",
];

/// One sensitive path and why it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sensitive {
    pub path: PathBuf,
    pub what: String,
}

/// The gateway's secrets under `policy`, whose modes must keep process servers out: the audit
/// signing key, the state directory (OAuth token caches), and every server's secret files.
pub fn sensitive(policy: &Policy) -> Vec<Sensitive> {
    let mut out = Vec::new();
    let mut add = |path: PathBuf, what: String| {
        if !path.as_os_str().is_empty() && !out.iter().any(|s: &Sensitive| s.path == path) {
            out.push(Sensitive { path, what });
        }
    };
    if policy.audit.enabled {
        let key = match &policy.audit.signing_key {
            Some(k) => k.clone(),
            None => policy
                .audit
                .dir
                .join(crate::audit::writer::GENERATED_KEY_FILE),
        };
        add(key, "the audit signing key".into());
    }
    add(
        policy.gateway.state_dir.clone(),
        "the state directory".into(),
    );
    for s in policy.servers.values() {
        for (name, r) in &s.secrets {
            let path = match r {
                SecretRef::File(p) => p.clone(),
                SecretRef::Dotenv { path, .. } => path.clone(),
                SecretRef::Env(_) => continue,
            };
            add(path, format!("secret {name} of server {}", s.name));
        }
    }
    out
}

/// What the mount view covers: [`sensitive`], the audit directory, the policy file (what
/// other servers are and get), and the container engines' sockets.
pub fn hidden_paths(policy: &Policy) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = sensitive(policy).into_iter().map(|s| s.path).collect();
    if policy.audit.enabled {
        out.push(policy.audit.dir.clone());
    }
    let origin = PathBuf::from(&policy.origin);
    if origin.is_absolute() {
        out.push(origin);
    }
    out.extend(ENGINE_SOCKETS.iter().map(PathBuf::from));
    out
}

/// A sensitive path a process server's user could read through its permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    pub server: String,
    pub uid: u32,
    pub what: String,
    pub path: PathBuf,
    pub why: String,
}

/// Every [`sensitive`] path that the user of a process server could read (meaningful when the
/// gateway is root; otherwise the servers run as the gateway's own uid).
pub fn exposures(policy: &Policy) -> Vec<Exposure> {
    let paths = sensitive(policy);
    let mut out = Vec::new();
    for s in policy.servers.values() {
        let crate::policy::Runtime::Process(p) = &s.runtime else {
            continue;
        };
        for sp in &paths {
            if let Some(why) = super::confine::readable::exposure(&sp.path, p.user.uid, p.user.gid)
            {
                out.push(Exposure {
                    server: s.name.clone(),
                    uid: p.user.uid,
                    what: sp.what.clone(),
                    path: sp.path.clone(),
                    why,
                });
            }
        }
    }
    out
}
