//! Protocol revisions and their negotiation.

/// Revisions this gateway serves, oldest first.
pub const SUPPORTED: [&str; 4] = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// The newest revision: what the gateway offers upstream and falls back to downstream.
pub const LATEST: &str = "2025-11-25";

/// What a Streamable HTTP request without `MCP-Protocol-Version` is assumed to speak (per spec).
pub const ASSUMED_WITHOUT_HEADER: &str = "2025-03-26";

pub fn is_supported(version: &str) -> bool {
    SUPPORTED.contains(&version)
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
}
