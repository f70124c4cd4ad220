//! The names of one instance's kernel objects: its table, its sandbox interfaces and network
//! namespaces. Everything is derived from the instance id, so gateways sharing a network
//! namespace never name (and so never match, replace or remove) each other's objects.
//!
//! - table: `inet portcullis_<instance>` (`-` written `_`, as in chain names). Chains and
//!   sets live inside it, so their names need no instance part.
//! - interfaces: `pc` + 5 hex digits of the instance (its *tag*) + 8 hex digits of the server
//!   name: 15 characters, the most Linux allows (IFNAMSIZ 16). The instance's rules match
//!   `pc<tag>*` only, so another instance's interfaces pass through its chains untouched.
//! - process sandbox namespaces: `pcs-` + the same 13 hex digits.
//!
//! Two instance ids can share a tag (20 bits); a gateway refuses to start next to a table whose
//! instance has its tag (`egress::table`), since their rules would then judge each other's
//! interfaces.

use sha2::{Digest, Sha256};

use super::ruleset::ident;
use crate::instance::InstanceId;

/// Every table of a Portcullis instance is named `portcullis_<instance>`.
pub const TABLE_PREFIX: &str = "portcullis_";
/// Every sandbox interface of every instance starts with this.
pub const IFACE_MARK: &str = "pc";
/// Hex digits of the instance in interface names.
const TAG_LEN: usize = 5;
/// The length of every sandbox interface name (IFNAMSIZ - 1).
pub const IFACE_LEN: usize = 15;

/// The names of one instance's objects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names {
    instance: InstanceId,
}

fn hex_of(parts: &[&[u8]], len: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())[..len].to_owned()
}

/// The 5 hex digits of an instance id in its interface names.
pub fn tag_of(instance: &str) -> String {
    hex_of(
        &[b"portcullis instance tag\0", instance.as_bytes()],
        TAG_LEN,
    )
}

/// The instance id of a table named by [`Names::table`], if it is one.
pub fn instance_of_table(table: &str) -> Option<String> {
    let id = table.strip_prefix(TABLE_PREFIX)?.replace('_', "-");
    crate::instance::check(&id).ok().map(|()| id)
}

impl Names {
    pub fn new(instance: InstanceId) -> Names {
        Names { instance }
    }

    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    pub fn tag(&self) -> String {
        tag_of(self.instance.as_str())
    }

    /// `portcullis_<instance>`, in family `inet`.
    pub fn table(&self) -> String {
        format!("{TABLE_PREFIX}{}", ident(self.instance.as_str()))
    }

    /// What every interface of this instance starts with: `pc<tag>`.
    pub fn iface_prefix(&self) -> String {
        format!("{IFACE_MARK}{}", self.tag())
    }

    /// The host-side interface of `server`'s sandbox (bridge or veth).
    pub fn iface(&self, server: &str) -> String {
        format!("{}{}", self.iface_prefix(), hex_of(&[server.as_bytes()], 8))
    }

    /// Whether `iface` is an interface name of this instance.
    pub fn owns_iface(&self, iface: &str) -> bool {
        iface.len() == IFACE_LEN && iface.starts_with(&self.iface_prefix())
    }

    /// What the namespaces of this instance's process sandboxes start with.
    pub fn netns_prefix(&self) -> String {
        format!("pcs-{}", self.tag())
    }

    /// The network namespace of `server`'s process sandbox (`/run/netns/<name>`).
    pub fn netns(&self, server: &str) -> String {
        let iface = self.iface(server);
        format!("pcs-{}", &iface[IFACE_MARK.len()..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(id: &str) -> Names {
        Names::new(InstanceId::parse(id).unwrap())
    }

    #[test]
    fn names_fit_the_kernel_and_differ_per_instance_and_server() {
        let a = names("team-a");
        let b = names("team-b");
        let i = a.iface("github");
        assert_eq!(i.len(), IFACE_LEN, "{i}");
        assert_eq!(i, a.iface("github"), "stable");
        assert!(a.owns_iface(&i) && !b.owns_iface(&i));
        assert_ne!(i, b.iface("github"), "the same server in another instance");
        assert_ne!(i, a.iface("github2"));
        assert!(i.starts_with(&a.iface_prefix()) && !i.starts_with(&b.iface_prefix()));
        assert_eq!(a.table(), "portcullis_team_a");
        assert_eq!(instance_of_table(&a.table()).as_deref(), Some("team-a"));
        assert_eq!(
            instance_of_table("portcullis"),
            None,
            "the table of old versions"
        );
        assert_eq!(instance_of_table("filter"), None);
        let ns = a.netns("github");
        assert!(
            ns.starts_with(&a.netns_prefix()) && ns.ends_with(&i[2..]),
            "{ns}"
        );
        assert!(!ns.starts_with(&b.netns_prefix()));
    }

    #[test]
    fn old_single_instance_names_are_not_ours() {
        // Before instances, interfaces were `pc-<8 hex>`: no instance's prefix matches them.
        let a = names("x");
        assert!(!a.owns_iface("pc-9a881b9b"));
        assert!(!"pc-9a881b9b".starts_with(&a.iface_prefix()));
    }
}
