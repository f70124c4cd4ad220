//! Which gateway this is, among the gateways that share a host, a network namespace or a
//! Docker engine.
//!
//! Every kernel and Docker object a gateway makes is named from its [`InstanceId`] (see
//! `egress::names` and the Docker scope), so gateways never touch each other's objects. The
//! id is `[gateway] instance` or `serve --instance`; without one it is derived from the state
//! directory, which is what stays the same across restarts of one deployment, so a restarted
//! gateway recognises the leftovers of its own earlier run (and only those).
//!
//! Whether an instance is free is decided by [`lock::InstanceLock`] (a lock that dies with its
//! process) and, for the egress table, by the kernel's table owner (see `egress::table`).

pub mod lock;

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Longest instance id: it appears in table, Docker network and scope names.
pub const MAX_LEN: usize = 32;
/// Ids whose table name (`portcullis_<id>`) something else uses.
const RESERVED: [&str; 1] = ["host"];

/// A validated instance id: 1 to 32 of `[A-Za-z0-9-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

/// What is wrong with an instance id, said so that it can be fixed.
pub fn check(id: &str) -> Result<(), String> {
    let first_ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if id.is_empty()
        || id.len() > MAX_LEN
        || !first_ok
        || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!(
            "invalid instance id \"{id}\": use 1 to {MAX_LEN} letters, digits and `-`, starting with a letter or digit, like \"team-a\""
        ));
    }
    if RESERVED.contains(&id) {
        return Err(format!(
            "instance id \"{id}\" is reserved: its table name (portcullis_{id}) belongs to firewall/devcontainer-host.sh; choose another, like \"team-a\""
        ));
    }
    Ok(())
}

impl InstanceId {
    pub fn parse(id: &str) -> Result<InstanceId, String> {
        check(id)?;
        Ok(InstanceId(id.to_owned()))
    }

    /// The default id of a gateway whose state lives in `state_dir` (an absolute path, ideally
    /// canonical): `s` and 10 hex digits of its hash. Two gateways with different state
    /// directories get different ids; the same directory gives the same id on every start.
    pub fn derived_from(state_dir: &Path) -> InstanceId {
        let mut h = Sha256::new();
        h.update(b"portcullis instance of state dir\0");
        h.update(state_dir.as_os_str().as_encoded_bytes());
        let digest = h.finalize();
        InstanceId(format!("s{}", &hex::encode(digest)[..10]))
    }

    /// `explicit` (from `--instance` or `[gateway] instance`) when given, else derived from
    /// `state_dir`.
    pub fn resolve(explicit: Option<&str>, state_dir: &Path) -> Result<InstanceId, String> {
        match explicit {
            Some(id) => Self::parse(id),
            None => Ok(Self::derived_from(state_dir)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Default for InstanceId {
    /// The instance of library users and tests that name none.
    fn default() -> Self {
        InstanceId("default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_with_a_fix() {
        for ok in ["a", "team-a", "A1", "s0123456789", &"x".repeat(MAX_LEN)] {
            assert!(InstanceId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a_b", "a.b", "a b", "é", &"x".repeat(MAX_LEN + 1)] {
            let e = InstanceId::parse(bad).unwrap_err();
            assert!(e.contains("letters, digits and `-`"), "{bad}: {e}");
        }
        let e = InstanceId::parse("host").unwrap_err();
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn the_default_id_follows_the_state_directory() {
        let a = InstanceId::derived_from(Path::new("/srv/a/portcullis-state"));
        assert_eq!(
            a,
            InstanceId::derived_from(Path::new("/srv/a/portcullis-state"))
        );
        assert_ne!(
            a,
            InstanceId::derived_from(Path::new("/srv/b/portcullis-state"))
        );
        assert!(check(a.as_str()).is_ok(), "{a}");
        assert_eq!(a.as_str().len(), 11);
        assert_eq!(
            InstanceId::resolve(Some("team-a"), Path::new("/x"))
                .unwrap()
                .as_str(),
            "team-a"
        );
    }
}
