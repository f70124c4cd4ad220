//! Signed policies: an Ed25519 signature over the exact bytes of a policy file, kept beside it
//! as `FILE.sig`.
//!
//! Keys are the audit log's key files (`crate::audit::keys`): the private key is 64 hex digits
//! (mode 0600), `KEY.pub` the public key the same way; a key id is the first 8 bytes of SHA-256
//! of the public key, in hex. A signature file is one line, `ed25519 KEYID SIGNATURE` with the
//! 64-byte signature in hex; the key id is a hint for messages ("signed by another key"), the
//! signature alone decides. Use a policy key for policies only: the signature covers the bytes
//! as they are, with no context string, so a key that also signs other things could be made to
//! sign something that parses as a policy.

use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::audit::keys::{self, KeyError};

/// What a signature file's line starts with.
const TAG: &str = "ed25519";

/// Why a policy's signature is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("{sig} is missing: this gateway loads only signed policies (--policy-pubkey); sign {policy} with `portcullis policy sign --key KEY {policy}`")]
    Missing { policy: String, sig: String },
    #[error("{sig}: cannot read it: {source}")]
    Read { sig: String, source: std::io::Error },
    #[error("{sig}: not a policy signature ({why}); write it with `portcullis policy sign`")]
    Malformed { sig: String, why: &'static str },
    #[error("{sig} was made with key {signed_by}; this gateway trusts only key {trusted} (--policy-pubkey): have the holder of that key sign {policy}")]
    OtherKey {
        policy: String,
        sig: String,
        signed_by: String,
        trusted: String,
    },
    #[error("{sig} does not match {policy}: the file was changed after it was signed (key {key_id}); sign the new content with `portcullis policy sign --key KEY {policy}` (a file whose signature is being rewritten is tried again when {sig} changes)")]
    Mismatch {
        policy: String,
        sig: String,
        key_id: String,
    },
    #[error("policy public key: {0}")]
    Key(#[from] KeyError),
    #[error("policy public key {0}: neither 64 hex digits nor a readable key file")]
    KeyValue(String),
}

/// The signature file of the policy at `policy`: `FILE.sig`.
pub fn sig_path(policy: &Path) -> PathBuf {
    let mut s = policy.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// The text of a signature file for `bytes`.
pub fn sign(key: &SigningKey, bytes: &[u8]) -> String {
    let sig = key.sign(bytes);
    format!(
        "{TAG} {} {}\n",
        keys::key_id(&key.verifying_key()),
        hex::encode(sig.to_bytes())
    )
}

/// Checks that `sig_text` (the content of `sig`) is `key`'s signature of `bytes` (the content
/// of `policy`). Names only, for messages.
pub fn verify(
    key: &VerifyingKey,
    bytes: &[u8],
    sig_text: &str,
    policy: &Path,
    sig: &Path,
) -> Result<(), SignatureError> {
    let names = || (policy.display().to_string(), sig.display().to_string());
    let malformed = |why| SignatureError::Malformed {
        sig: sig.display().to_string(),
        why,
    };
    let mut words = sig_text.split_whitespace();
    if words.next() != Some(TAG) {
        return Err(malformed("it does not start with `ed25519`"));
    }
    let signed_by = words.next().ok_or_else(|| malformed("no key id"))?;
    let hex_sig = words.next().ok_or_else(|| malformed("no signature"))?;
    if words.next().is_some() {
        return Err(malformed("more than one line"));
    }
    let mut raw = [0u8; 64];
    hex::decode_to_slice(hex_sig, &mut raw)
        .map_err(|_| malformed("the signature is not 128 hex digits"))?;
    let trusted = keys::key_id(key);
    if signed_by != trusted {
        let (policy, sig) = names();
        return Err(SignatureError::OtherKey {
            policy,
            sig,
            signed_by: signed_by.to_owned(),
            trusted,
        });
    }
    key.verify(bytes, &Signature::from_bytes(&raw))
        .map_err(|_| {
            let (policy, sig) = names();
            SignatureError::Mismatch {
                policy,
                sig,
                key_id: trusted,
            }
        })
}

/// The trusted key from `--policy-pubkey`: 64 hex digits, or the path of a key file (returned,
/// so that who may write it can be checked).
pub fn read_pubkey(value: &str) -> Result<(VerifyingKey, Option<PathBuf>), SignatureError> {
    let v = value.trim();
    let mut raw = [0u8; 32];
    if v.len() == 64 && hex::decode_to_slice(v, &mut raw).is_ok() {
        let key =
            VerifyingKey::from_bytes(&raw).map_err(|_| SignatureError::KeyValue(v.to_owned()))?;
        return Ok((key, None));
    }
    let path = PathBuf::from(v);
    Ok((keys::read_verifying(&path)?, Some(path)))
}

/// The id of `key`, as signature files and audit records show it.
pub fn key_id(key: &VerifyingKey) -> String {
    keys::key_id(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn check(k: &VerifyingKey, bytes: &[u8], sig: &str) -> Result<(), SignatureError> {
        verify(k, bytes, sig, Path::new("p.toml"), Path::new("p.toml.sig"))
    }

    #[test]
    fn a_signature_verifies_only_the_exact_bytes_under_its_key() {
        let k = key(1);
        let sig = sign(&k, b"[gateway]\nserial = 1\n");
        check(&k.verifying_key(), b"[gateway]\nserial = 1\n", &sig).unwrap();
        let e = check(&k.verifying_key(), b"[gateway]\nserial = 1\n ", &sig).unwrap_err();
        assert!(matches!(e, SignatureError::Mismatch { .. }), "{e}");
        let e = check(&key(2).verifying_key(), b"[gateway]\nserial = 1\n", &sig).unwrap_err();
        assert!(matches!(e, SignatureError::OtherKey { .. }), "{e}");
        assert!(e.to_string().contains(&key_id(&k.verifying_key())), "{e}");
    }

    #[test]
    fn a_key_id_that_lies_does_not_help() {
        let (good, evil) = (key(1), key(2));
        let forged = sign(&evil, b"x").replace(
            &key_id(&evil.verifying_key()),
            &key_id(&good.verifying_key()),
        );
        let e = check(&good.verifying_key(), b"x", &forged).unwrap_err();
        assert!(matches!(e, SignatureError::Mismatch { .. }), "{e}");
    }

    #[test]
    fn malformed_files_are_named() {
        let k = key(1).verifying_key();
        for text in [
            "",
            "rsa a b",
            "ed25519 abc",
            "ed25519 abc zz",
            "ed25519 a b c",
        ] {
            let e = check(&k, b"x", text).unwrap_err();
            assert!(matches!(e, SignatureError::Malformed { .. }), "{text}: {e}");
        }
    }

    #[test]
    fn a_pubkey_is_hex_or_a_file() {
        let k = key(3).verifying_key();
        let (got, path) = read_pubkey(&hex::encode(k.as_bytes())).unwrap();
        assert_eq!((got, path), (k, None));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("policy.pub");
        std::fs::write(&f, format!("{}\n", hex::encode(k.as_bytes()))).unwrap();
        let (got, path) = read_pubkey(f.to_str().unwrap()).unwrap();
        assert_eq!((got, path), (k, Some(f)));
        assert!(read_pubkey("/nonexistent/key.pub").is_err());
    }
}
