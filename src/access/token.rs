//! Static bearer tokens: only their SHA-256 is in the policy; comparison is constant-time.

use base64::Engine;
use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of a token, as written in `token_sha256`.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Compares two byte strings in time that depends only on their length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh token: 256 bits from the OS CSPRNG, URL-safe, with a `pcs_` prefix that secret
/// scanners can match.
pub fn generate() -> Result<String, getrandom::Error> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw)?;
    Ok(format!(
        "pcs_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_sha256sum() {
        // printf %s abc | sha256sum
        assert_eq!(
            hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generated_tokens_differ_and_compare() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("pcs_") && a.len() > 40);
        assert!(constant_time_eq(a.as_bytes(), a.as_bytes()));
        assert!(!constant_time_eq(a.as_bytes(), b.as_bytes()));
        assert!(!constant_time_eq(b"a", b"ab"));
    }
}
