//! Protocol revisions and their negotiation.

/// Revisions served through the initialize handshake (the 2025 era, with sessions), oldest first.
pub const SUPPORTED: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The newest handshake revision: what the gateway offers upstream and answers an `initialize`
/// that asks for a revision it does not know (2026-07-28 included: it has no handshake).
pub const LATEST: &str = "2025-11-25";

/// Revisions served statelessly (every request carries its revision, capabilities and client
/// info in `_meta`; no initialize, no session), newest first.
pub const MODERN: [&str; 1] = ["2026-07-28"];

/// Every revision this gateway serves, newest first: what `server/discover` advertises and what
/// an `UnsupportedProtocolVersionError` lists, so that a dual-era client can pick either era.
pub const SERVED: [&str; 5] = [
    "2026-07-28",
    "2025-11-25",
    "2025-06-18",
    "2025-03-26",
    "2024-11-05",
];

/// What a Streamable HTTP request without `MCP-Protocol-Version` is assumed to speak (per spec).
pub const ASSUMED_WITHOUT_HEADER: &str = "2025-03-26";

pub fn is_supported(version: &str) -> bool {
    SUPPORTED.contains(&version)
}

/// Whether `version` is a stateless (2026-07-28 or later) revision this gateway serves.
pub fn is_modern(version: &str) -> bool {
    MODERN.contains(&version)
}

/// The served modern revision equal to `version`, as a static string.
pub fn modern(version: &str) -> Option<&'static str> {
    MODERN.iter().find(|v| **v == version).copied()
}

/// The revision answered to a client that asked for `requested`: the same one when supported,
/// otherwise the latest (the client then decides whether it can continue).
pub fn negotiate(requested: &str) -> &'static str {
    SUPPORTED
        .iter()
        .find(|v| **v == requested)
        .copied()
        .unwrap_or(LATEST)
}

/// Whether `version` allows JSON-RPC batches (only 2025-03-26 did).
pub fn allows_batches(version: &str) -> bool {
    version == "2025-03-26"
}

/// Whether `version` expects the SSE priming event (an id with empty data) at stream start.
pub fn wants_priming_event(version: &str) -> bool {
    version >= "2025-11-25"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_echoes_known_and_falls_back_to_latest() {
        assert_eq!(negotiate("2025-06-18"), "2025-06-18");
        assert_eq!(negotiate("2024-11-05"), "2024-11-05");
        assert_eq!(negotiate("1999-01-01"), LATEST);
        assert_eq!(negotiate("2026-07-28"), LATEST);
    }

    #[test]
    fn every_served_revision_is_of_one_era() {
        for v in SERVED {
            assert!(is_supported(v) != is_modern(v), "{v}");
        }
        assert_eq!(SERVED.len(), SUPPORTED.len() + MODERN.len());
    }
}
