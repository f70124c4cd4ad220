//! Can the gateway write its audit log where the policy says, and is its signing key usable?

use std::path::{Path, PathBuf};

use nix::unistd::{access, AccessFlags};

use super::{Finding, Status};
use crate::audit::keys;
use crate::audit::writer::GENERATED_KEY_FILE;
use crate::policy::Policy;

pub fn check(policy: &Policy) -> Vec<Finding> {
    let audit = &policy.audit;
    if !audit.enabled {
        return vec![Finding::problem(
            Status::Warn,
            "audit: disabled by the policy; calls leave no record",
            "set [audit] enabled = true (the default)",
        )];
    }
    let dir = &audit.dir;
    let mut out = vec![writable(dir)];
    out.push(match &audit.signing_key {
        Some(key) => configured_key(key),
        None => generated_key(dir),
    });
    out
}

/// The directory exists and is writable, or can be created: checked with access(2), so the
/// check itself writes nothing.
fn writable(dir: &Path) -> Finding {
    let shown = dir.display();
    let fix = format!("create it writable for the gateway's user (`mkdir -p {shown}` then `chown USER {shown}`), or point [audit] dir / --audit-dir elsewhere; with compose it is the `audit` volume");
    // The nearest part of the path that exists decides.
    let mut existing: PathBuf = dir.to_path_buf();
    while !existing.exists() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p.to_path_buf(),
            _ => {
                existing = PathBuf::from(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Finding::problem(
            Status::Fail,
            format!(
                "audit dir {shown}: {} is not a directory",
                existing.display()
            ),
            fix,
        );
    }
    match access(&existing, AccessFlags::W_OK | AccessFlags::X_OK) {
        Ok(()) if existing == dir => Finding::ok(format!("audit dir {shown}: writable")),
        Ok(()) => Finding::ok(format!(
            "audit dir {shown}: will be created at first start (in {}, writable)",
            existing.display()
        )),
        Err(e) => Finding::problem(
            Status::Fail,
            format!(
                "audit dir {shown}: {} is not writable ({e}); the gateway will not start without its audit log",
                existing.display()
            ),
            fix,
        ),
    }
}

fn configured_key(key: &Path) -> Finding {
    match keys::read_signing(key) {
        Ok(k) => Finding::ok(format!(
            "audit signing key {}: usable (key id {})",
            key.display(),
            keys::key_id(&k.verifying_key())
        )),
        Err(e) => Finding::problem(
            Status::Fail,
            format!("audit signing key: {e}"),
            format!(
                "create it with `portcullis audit keygen --out {}` (keep the .pub where auditors can get it), or fix [audit] signing_key",
                key.display()
            ),
        ),
    }
}

/// Without `signing_key` the gateway generates one inside the log directory: it works, but a
/// key next to the log it signs proves less, so it is worth a warning.
fn generated_key(dir: &Path) -> Finding {
    let key = dir.join(GENERATED_KEY_FILE);
    let fix = "generate a key kept outside the log directory (`portcullis audit keygen --out PATH`) and set [audit] signing_key = PATH";
    if !key.exists() {
        return Finding::problem(
            Status::Warn,
            format!(
                "audit signing key: none configured; one will be generated at first start in {}",
                key.display()
            ),
            fix,
        );
    }
    match keys::read_signing(&key) {
        Ok(k) => Finding::problem(
            Status::Warn,
            format!(
                "audit signing key {}: usable (key id {}), but it lives inside the log directory",
                key.display(),
                keys::key_id(&k.verifying_key())
            ),
            fix,
        ),
        Err(e) => Finding::problem(
            Status::Fail,
            format!("audit signing key: {e}; the gateway cannot sign checkpoints"),
            format!(
                "make {} readable by the gateway's user, or move the log directory aside and let a new key be generated",
                key.display()
            ),
        ),
    }
}
