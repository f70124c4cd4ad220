//! Signed checkpoints: what is signed, and checking a signature.
//!
//! The signed message is the ASCII text
//! `portcullis-checkpoint-v1\n<log_id>\n<tree_size>\n<root hex>\n`; `sig` is the 64-byte Ed25519
//! signature in lower-case hex. A checkpoint record at `seq = n` covers records `0..n`, so its
//! `tree_size` equals its own `seq`.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use super::chain::{to_hex, Hash};

pub fn message(log_id: &str, tree_size: u64, root: &Hash) -> Vec<u8> {
    format!(
        "portcullis-checkpoint-v1\n{log_id}\n{tree_size}\n{}\n",
        to_hex(root)
    )
    .into_bytes()
}

pub fn sign(key: &SigningKey, log_id: &str, tree_size: u64, root: &Hash) -> String {
    hex::encode(key.sign(&message(log_id, tree_size, root)).to_bytes())
}

pub fn verify(
    key: &VerifyingKey,
    log_id: &str,
    tree_size: u64,
    root: &Hash,
    sig_hex: &str,
) -> bool {
    let mut sig = [0u8; 64];
    if hex::decode_to_slice(sig_hex, &mut sig).is_err() {
        return false;
    }
    key.verify(
        &message(log_id, tree_size, root),
        &Signature::from_bytes(&sig),
    )
    .is_ok()
}
