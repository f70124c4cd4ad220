//! What the egress layer reports for the gateway to audit: one event type for every source
//! (the host table's watch, each sidecar agent's reports, the workspace agent's), so the
//! auditing side (`cli/egress_watch.rs`) never asks where an event came from.

use super::nflog::DeniedDest;
use super::sets::Pin;

/// What the gateway should audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EgressEvent {
    /// Packets from a server's sandbox were dropped since the last report, and where the
    /// logged ones were going (capped, see `nflog/tally.rs`; may name destinations whose
    /// packets an earlier report counted, when the log arrived after that count).
    Denied {
        server: String,
        packets: u64,
        destinations: Vec<DeniedDest>,
    },
    /// The table was found missing or altered and was programmed again.
    Restored { reason: String },
    /// The table was found missing or altered and could not be restored: these servers are
    /// without enforcement and must be stopped.
    RestoreFailed { servers: Vec<String>, error: String },
    /// Addresses were pinned for a server (sidecar mode only: the agent reports them).
    Pinned { server: String, pins: Vec<Pin> },
    /// A server's resolver refused `queries` questions over its DNS budget since its last
    /// report (at most one report per server per interval).
    DnsOverBudget {
        server: String,
        queries: u64,
        rate: crate::policy::Rate,
    },
}
