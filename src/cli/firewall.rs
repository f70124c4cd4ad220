//! `portcullis firewall plan POLICY` and `portcullis firewall show`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode};

use crate::egress::{names, Names};
use crate::instance::InstanceId;
use crate::policy::{self, EgressMode, Policy};

/// The instance a policy's gateway runs as: `explicit`, the policy's `[gateway] instance`, or
/// the id derived from its state directory (as `serve` derives it, from the canonical path
/// when the directory exists).
pub fn instance_of(policy: &Policy, explicit: Option<&str>) -> Result<InstanceId, String> {
    let dir = &policy.gateway.state_dir;
    let dir = dir
        .canonicalize()
        .or_else(|_| std::path::absolute(dir))
        .unwrap_or_else(|_| dir.clone());
    InstanceId::resolve(explicit.or(policy.gateway.instance.as_deref()), &dir)
}

/// Prints the rule set the policy would program, in `nft` syntax, in `mode` (`host` or
/// `sidecar`; `None`: the policy's).
pub fn plan(path: &Path, instance: Option<&str>, mode: Option<&str>) -> ExitCode {
    let p = match policy::load(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    match instance_of(&p, instance) {
        Ok(id) => {
            let mode = match mode {
                Some("sidecar") => EgressMode::Sidecar,
                Some(_) => EgressMode::Host,
                None => p.egress.mode,
            };
            let text = crate::egress::plan::plan_mode(&p, &Names::new(id), mode);
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn nft(args: &[&str]) -> Result<String, String> {
    match Command::new("nft").args(args).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(format!(
            "cannot run `nft` (install the nftables package; reading the table needs root): {e}"
        )),
    }
}

/// The Portcullis tables of this network namespace, from `nft list tables inet`.
fn instance_tables() -> Result<Vec<String>, String> {
    Ok(nft(&["list", "tables", "inet"])?
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table inet "))
        .filter(|t| names::instance_of_table(t).is_some())
        .map(str::to_owned)
        .collect())
}

/// Prints an instance's live table with set contents and their remaining timeouts. Reading goes
/// through the `nft` tool because this is for display only; programming is always netlink, in
/// process.
pub fn show(instance: Option<&str>) -> ExitCode {
    let table = match instance {
        Some(id) => match InstanceId::parse(id) {
            Ok(id) => Names::new(id).table(),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
        None => match instance_tables() {
            Ok(t) if t.len() == 1 => t[0].clone(),
            Ok(t) if t.is_empty() => {
                eprintln!("no Portcullis table in this network namespace: no sandboxed server is running (or the gateway runs in another network namespace)");
                return ExitCode::FAILURE;
            }
            Ok(t) => {
                let ids: Vec<String> = t
                    .iter()
                    .filter_map(|n| names::instance_of_table(n))
                    .collect();
                eprintln!(
                    "several gateway instances have tables here ({}); choose one with --instance",
                    ids.join(", ")
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("`nft list tables inet` failed: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match nft(&["list", "table", "inet", &table]) {
        Ok(text) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) if e.contains("No such file") => {
            eprintln!("table inet {table} is not programmed: no sandboxed server of that instance is running (or its gateway runs in another network namespace)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("`nft list table inet {table}` failed: {e}");
            ExitCode::FAILURE
        }
    }
}
