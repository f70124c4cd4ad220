//! `audit verify`: reading records back from segment files and checking the chain, the
//! canonical form and the signed checkpoints.

use std::sync::OnceLock;

use ed25519_dalek::{SigningKey, VerifyingKey};

use crate::audit::verify::verify_segments;

/// The seed of the checkpoint key the committed seed logs are signed with (fuzz/seeds/README.md).
/// A fuzzing key: it protects nothing.
pub const SEED_LOG_KEY: [u8; 32] = [0x42; 32];

fn key() -> &'static VerifyingKey {
    static KEY: OnceLock<VerifyingKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::from_bytes(&SEED_LOG_KEY).verifying_key())
}

/// Input: the log's segments `audit-000001.jsonl`, `audit-000002.jsonl`, ... separated by a
/// 0x1e byte (which a canonical record never contains unescaped).
pub fn audit_verify(data: &[u8]) {
    let segments: Vec<(u64, &[u8])> = data
        .split(|b| *b == 0x1e)
        .zip(1u64..)
        .map(|(bytes, index)| (index, bytes))
        .collect();
    let with_key = verify_segments(&segments, Some(key()));
    let without_key = verify_segments(&segments, None);
    match (&with_key, &without_key) {
        (Ok(signed), Ok(unsigned)) => {
            assert!(signed.records > 0);
            assert_eq!(signed.records, unsigned.records);
            assert_eq!(signed.segments, segments.len());
            assert!(signed.uncovered <= signed.records);
        }
        // A key adds checks; it never makes a bad log pass.
        (Ok(_), Err(f)) => panic!("verifies with the key but not without: {f}"),
        (Err(_), _) => {}
    }
}
