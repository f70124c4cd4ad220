//! What a policy file must pass before it is put in force, at start and at every reload.
//!
//! Unsigned (the default): the policy file and every directory above it must be writable only by
//! trusted owners ([`crate::policy::trust`]). Signed (`--policy-pubkey`): the policy's bytes must
//! carry a valid signature of the trusted key in `FILE.sig`, and its `[gateway] serial` must not
//! be lower than the serial in force, nor than the highest serial this gateway ever put in force
//! (kept in `STATE_DIR/policy-serial`, so a restart does not reopen the door to an older signed
//! policy); where the file lives no longer matters, the signature vouches for its content. In
//! both modes the files the policy reads secrets and verification keys from must pass the
//! ownership rule, and so must a `--policy-pubkey` given as a file.
//!
//! A policy and its signature are two files written one after the other: they are read
//! together until two rounds agree, and a reload compares both (the fingerprint) with what it
//! tried last, so a policy rejected because its new signature had not been written yet is tried
//! again when the signature file changes.

use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use crate::policy::signature::{self, SignatureError};
use crate::policy::trust::{Trust, Untrusted};
use crate::policy::{Policy, PolicyError};

/// The file in the state directory that holds the highest signed serial put in force.
pub const SERIAL_FILE: &str = "policy-serial";
/// Rounds of reading a policy and its signature before giving up on them agreeing.
const READ_ROUNDS: usize = 5;
/// Pause between two rounds, to let a writer finish.
const READ_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// The rule policies are held to: who may own them, and the key that must have signed them.
#[derive(Debug, Clone)]
pub struct Gate {
    trust: Trust,
    key: Option<(VerifyingKey, String)>,
}

impl Default for Gate {
    /// Unsigned, trusting root and the gateway's own user.
    fn default() -> Gate {
        Gate {
            trust: Trust::new(&[], false),
            key: None,
        }
    }
}

/// The signature a policy in force was accepted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub serial: u64,
    pub key_id: String,
}

/// A policy's bytes, and its signature's in signed mode, read together.
#[derive(Debug, Clone)]
pub struct Read {
    pub text: String,
    /// Hex SHA-256 of `text`.
    pub sha256: String,
    /// Changes when the policy or its signature changes: what a reload compares.
    pub fingerprint: String,
    sig: Option<Vec<u8>>,
}

impl Read {
    /// The embedded default policy: nothing to check but its content.
    pub fn embedded() -> Read {
        let text = crate::policy::DEFAULT_POLICY_TOML.to_owned();
        let sha256 = super::text_sha256(&text);
        Read {
            fingerprint: sha256.clone(),
            text,
            sha256,
            sig: None,
        }
    }
}

/// Why a policy is not put in force.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(transparent)]
    Untrusted(#[from] Untrusted),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("signed policies (--policy-pubkey) need a policy file (--policy); the embedded default policy is not signed")]
    Embedded,
    #[error("{origin}: a signed policy needs `serial` in [gateway] (an integer, raised with every change) so that an older signed policy cannot be put back; add it and sign again")]
    NoSerial { origin: String },
    #[error("{origin}: serial {serial} is lower than {floor}, {floor_from}; an older signed policy cannot be put back. Sign the policy to apply with a serial of at least {floor}")]
    Rollback {
        origin: String,
        serial: u64,
        floor: u64,
        floor_from: String,
    },
    #[error("{path}: {why}; it holds the highest signed serial this gateway put in force. Restore it, or remove it to accept any signed serial once")]
    SerialFile { path: String, why: String },
}

impl Gate {
    /// `owners`: `--trusted-policy-owner`; `insecure`: `--insecure-policy-permissions`;
    /// `pubkey`: `--policy-pubkey`, 64 hex digits or a key file (which must pass the ownership
    /// rule itself).
    pub fn new(owners: &[u32], insecure: bool, pubkey: Option<&str>) -> Result<Gate, Refused> {
        let trust = Trust::new(owners, insecure);
        let key = match pubkey {
            None => None,
            Some(value) => {
                let (key, file) = signature::read_pubkey(value)?;
                if let Some(file) = file {
                    trust.check("policy public key", &file)?;
                }
                let id = signature::key_id(&key);
                Some((key, id))
            }
        };
        Ok(Gate { trust, key })
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// The id of the key policies must be signed with, in signed mode.
    pub fn key_id(&self) -> Option<&str> {
        self.key.as_ref().map(|(_, id)| id.as_str())
    }

    /// The files whose change means the policy may have changed.
    pub fn watched(&self, policy: &Path) -> Vec<PathBuf> {
        let mut out = vec![policy.to_path_buf()];
        if self.key.is_some() {
            out.push(signature::sig_path(policy));
        }
        out
    }

    /// Reads the policy at `path` (and its signature in signed mode) so that both belong to the
    /// same moment. I/O: for a blocking thread.
    pub fn read(&self, path: &Path) -> Result<Read, Refused> {
        let text = |p: &Path| {
            std::fs::read(p).map_err(|source| PolicyError::Read {
                path: p.display().to_string(),
                source,
            })
        };
        if self.key.is_none() {
            return finish(text(path)?, None, path);
        }
        let sig_file = signature::sig_path(path);
        let sig = |p: &Path| match std::fs::read(p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(SignatureError::Read {
                sig: p.display().to_string(),
                source,
            }),
        };
        let mut last = (text(path)?, sig(&sig_file)?);
        for _ in 0..READ_ROUNDS {
            std::thread::sleep(READ_PAUSE);
            let again = (text(path)?, sig(&sig_file)?);
            if again == last {
                break;
            }
            last = again;
        }
        let (bytes, sig) = last;
        finish(bytes, Some(sig.unwrap_or_default()), path)
    }

    /// Checks what can be checked before parsing: in unsigned mode who may write the policy
    /// file, in signed mode its signature. I/O: for a blocking thread.
    pub fn vouch_for_file(&self, path: &Path) -> Result<(), Refused> {
        if self.key.is_none() {
            self.trust.check("policy file", path)?;
        }
        Ok(())
    }

    /// In signed mode, checks the signature of what [`Gate::read`] read.
    pub fn verify(&self, path: &Path, read: &Read) -> Result<(), Refused> {
        let Some((key, _)) = &self.key else {
            return Ok(());
        };
        let sig_file = signature::sig_path(path);
        let sig = read.sig.as_deref().unwrap_or_default();
        if sig.is_empty() {
            return Err(SignatureError::Missing {
                policy: path.display().to_string(),
                sig: sig_file.display().to_string(),
            }
            .into());
        }
        let sig_text = String::from_utf8_lossy(sig);
        signature::verify(key, read.text.as_bytes(), &sig_text, path, &sig_file)?;
        Ok(())
    }

    /// Checks the parsed policy: the files it reads secrets and keys from, and in signed mode
    /// its serial against `floor` (named `floor_from` in messages). Returns the signature it is
    /// accepted on.
    pub fn admit(
        &self,
        policy: &Policy,
        floor: Option<(u64, String)>,
    ) -> Result<Option<Signed>, Refused> {
        self.trust.check_references(policy)?;
        let Some((_, key_id)) = &self.key else {
            return Ok(None);
        };
        let Some(serial) = policy.gateway.serial else {
            return Err(Refused::NoSerial {
                origin: policy.origin.clone(),
            });
        };
        if let Some((floor, floor_from)) = floor {
            if serial < floor {
                return Err(Refused::Rollback {
                    origin: policy.origin.clone(),
                    serial,
                    floor,
                    floor_from,
                });
            }
        }
        Ok(Some(Signed {
            serial,
            key_id: key_id.clone(),
        }))
    }

    /// The highest serial recorded in `policy`'s state directory, in signed mode.
    pub fn recorded_serial(&self, policy: &Policy) -> Result<Option<(u64, String)>, Refused> {
        if self.key.is_none() {
            return Ok(None);
        }
        let path = serial_file(policy);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Refused::SerialFile {
                    path: path.display().to_string(),
                    why: format!("cannot read it: {e}"),
                })
            }
        };
        let serial = text
            .trim()
            .parse::<u64>()
            .map_err(|_| Refused::SerialFile {
                path: path.display().to_string(),
                why: format!("not a serial: {:?}", text.trim()),
            })?;
        Ok(Some((
            serial,
            format!(
                "the highest serial this gateway put in force (recorded in {})",
                path.display()
            ),
        )))
    }

    /// Records `signed.serial` in `policy`'s state directory when it is higher than what is
    /// there. A failure is logged, not fatal: only the protection across restarts is lost.
    pub fn record_serial(&self, policy: &Policy, signed: &Signed) {
        let path = serial_file(policy);
        if let Ok(Some((recorded, _))) = self.recorded_serial(policy) {
            if recorded >= signed.serial {
                return;
            }
        }
        if let Err(e) = write_serial(&path, signed.serial) {
            tracing::warn!(file = %path.display(), error = %e, "cannot record the signed serial in force; after a restart an older signed policy could be put back");
        }
    }

    /// Logs, loudly, that the ownership rule is off (at start and at every reload).
    pub fn warn_if_insecure(&self) {
        if self.trust.insecure() {
            tracing::warn!("INSECURE: --insecure-policy-permissions is set: the gateway does not check who can write its policy file and the secret files it names; anyone who can write them controls the gateway. For development only");
        }
    }
}

fn finish(bytes: Vec<u8>, sig: Option<Vec<u8>>, path: &Path) -> Result<Read, Refused> {
    let text = String::from_utf8(bytes).map_err(|_| PolicyError::Read {
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })?;
    let sha256 = super::text_sha256(&text);
    let fingerprint = match &sig {
        None => sha256.clone(),
        Some(s) => {
            use sha2::{Digest, Sha256};
            format!("{sha256}+{}", hex::encode(Sha256::digest(s)))
        }
    };
    Ok(Read {
        text,
        sha256,
        fingerprint,
        sig,
    })
}

fn serial_file(policy: &Policy) -> PathBuf {
    policy.gateway.state_dir.join(SERIAL_FILE)
}

/// Replaces `path` with `serial` (written beside it, then renamed: never half a number).
fn write_serial(path: &Path, serial: u64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let tmp = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(format!("{serial}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn signed_gate(key: &SigningKey) -> Gate {
        Gate::new(
            &[],
            false,
            Some(&hex::encode(key.verifying_key().as_bytes())),
        )
        .unwrap()
    }

    fn policy_at(dir: &Path, serial: u64) -> (PathBuf, Policy) {
        let path = dir.join("policy.toml");
        let text = format!("[gateway]\nserial = {serial}\n");
        std::fs::write(&path, &text).unwrap();
        let p = crate::policy::parse_file(&path, &text).unwrap();
        (path, p)
    }

    #[test]
    fn an_unsigned_policy_is_refused_in_signed_mode_and_a_signed_one_passes() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let gate = signed_gate(&key);
        let dir = tempfile::tempdir().unwrap();
        let (path, policy) = policy_at(dir.path(), 3);
        let read = gate.read(&path).unwrap();
        let e = gate.verify(&path, &read).unwrap_err();
        assert!(e.to_string().contains("is missing"), "{e}");
        std::fs::write(
            signature::sig_path(&path),
            signature::sign(&key, read.text.as_bytes()),
        )
        .unwrap();
        let again = gate.read(&path).unwrap();
        assert_ne!(
            again.fingerprint, read.fingerprint,
            "the signature is part of it"
        );
        gate.verify(&path, &again).unwrap();
        let signed = gate.admit(&policy, None).unwrap().unwrap();
        assert_eq!(signed.serial, 3);
    }

    #[test]
    fn the_recorded_serial_stops_a_rollback_across_restarts() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let gate = signed_gate(&key);
        let dir = tempfile::tempdir().unwrap();
        let (_, newer) = policy_at(dir.path(), 5);
        assert_eq!(gate.recorded_serial(&newer).unwrap(), None);
        let signed = gate.admit(&newer, None).unwrap().unwrap();
        gate.record_serial(&newer, &signed);
        let (_, older) = policy_at(dir.path(), 4);
        let floor = gate.recorded_serial(&older).unwrap();
        assert_eq!(floor.as_ref().map(|f| f.0), Some(5));
        let e = gate.admit(&older, floor).unwrap_err();
        assert!(
            matches!(
                e,
                Refused::Rollback {
                    serial: 4,
                    floor: 5,
                    ..
                }
            ),
            "{e}"
        );
        let (_, same) = policy_at(dir.path(), 5);
        let floor = gate.recorded_serial(&same).unwrap();
        gate.admit(&same, floor).unwrap();
    }

    #[test]
    fn a_signed_policy_without_serial_is_refused() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let p = crate::policy::parse("[gateway]\n", "p.toml").unwrap();
        let e = signed_gate(&key).admit(&p, None).unwrap_err();
        assert!(matches!(e, Refused::NoSerial { .. }), "{e}");
        Gate::default().admit(&p, None).unwrap();
    }
}
