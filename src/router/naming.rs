//! Names the aggregated catalog shows to clients.
//!
//! Prefix mode exposes `server__tool`. Every exposed name matches `^[a-zA-Z0-9_-]{1,64}$` (what
//! the strictest clients accept); a name that would not is shortened deterministically: its
//! sanitized start, then `_` and eight hex digits of SHA-256 over server and original name, so
//! the same upstream name always maps to the same exposed name and two long names that share a
//! start still differ.

use sha2::{Digest, Sha256};

pub const SEPARATOR: &str = "__";
pub const MAX_LEN: usize = 64;

/// The exposed name for upstream `name` of `server`; `prefix` false means passthrough.
pub fn expose(server: &str, name: &str, prefix: bool) -> String {
    let candidate = if prefix {
        format!("{server}{SEPARATOR}{name}")
    } else {
        name.to_owned()
    };
    if is_valid(&candidate) {
        return candidate;
    }
    shorten(server, name, prefix)
}

pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn shorten(server: &str, name: &str, prefix: bool) -> String {
    let mut h = Sha256::new();
    h.update(server.as_bytes());
    h.update([0u8]);
    h.update(name.as_bytes());
    let digest = hex::encode(&h.finalize()[..4]);
    let head: String = if prefix {
        format!("{server}{SEPARATOR}{name}")
    } else {
        name.to_owned()
    }
    .chars()
    .map(|c| {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            c
        } else {
            '_'
        }
    })
    .take(MAX_LEN - 9)
    .collect();
    format!("{head}_{digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_plain_names() {
        assert_eq!(expose("git", "git_status", true), "git__git_status");
        assert_eq!(expose("git", "git_status", false), "git_status");
    }

    #[test]
    fn shortens_long_or_odd_names_deterministically() {
        let long = "a".repeat(80);
        let a = expose("srv", &long, true);
        assert!(is_valid(&a), "{a}");
        assert_eq!(a, expose("srv", &long, true));
        let mut other = long.clone();
        other.push('b');
        assert_ne!(a, expose("srv", &other, true));

        let dotted = expose("fs", "read.file", true);
        assert!(is_valid(&dotted), "{dotted}");
        assert!(dotted.starts_with("fs__read_file_"), "{dotted}");
        assert_ne!(dotted, expose("fs", "read_file", true));
    }
}
