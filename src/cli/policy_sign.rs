//! `portcullis policy keygen|sign`: the security team's side of signed policies.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::audit::keys;
use crate::policy::{self, signature};

/// Writes a policy signing key pair: `out` (private, 0600) and `out.pub`.
pub fn keygen(out: &Path) -> ExitCode {
    let key = match keys::generate() {
        Ok(k) => k,
        Err(e) => return fail(&e.to_string()),
    };
    if let Err(e) = keys::write_pair(out, &key) {
        return fail(&e.to_string());
    }
    let public = hex::encode(key.verifying_key().as_bytes());
    println!(
        "wrote {} (private: keep it with whoever approves policies) and {} (key id {})",
        out.display(),
        keys::pub_path(out).display(),
        keys::key_id(&key.verifying_key())
    );
    println!("start the gateway with:  --policy-pubkey {public}");
    println!("                   (or:  PORTCULLIS_POLICY_PUBKEY={public})");
    ExitCode::SUCCESS
}

/// Signs the policy at `file` with the private key at `key`: writes `file.sig` (beside it, then
/// renamed into place, so a gateway never reads half a signature). The policy must be valid and
/// carry `[gateway] serial`, or the gateway would refuse it anyway.
pub fn sign(key: &Path, file: &Path) -> ExitCode {
    let signing = match keys::read_signing(key) {
        Ok(k) => k,
        Err(e) => return fail(&format!("signing key: {e}")),
    };
    let bytes = match std::fs::read(file) {
        Ok(b) => b,
        Err(e) => return fail(&format!("{}: {e}", file.display())),
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        return fail(&format!("{}: not UTF-8 text", file.display()));
    };
    let parsed = match policy::parse_file(file, text) {
        Ok(p) => p,
        Err(e) => return fail(&format!("{e}\nnot signed: fix the policy first")),
    };
    let Some(serial) = parsed.gateway.serial else {
        return fail(&format!(
            "{}: no `serial` in [gateway]; add one (an integer higher than the serial in force) and sign again",
            file.display()
        ));
    };
    let sig = signature::sig_path(file);
    let tmp = {
        let mut s = sig.as_os_str().to_owned();
        s.push(".new");
        std::path::PathBuf::from(s)
    };
    let written = std::fs::write(&tmp, signature::sign(&signing, &bytes))
        .and_then(|()| std::fs::rename(&tmp, &sig));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return fail(&format!("{}: {e}", sig.display()));
    }
    println!(
        "wrote {} (serial {serial}, key id {})",
        sig.display(),
        keys::key_id(&signing.verifying_key())
    );
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr().lock(), "error: {msg}");
    ExitCode::FAILURE
}
