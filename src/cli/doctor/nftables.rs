//! Can this process program nftables (the egress layer), how will the table be protected,
//! what state is this instance's table in, and does the sandbox pool overlap routes here?

use super::{Finding, Status};
use crate::egress::nft::{Netlink, TableInfo, TABLE_F_OWNER, TABLE_F_PERSIST};
use crate::egress::ruleset::{TableNeed, AGENTS_HOLD_THE_RULES};
use crate::egress::{names, subnets, Names};
use crate::policy::Policy;

/// `CAP_NET_ADMIN`'s bit in the capability sets (linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;

pub async fn check(policy: &Policy, instance: Option<&str>) -> Vec<Finding> {
    // Servers whose rules are in this gateway's own table; remote and openapi servers are
    // checked in process, and in sidecar mode a docker server's agent holds its own table.
    let need = TableNeed::of(policy);
    let severity = if matches!(need, TableNeed::Servers(_)) {
        Status::Fail
    } else {
        Status::Warn
    };
    let names = match crate::cli::firewall::instance_of(policy, instance) {
        Ok(id) => Names::new(id),
        Err(e) => {
            return vec![Finding::problem(
                Status::Fail,
                format!("instance: {e}"),
                "fix --instance / [gateway] instance",
            )]
        }
    };
    let cap = net_admin_in_effect();
    let table = names.table();
    // Netlink calls block (with a receive timeout): keep them off the async workers.
    let read = tokio::task::spawn_blocking(move || -> Result<_, crate::egress::NftError> {
        let mut nl = Netlink::open(&table)?;
        let flags = nl.supports_table_flags(TABLE_F_OWNER | TABLE_F_PERSIST)?;
        Ok((flags, nl.tables()?))
    })
    .await;
    let mut findings = match read {
        Ok(Ok((flags, tables))) => {
            let mut f = vec![Finding::ok(
                "nftables: netlink answers (CAP_NET_ADMIN in effect)".to_owned(),
            )];
            f.push(protection(flags));
            f.extend(instance_tables(&names, &tables));
            f
        }
        Ok(Err(e)) => {
            let why = if cap == Some(false) {
                "this process lacks CAP_NET_ADMIN"
            } else {
                "the kernel refused"
            };
            let need = match &need {
                TableNeed::Servers(servers) => format!(
                    "servers with egress rules will not start: {}",
                    servers.join(", ")
                ),
                TableNeed::AgentsOnly => AGENTS_HOLD_THE_RULES.to_owned(),
                TableNeed::Nobody => {
                    "no server in this policy declares egress, so nothing needs it yet".to_owned()
                }
            };
            vec![Finding::problem(
                severity,
                format!("nftables: cannot list tables over netlink ({e}); {why}; {need}"),
                "run the gateway as root or with CAP_NET_ADMIN (systemd: AmbientCapabilities=CAP_NET_ADMIN; compose: user \"0:0\" with cap_add [NET_ADMIN], which only host mode and process servers with egress rules need); the kernel needs nf_tables (`modprobe nf_tables`)",
            )]
        }
        Err(e) => vec![Finding::problem(
            severity,
            format!("nftables: the check did not finish: {e}"),
            "run `portcullis doctor` again; report a bug if it persists",
        )],
    };
    findings.extend(pool(policy));
    findings
}

/// Which protection the gateway's table gets here.
fn protection(flags: bool) -> Finding {
    if flags {
        Finding::ok("egress table protection: owner (the kernel has NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST: while the gateway runs nobody else can change its table, and it stays in force if the gateway dies)")
    } else {
        Finding::problem(
            Status::Warn,
            "egress table protection: watch (the kernel lacks NFT_TABLE_F_OWNER | NFT_TABLE_F_PERSIST): anyone with CAP_NET_ADMIN can change the gateway's table, and it restores it only at its next read-back (every second), and a table of a gateway that died can be removed by anyone",
            "run on Linux 6.9 or later",
        )
    }
}

/// The policy's instance's table, and the other instances' tables of this namespace.
fn instance_tables(names: &Names, tables: &[TableInfo]) -> Vec<Finding> {
    let mut f = Vec::new();
    let ours = names.table();
    let others: Vec<String> = tables
        .iter()
        .filter(|t| t.name != ours)
        .filter_map(|t| names::instance_of_table(&t.name))
        .collect();
    match tables.iter().find(|t| t.name == ours) {
        None => f.push(Finding::ok(format!("instance {}: table inet {ours} is not programmed (a gateway of this instance creates it when a server with egress rules starts)", names.instance()))),
        Some(t) if t.is_owned() => f.push(Finding::ok(format!(
            "instance {}: table inet {ours} is owned by a running gateway (netlink port {}{}); `portcullis firewall show --instance {}` lists it",
            names.instance(),
            t.owner.unwrap_or(0),
            t.comment.as_deref().map(|c| format!(", \"{c}\"")).unwrap_or_default(),
            names.instance()
        ))),
        Some(t) if t.is_orphan() => f.push(Finding::problem(
            Status::Warn,
            format!("instance {}: table inet {ours} was left by a gateway that ended without removing it; it still keeps that gateway's sandboxes closed", names.instance()),
            "start the gateway of this instance: it takes the table over and removes the leftovers",
        )),
        Some(_) => f.push(Finding::problem(
            Status::Warn,
            format!("instance {}: table inet {ours} exists without owner flags (a gateway in watch mode, or left by one)", names.instance()),
            "start the gateway of this instance on Linux 6.9 or later",
        )),
    }
    if !others.is_empty() {
        f.push(Finding::ok(format!(
            "other gateway instances in this network namespace: {} (each judges only its own interfaces)",
            others.join(", ")
        )));
    }
    if let Some(clash) = others.iter().find(|o| names::tag_of(o) == names.tag()) {
        f.push(Finding::problem(
            Status::Fail,
            format!(
                "instance {} and instance {clash} would both name their interfaces `{}*`: the gateway refuses to start next to it",
                names.instance(),
                names.iface_prefix()
            ),
            "choose another instance id (--instance / [gateway] instance)",
        ));
    }
    f
}

/// Whether `[egress] network_pool` overlaps routes of this namespace.
fn pool(policy: &Policy) -> Vec<Finding> {
    subnets::pool_warning(policy)
        .map(|w| {
            Finding::problem(
                Status::Warn,
                format!("network_pool: {w}"),
                "set [egress] network_pool to a range no route here uses",
            )
        })
        .into_iter()
        .collect()
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
