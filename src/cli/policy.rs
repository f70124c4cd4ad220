//! `portcullis policy check|import|show FILE`: thin wrappers printing what `crate::policy` returns.

use crate::policy;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Validates the policy at `path`: `PATH: ok (N servers: a, b)` on stdout, or every diagnostic on
/// stderr and exit status 1. With `pubkey`, also verifies `PATH.sig` and the serial as a gateway
/// started with `--policy-pubkey` would, and names the serial and key.
pub fn check(path: &Path, pubkey: Option<&str>) -> ExitCode {
    let signed = match pubkey {
        None => None,
        Some(key) => match verify_signature(path, key) {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(std::io::stderr().lock(), "{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match policy::load(path) {
        Ok(p) => {
            let names: Vec<&str> = p.servers.keys().map(String::as_str).collect();
            let noun = if names.len() == 1 {
                "server"
            } else {
                "servers"
            };
            let list = if names.is_empty() {
                String::new()
            } else {
                format!(": {}", names.join(", "))
            };
            let signature = signed
                .map(|s| format!(", signed: serial {} key {}", s.serial, s.key_id))
                .unwrap_or_default();
            out(&format!(
                "{}: ok ({} {noun}{list}){signature}\n",
                path.display(),
                names.len()
            ));
            if let Some(w) = crate::egress::subnets::pool_warning(&p) {
                out(&format!("{}: warning: {w}\n", path.display()));
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// What a gateway in signed mode checks before it parses: the signature, then the serial.
/// Ownership is the gateway's machine's business (`portcullis doctor`), not checked here.
fn verify_signature(
    path: &Path,
    key: &str,
) -> Result<Option<crate::reload::Signed>, crate::reload::Refused> {
    let gate = crate::reload::Gate::new(&[], true, Some(key))?;
    let read = gate.read(path)?;
    gate.verify(path, &read)?;
    let policy = policy::parse_file(path, &read.text)?;
    gate.admit(&policy, None)
}

/// Converts a Claude `.mcp.json` or a `servers.json` at `path` into policy TOML on stdout.
pub fn import(path: &Path) -> ExitCode {
    let src = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(source) => {
            return fail(&policy::PolicyError::Read {
                path: path.display().to_string(),
                source,
            })
        }
    };
    match policy::import(&src, &path.display().to_string()) {
        Ok(toml) => {
            out(&toml);
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Prints the effective policy at `path`, defaults filled in.
pub fn show(path: &Path) -> ExitCode {
    match policy::load(path) {
        Ok(p) => {
            out(&policy::show::render(&p));
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

fn out(s: &str) {
    // A closed stdout (e.g. `| head`) is not worth a panic.
    let _ = std::io::stdout().lock().write_all(s.as_bytes());
}

fn fail(e: &policy::PolicyError) -> ExitCode {
    let n = e.diagnostics().len();
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{e}");
    if n > 1 {
        let _ = writeln!(err, "{n} errors");
    }
    ExitCode::FAILURE
}
