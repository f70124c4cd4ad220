//! `portcullis firewall plan POLICY` and `portcullis firewall show`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitCode};

use crate::egress::ruleset;
use crate::policy;

/// Prints the rule set the policy would program, in `nft` syntax.
pub fn plan(path: &Path) -> ExitCode {
    match policy::load(path) {
        Ok(p) => {
            let _ = std::io::stdout().write_all(ruleset::plan(&p).as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints the live table with set contents and their remaining timeouts. Reading goes through
/// the `nft` tool because this is for display only; programming is always netlink, in process.
pub fn show() -> ExitCode {
    let out = Command::new("nft")
        .args(["list", "table", "inet", ruleset::TABLE])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let _ = std::io::stdout().write_all(&o.stdout);
            ExitCode::SUCCESS
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("No such file") {
                eprintln!("table inet {} is not programmed: no sandboxed server is running (or the gateway runs in another network namespace)", ruleset::TABLE);
            } else {
                eprintln!(
                    "`nft list table inet {}` failed: {}",
                    ruleset::TABLE,
                    err.trim()
                );
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot run `nft` (install the nftables package; reading the table needs root): {e}");
            ExitCode::FAILURE
        }
    }
}
