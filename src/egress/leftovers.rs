//! What an earlier run of this instance left in the network namespace when it died: process
//! sandbox namespaces (with whatever still runs in them), their veth pairs and host-forward
//! rules, and their resolver configuration. Removed at start, **only** for this instance's
//! names and **only** by a gateway that holds the instance (its lock, and its table when the
//! kernel has owner flags): another instance's objects never match, and a live gateway of this
//! instance would have refused this one's start.
//!
//! Docker bridges of the instance are left to Docker reconciliation (removing their
//! networks through the API removes the bridges); until then, and for everything here until it
//! is gone, the instance's table drops their traffic (its catch-all rules match every
//! interface of the instance).
//!
//! Setup and teardown use the `ip` tool, as `netns.rs` does.

use std::path::Path;
use std::process::Command;

use super::names::Names;
use super::netns::ip;

const RUN_NETNS: &str = "/run/netns";
const ETC_NETNS: &str = "/etc/netns";

/// What was removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub namespaces: Vec<String>,
    pub interfaces: Vec<String>,
    /// Processes that still ran in a removed namespace (killed).
    pub processes: Vec<u32>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.interfaces.is_empty()
    }
}

fn entries_with_prefix(dir: &str, prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = rd
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(prefix))
        .collect();
    out.sort();
    out
}

/// The pids whose network namespace is `/run/netns/<name>` (`ip netns pids`).
fn pids_in(name: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// This instance's veth interfaces in the current namespace (or `host_netns`), from
/// `ip -o -d link show`: `N: NAME@PEER: <...> ... veth ...`.
fn veths(names: &Names, host_netns: Option<&str>) -> Vec<String> {
    let mut cmd = Command::new("ip");
    if let Some(h) = host_netns {
        cmd.args(["-n", h]);
    }
    let Ok(out) = cmd.args(["-o", "-d", "link", "show"]).output() else {
        return Vec::new();
    };
    parse_veths(&String::from_utf8_lossy(&out.stdout), names)
}

fn parse_veths(text: &str, names: &Names) -> Vec<String> {
    text.lines()
        .filter(|l| l.split_whitespace().any(|w| w == "veth"))
        .filter_map(|l| {
            let name = l.split_whitespace().nth(1)?.trim_end_matches(':');
            let name = name.split('@').next()?;
            names.owns_iface(name).then(|| name.to_owned())
        })
        .collect()
}

/// The names of this instance's interfaces in the namespace at `netns` (`None`: this one).
pub fn interfaces(names: &Names, netns: Option<&Path>) -> std::io::Result<Vec<String>> {
    let names = names.clone();
    super::netns::in_netns(netns, move || {
        let all = nix::net::if_::if_nameindex().map_err(std::io::Error::from)?;
        Ok(all
            .iter()
            .filter_map(|i| i.name().to_str().ok().map(str::to_owned))
            .filter(|n| names.owns_iface(n))
            .collect())
    })
}

/// Removes this instance's leftovers (see the module comment). Blocking. `host_netns` is where
/// the host sides of the veths live (`None`: here).
pub fn remove(names: &Names, host_netns: Option<&str>) -> Removed {
    let mut removed = Removed::default();
    let prefix = names.netns_prefix();
    for ns in entries_with_prefix(RUN_NETNS, &prefix) {
        // Whatever still runs there is a sandbox of the dead run; it would keep the namespace
        // (and its veth) alive after the name is gone.
        for pid in pids_in(&ns) {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                removed.processes.push(pid);
            }
        }
        if ip(&["netns", "del", &ns]).is_ok() {
            removed.namespaces.push(ns);
        }
    }
    for dir in entries_with_prefix(ETC_NETNS, &prefix) {
        let _ = std::fs::remove_dir_all(Path::new(ETC_NETNS).join(dir));
    }
    for iface in veths(names, host_netns) {
        if host_netns.is_none() {
            super::host_forward::close(&iface);
        }
        let deleted = match host_netns {
            None => ip(&["link", "del", &iface]),
            Some(h) => ip(&["-n", h, "link", "del", &iface]),
        };
        if deleted.is_ok() {
            removed.interfaces.push(iface);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::InstanceId;

    #[test]
    fn only_this_instances_veths_are_picked() {
        let a = Names::new(InstanceId::parse("a").unwrap());
        let b = Names::new(InstanceId::parse("b").unwrap());
        let (ia, ib) = (a.iface("srv"), b.iface("srv"));
        let text = format!(
            "1: lo: <LOOPBACK,UP> mtu 65536 qdisc noqueue state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback 00:00:00:00:00:00 brd 00:00:00:00:00:00 promiscuity 0\n\
             7: {ia}@if6: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP\\    link/ether 0a:1b brd ff:ff promiscuity 0 \\    veth addrgenmode eui64\n\
             9: {ib}@if8: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP\\    veth addrgenmode eui64\n\
             11: {}: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP\\    bridge forward_delay 1500\n",
            a.iface("docker-srv")
        );
        assert_eq!(parse_veths(&text, &a), vec![ia]);
        assert_eq!(parse_veths(&text, &b), vec![ib]);
    }
}
