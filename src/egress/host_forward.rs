//! Letting a process sandbox's forwarded traffic through the host's own forwarding policy.
//!
//! A veth sandbox reaches the world through the host's forward path, so the host must forward
//! at all (`net.ipv4.ip_forward`), and a host firewall whose forward policy is drop must let
//! the sandbox interface through. Docker is the common case: it sets `FORWARD` to drop in
//! `table ip filter` and offers the `DOCKER-USER` chain for exactly this; an accept in our own
//! table cannot override a drop there. So for each veth host side we insert
//! `-i IFACE -j ACCEPT` and `-o IFACE -j ACCEPT` into `DOCKER-USER` (with the `iptables` tool,
//! which is Docker's own interface to that table) and delete them when the sandbox goes.
//!
//! That is safe because the instance's table (`inet portcullis_<instance>`) judges the same
//! packets first (priority `filter - 10`) and its drops are final: what reaches `DOCKER-USER`
//! from a sandbox interface has already been allowed by the server's rules. Docker bridges need none of
//! this: Docker accepts and masquerades its own networks.

use std::io;
use std::process::Command;

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const CHAIN: &str = "DOCKER-USER";

fn iptables(args: &[&str]) -> io::Result<bool> {
    Ok(Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()?
        .status
        .success())
}

/// Whether Docker's user chain exists (no `iptables` tool or no chain: nothing to open).
fn docker_user_chain() -> bool {
    iptables(&["-S", CHAIN]).unwrap_or(false)
}

/// Turns forwarding on (if off) and opens `iface` in `DOCKER-USER` (if that chain exists).
pub fn open(iface: &str) -> io::Result<()> {
    let forward = std::fs::read_to_string(IP_FORWARD)?;
    if forward.trim() != "1" {
        std::fs::write(IP_FORWARD, "1").map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot enable {IP_FORWARD}, which a process sandbox needs: {e}"),
            )
        })?;
        tracing::info!("enabled net.ipv4.ip_forward for process sandboxes");
    }
    if !docker_user_chain() {
        return Ok(());
    }
    for dir in ["-i", "-o"] {
        let rule = [CHAIN, dir, iface, "-j", "ACCEPT"];
        let mut check = vec!["-C"];
        check.extend_from_slice(&rule);
        if iptables(&check)? {
            continue;
        }
        let mut insert = vec!["-I"];
        insert.extend_from_slice(&rule);
        if !iptables(&insert)? {
            return Err(io::Error::other(format!(
                "`iptables -I {}` failed: the host's forward policy would drop this sandbox's traffic",
                rule.join(" ")
            )));
        }
    }
    Ok(())
}

/// Removes what [`open`] inserted for `iface` (forwarding stays on, as Docker leaves it).
pub fn close(iface: &str) {
    if !docker_user_chain() {
        return;
    }
    for dir in ["-i", "-o"] {
        let del = ["-D", CHAIN, dir, iface, "-j", "ACCEPT"];
        // A rule inserted twice (by a crashed earlier run and this one) goes entirely.
        for _ in 0..4 {
            if !iptables(&del).unwrap_or(false) {
                break;
            }
        }
    }
}
