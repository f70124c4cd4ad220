//! `portcullis egress-agent --rules FILE --check`: the readiness probe of a standalone agent
//! (a Kubernetes native sidecar's `startupProbe`, a compose healthcheck).
//!
//! It trusts nothing the agent says: in this network namespace (the pod's) it reads the live
//! table back over netlink and passes only when
//! - `inet portcullis_<instance>` exists and is not an orphan (an orphan is the table of an
//!   agent that died: still closed, but nobody restores it or runs the resolver),
//! - its chains, rules and sets have exactly the shape that FILE and the same flags program
//!   (what the agent's own verification and tamper watch compare), and
//! - something accepts on the resolver's address (`127.0.0.1:53`, TCP).
//!
//! So a probe that passes means the table FILE describes is in force now, whoever asks.
//!
//! Like the agent it drops to the agent's uid keeping NET_ADMIN (reading nf_tables needs it)
//! and builds the expected table for that uid, the one the agent's rules name.

use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use super::Options;
use crate::egress::nft::{Netlink, Snapshot};
use crate::egress::sidecar_rules;
use crate::policy::AGENT_UID;

/// Why the probe fails, or `Ok` when the table FILE describes is in force.
pub fn verdict(opts: &Options, uid: u32) -> Result<(), String> {
    let text = std::fs::read_to_string(&opts.rules)
        .map_err(|e| format!("{}: {e}", opts.rules.display()))?;
    let rules = super::parse(&text, &opts.rules.display().to_string())?;
    let server = rules
        .policy
        .servers
        .get(&rules.server)
        .ok_or_else(|| format!("no server `{}`", rules.server))?;
    let id = crate::instance::InstanceId::parse(&opts.instance)?;
    let table = crate::egress::Names::new(id).table();
    // With the NFLOG rule (the agent bound a log group) or without it (no group was free:
    // denials are then counted without their destinations). Both enforce the same; the
    // group's number is not part of the shape.
    let expected = [Some(0), None].map(|log| {
        Snapshot::expected(&sidecar_rules::build(
            server,
            uid,
            &rules.policy.egress.upstream_resolvers,
            &opts.accept_tcp,
            log,
        ))
    });
    let mut nl = Netlink::open(&table).map_err(|e| format!("netlink: {e}"))?;
    let info = nl
        .table_info()
        .map_err(|e| format!("reading table inet {table}: {e}"))?
        .ok_or_else(|| format!("table inet {table} does not exist"))?;
    if info.is_orphan() {
        return Err(format!(
            "table inet {table} is an orphan: the agent that owned it is gone"
        ));
    }
    let live = nl
        .snapshot()
        .map_err(|e| format!("reading table inet {table} back: {e}"))?
        .ok_or_else(|| format!("table inet {table} does not exist"))?;
    if !expected.iter().any(|e| live.same_shape(e)) {
        return Err(format!(
            "table inet {table} differs from what {} programs",
            opts.rules.display()
        ));
    }
    let resolver = SocketAddr::from((sidecar_rules::RESOLVER, 53));
    TcpStream::connect_timeout(&resolver, Duration::from_secs(1))
        .map_err(|e| format!("the resolver on {resolver} does not answer: {e}"))?;
    Ok(())
}

/// The subcommand with `--rules` and `--check`.
pub fn main(opts: &Options) -> ExitCode {
    let uid = match crate::egress::agent::privs::drop_to(AGENT_UID) {
        Ok(uid) => uid,
        Err(e) => {
            eprintln!("not ready: {e}");
            return ExitCode::FAILURE;
        }
    };
    match verdict(opts, uid) {
        Ok(()) => {
            println!("ready");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // Kubernetes shows the probe's output in the pod's events.
            println!("not ready: {e}");
            ExitCode::FAILURE
        }
    }
}
