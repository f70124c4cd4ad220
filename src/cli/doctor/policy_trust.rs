//! Who can change what the gateway enforces: the same ownership rule and signature check
//! `serve` applies (`crate::reload::gate`), reported as findings. The doctor judges ownership
//! against its own user, so run it as the gateway's user (in the gateway's container).

use std::path::Path;

use super::{Finding, Status};
use crate::cli::policy_gate::PolicyGateArgs;
use crate::policy::trust::referenced_files;
use crate::policy::Policy;

const SIGN_FIX: &str = "sign the policy with the key the gateway trusts (`portcullis policy sign --key KEY FILE`), with a `[gateway] serial` not lower than the one in force";

pub fn check(args: &PolicyGateArgs, path: Option<&Path>, policy: &Policy) -> Vec<Finding> {
    let gate = match args.gate() {
        Ok(g) => g,
        Err(e) => {
            return vec![Finding::problem(
                Status::Fail,
                format!("policy key: {e}"),
                "give --policy-pubkey the 64 hex digits `portcullis policy keygen` printed, or a .pub file only root or the gateway's user can write",
            )]
        }
    };
    let mut out = Vec::new();
    if gate.trust().insecure() {
        out.push(Finding::problem(
            Status::Warn,
            "policy permissions: not checked (--insecure-policy-permissions); anyone who can write the policy or its secret files controls the gateway",
            "for development only: drop --insecure-policy-permissions and make the files writable only by root or the gateway's user",
        ));
        return out;
    }
    let owners: Vec<String> = gate.trust().owners().map(|u| u.to_string()).collect();
    match (path, gate.key_id()) {
        (None, _) => {}
        (Some(p), None) => out.push(match gate.trust().check("policy file", p) {
            Ok(()) => Finding::ok(format!(
                "policy file {}: it and the directories above it are writable only by trusted owners (uids {})",
                p.display(),
                owners.join(", ")
            )),
            Err(e) => Finding::problem(
                Status::Fail,
                e.to_string(),
                "the gateway refuses to start (and rejects reloads) until then; or require signed policies (--policy-pubkey), which may live anywhere",
            ),
        }),
        (Some(p), Some(key_id)) => out.push(signature(&gate, p, policy, key_id)),
    }
    for (role, file) in referenced_files(policy) {
        out.push(match gate.trust().check(&role, &file) {
            Ok(()) => Finding::ok(format!(
                "{role} {}: writable only by trusted owners",
                file.display()
            )),
            Err(e) => Finding::problem(
                Status::Fail,
                e.to_string(),
                "the gateway refuses the policy until then",
            ),
        });
    }
    out
}

fn signature(gate: &crate::reload::Gate, p: &Path, policy: &Policy, key_id: &str) -> Finding {
    let checked = gate
        .read(p)
        .and_then(|read| gate.verify(p, &read))
        .and_then(|()| gate.recorded_serial(policy))
        .and_then(|floor| gate.admit(policy, floor));
    match checked {
        Ok(Some(s)) => Finding::ok(format!(
            "policy signature {}.sig: verified (key {key_id}, serial {})",
            p.display(),
            s.serial
        )),
        Ok(None) => Finding::ok("policy signature: not required"),
        Err(e) => Finding::problem(Status::Fail, format!("policy signature: {e}"), SIGN_FIX),
    }
}
