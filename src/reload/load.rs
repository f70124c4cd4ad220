//! Reading a policy and checking it, at start ([`load`]) and for a reload
//! ([`load_for_reload`]): the rules of [`gate`] (who may write it, its signature and serial),
//! then parsing and validation with the command line's overrides applied, then what it refers
//! to. File I/O throughout: a reload runs it on a blocking thread.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::gate::{self, Gate, Refused, Signed};
use super::{Overrides, Trigger};
use crate::access::Clients;
use crate::policy::{self, Policy};
use crate::router::ActiveLock;

/// A policy that passed every check at start, with what it was read from.
pub struct Admitted {
    pub policy: Policy,
    /// Hex SHA-256 of the policy's text.
    pub sha256: String,
    pub(super) fingerprint: String,
    /// The signature it was accepted on, in signed mode.
    pub signed: Option<Signed>,
}

impl Admitted {
    /// The `detail` of the `policy_load` audit record: which policy, which servers, which
    /// signed serial is in force from here on.
    pub fn describe(&self, gate: &Gate) -> String {
        let p = &self.policy;
        let mut d = format!(
            "{} ({} servers: {}) sha256 {}",
            p.origin,
            p.servers.len(),
            p.servers.keys().cloned().collect::<Vec<_>>().join(", "),
            self.sha256
        );
        if let Some(s) = &self.signed {
            d.push_str(&format!(" signed serial {} key {}", s.serial, s.key_id));
        }
        if gate.trust().insecure() {
            d.push_str(" insecure-policy-permissions");
        }
        d
    }
}

/// Reads the policy (file or embedded default) and checks it as a start-up must: who may
/// write it or its signature, validity, the files it reads, its serial against the one this
/// gateway last put in force. File I/O.
pub fn load(path: Option<&PathBuf>, overrides: &Overrides) -> Result<Admitted, Refused> {
    let gate = &overrides.gate;
    gate.warn_if_insecure();
    let read = match path {
        Some(p) => {
            let read = gate.read(p)?;
            gate.vouch_for_file(p)?;
            gate.verify(p, &read)?;
            read
        }
        None if gate.key_id().is_some() => return Err(Refused::Embedded),
        None => gate::Read::embedded(),
    };
    let policy = parse(path, &read.text, overrides)?;
    let floor = gate.recorded_serial(&policy)?;
    let signed = gate.admit(&policy, floor)?;
    if let Some(s) = &signed {
        gate.record_serial(&policy, s);
    }
    Ok(Admitted {
        policy,
        sha256: read.sha256,
        fingerprint: read.fingerprint,
        signed,
    })
}

fn parse(
    path: Option<&PathBuf>,
    text: &str,
    overrides: &Overrides,
) -> Result<Policy, policy::PolicyError> {
    let mut p = match path {
        Some(path) => policy::parse_file(path, text)?,
        None => policy::parse(text, policy::DEFAULT_POLICY_ORIGIN)?,
    };
    overrides.apply(&mut p);
    Ok(p)
}

/// A policy read for a reload that passed every check.
pub(super) struct Valid {
    pub(super) policy: Policy,
    pub(super) sha256: String,
    pub(super) fingerprint: String,
    pub(super) signed: Option<Signed>,
    pub(super) clients: Clients,
    pub(super) secrets: BTreeMap<String, String>,
    /// Its lock file (`[gateway] lock`), read again.
    pub(super) lock: Option<ActiveLock>,
}

/// Why a reload was refused, and what of the file could be read.
pub(super) struct Rejection {
    /// Hex SHA-256 of the text, when it could be read.
    pub(super) sha256: Option<String>,
    /// What the next file change is compared with, when the text could be read.
    pub(super) fingerprint: Option<String>,
    pub(super) error: String,
}

impl Rejection {
    pub(super) fn of(read: Option<&gate::Read>, error: impl std::fmt::Display) -> Rejection {
        Rejection {
            sha256: read.map(|r| r.sha256.clone()),
            fingerprint: read.map(|r| r.fingerprint.clone()),
            error: error.to_string(),
        }
    }
}

/// What reading the policy for a reload found.
pub(super) enum Loaded {
    /// A file change to bytes already tried.
    Tried,
    Valid(Box<Valid>),
    Invalid(Rejection),
}

/// Reads the policy, checks who could have written it, then (unless a file change brought
/// bytes already tried) its signature, its content, its serial against `in_force`, and what it
/// refers to (secret files, JWT keys): file I/O, for a blocking thread.
pub(super) fn load_for_reload(
    path: Option<&PathBuf>,
    overrides: &Overrides,
    trigger: Trigger,
    tried: &str,
    in_force: Option<u64>,
) -> Loaded {
    let gate = &overrides.gate;
    let read = match path {
        Some(p) => match gate.read(p) {
            Ok(r) => r,
            Err(e) => return Loaded::Invalid(Rejection::of(None, e)),
        },
        None => gate::Read::embedded(),
    };
    let invalid = |e: &dyn std::fmt::Display| Loaded::Invalid(Rejection::of(Some(&read), e));
    // Before the skip: a file whose mode or owner changed is reported even if its bytes did not.
    if let Some(Err(e)) = path.map(|p| gate.vouch_for_file(p)) {
        return invalid(&e);
    }
    if trigger == Trigger::File && read.fingerprint == tried {
        return Loaded::Tried;
    }
    if let Some(Err(e)) = path.map(|p| gate.verify(p, &read)) {
        return invalid(&e);
    }
    let policy = match parse(path, &read.text, overrides) {
        Ok(p) => p,
        Err(e) => return invalid(&e),
    };
    let floor = in_force.map(|s| (s, "the serial in force".to_owned()));
    let signed = match gate.admit(&policy, floor) {
        Ok(s) => s,
        Err(e) => return invalid(&e),
    };
    let clients = match Clients::from_policy(&policy) {
        Ok(c) => c,
        Err(e) => return invalid(&e),
    };
    let lock = match &policy.gateway.lock {
        Some(settings) => match ActiveLock::load(settings, &policy.origin) {
            Ok(l) => Some(l),
            Err(e) => return invalid(&e),
        },
        None => None,
    };
    Loaded::Valid(Box::new(Valid {
        secrets: super::fingerprints(&policy),
        policy,
        sha256: read.sha256,
        fingerprint: read.fingerprint,
        signed,
        clients,
        lock,
    }))
}
