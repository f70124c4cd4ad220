//! Can this process program nftables (the egress layer), and is Portcullis's table there?

use super::{Finding, Status};
use crate::egress::nft::Netlink;
use crate::egress::ruleset;
use crate::policy::Policy;

/// `CAP_NET_ADMIN`'s bit in the capability sets (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

pub async fn check(policy: &Policy) -> Vec<Finding> {
    // Servers whose sandbox gets an egress rule set; remote and openapi servers are checked in
    // process.
    let needing: Vec<&str> = policy
        .servers
        .values()
        .filter(|s| ruleset::is_firewalled(s))
        .map(|s| s.name.as_str())
        .collect();
    let severity = if needing.is_empty() {
        Status::Warn
    } else {
        Status::Fail
    };
    let cap = net_admin_in_effect();
    // Netlink calls block (with a receive timeout): keep them off the async workers.
    let listed =
        tokio::task::spawn_blocking(|| Netlink::open().and_then(|mut nl| nl.table_exists())).await;
    let table = ruleset::TABLE;
    match listed {
        Ok(Ok(present)) => {
            let state = if present {
                format!("table inet {table} is programmed (`portcullis firewall show` lists it)")
            } else {
                format!("table inet {table} is not programmed yet (the gateway creates it when a server with egress rules starts)")
            };
            vec![Finding::ok(format!(
                "nftables: netlink answers (CAP_NET_ADMIN in effect); {state}"
            ))]
        }
        Ok(Err(e)) => {
            let why = if cap == Some(false) {
                "this process lacks CAP_NET_ADMIN"
            } else {
                "the kernel refused"
            };
            let need = if needing.is_empty() {
                "no server in this policy declares egress, so nothing needs it yet".to_owned()
            } else {
                format!(
                    "servers with egress rules will not start: {}",
                    needing.join(", ")
                )
            };
            vec![Finding::problem(
                severity,
                format!("nftables: cannot list tables over netlink ({e}); {why}; {need}"),
                "run the gateway as root or with CAP_NET_ADMIN (systemd: AmbientCapabilities=CAP_NET_ADMIN; compose: user \"0:0\" with cap_add [NET_ADMIN]); the kernel needs nf_tables (`modprobe nf_tables`)",
            )]
        }
        Err(e) => vec![Finding::problem(
            severity,
            format!("nftables: the check did not finish: {e}"),
            "run `portcullis doctor` again; report a bug if it persists",
        )],
    }
}

/// Whether `CAP_NET_ADMIN` is in this process's effective set; `None` when it cannot be read.
fn net_admin_in_effect() -> Option<bool> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    cap_eff_has(&status, CAP_NET_ADMIN)
}

fn cap_eff_has(status: &str, bit: u32) -> Option<bool> {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    let mask = u64::from_str_radix(hex, 16).ok()?;
    Some(mask & (1u64 << bit) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_capability_set() {
        let root = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(cap_eff_has(root, CAP_NET_ADMIN), Some(true));
        // Only CAP_NET_BIND_SERVICE (bit 10).
        let nobody = "CapEff:\t0000000000000400\n";
        assert_eq!(cap_eff_has(nobody, CAP_NET_ADMIN), Some(false));
        assert_eq!(cap_eff_has("Name:\tx\n", CAP_NET_ADMIN), None);
    }
}
