//! Reserved `_meta` keys of the 2026-07-28 revision and the W3C trace-context keys.
//!
//! In the stateless era a request carries in `params._meta` what the initialize handshake used
//! to settle once per session (revision, capabilities, client identity) and what
//! `logging/setLevel` used to set; results carry the server's identity there.

/// The request's protocol revision (required).
pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// The client's capabilities for this request (required; `{}` means none).
pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
/// The client's name and version (optional, self-reported).
pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// The least severe log level the client wants for this request; none without it.
pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
/// In a result: the server's name and version.
pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// On a `subscriptions/listen` stream: the id of the listen request a message belongs to.
pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// W3C trace context and baggage, passed through unchanged.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";
pub const BAGGAGE: &str = "baggage";

/// The tasks extension's identifier in `capabilities.extensions`.
pub const TASKS_EXTENSION: &str = "io.modelcontextprotocol/tasks";

/// The keys of a request's `_meta` that describe the request rather than ask the server for
/// anything: the edge lifts them into the request's context and the server never sees them
/// as sent (an upstream encoder writes its own for the server's era).
pub const REQUEST_ENVELOPE: [&str; 4] = [
    PROTOCOL_VERSION,
    CLIENT_CAPABILITIES,
    CLIENT_INFO,
    LOG_LEVEL,
];
