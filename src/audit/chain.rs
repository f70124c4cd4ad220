//! Record hashing: the `prev` link of the hash chain and the Merkle leaves.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// `prev` of the very first record of a log.
pub const GENESIS: Hash = [0u8; 32];

/// The chain hash of a record: SHA-256 of its canonical bytes (the line without its newline).
pub fn record_hash(canonical: &[u8]) -> Hash {
    Sha256::digest(canonical).into()
}

/// RFC 9162 leaf hash: SHA-256(0x00 || canonical bytes).
pub fn leaf_hash(canonical: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(canonical);
    h.finalize().into()
}

/// RFC 9162 interior node hash: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

pub fn to_hex(h: &Hash) -> String {
    hex::encode(h)
}

/// Parses 64 lower-case hex digits.
pub fn from_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
