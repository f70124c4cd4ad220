//! JSON-RPC error codes used by the gateway, and the error object it sends.

use serde::Serialize;
use serde_json::value::RawValue;

/// Error codes: JSON-RPC's own, MCP's, and the gateway's (in the implementation-defined range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode(pub i64);

impl ErrorCode {
    pub const PARSE_ERROR: ErrorCode = ErrorCode(-32700);
    pub const INVALID_REQUEST: ErrorCode = ErrorCode(-32600);
    pub const METHOD_NOT_FOUND: ErrorCode = ErrorCode(-32601);
    pub const INVALID_PARAMS: ErrorCode = ErrorCode(-32602);
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(-32603);
    /// MCP: the request was cancelled.
    pub const REQUEST_CANCELLED: ErrorCode = ErrorCode(-32800);
    /// MCP (2025 era): resource not found. 2026-07-28 uses `INVALID_PARAMS` instead.
    pub const RESOURCE_NOT_FOUND: ErrorCode = ErrorCode(-32002);
    /// MCP 2026-07-28: the request metadata headers are missing or disagree with the body.
    pub const HEADER_MISMATCH: ErrorCode = ErrorCode(-32020);
    /// MCP 2026-07-28: answering needs a client capability the request did not declare.
    pub const MISSING_CLIENT_CAPABILITY: ErrorCode = ErrorCode(-32021);
    /// MCP 2026-07-28: the request's protocol revision is not served; `data.supported` lists
    /// what is.
    pub const UNSUPPORTED_PROTOCOL_VERSION: ErrorCode = ErrorCode(-32022);
    /// Gateway: the upstream server is not running or its connection broke.
    pub const UPSTREAM_UNAVAILABLE: ErrorCode = ErrorCode(-32010);
    /// Gateway: the upstream server did not answer in time.
    pub const UPSTREAM_TIMEOUT: ErrorCode = ErrorCode(-32011);
    /// Gateway: the session or the gateway is over a capacity limit.
    pub const OVER_CAPACITY: ErrorCode = ErrorCode(-32012);
    /// Gateway: the client may not use this tool.
    pub const FORBIDDEN: ErrorCode = ErrorCode(-32013);
    /// Gateway: a rate limit refused the call; `data.retryAfterSeconds` says when to retry.
    pub const RATE_LIMITED: ErrorCode = ErrorCode(-32014);
    /// Gateway: the server's concurrency cap and its queue are full.
    pub const BUSY: ErrorCode = ErrorCode(-32015);
    /// Gateway: the audit log cannot be written and the gateway is fail-closed.
    pub const AUDIT_UNAVAILABLE: ErrorCode = ErrorCode(-32016);
    /// Gateway: the tool, prompt or resource template is withheld: it differs from the lock
    /// file, or its definition holds hidden characters the policy refuses.
    pub const WITHHELD: ErrorCode = ErrorCode(-32030);
    /// Gateway: the server's answer held hidden characters and its policy says
    /// `sanitize = "refuse"`.
    pub const CONTENT_REFUSED: ErrorCode = ErrorCode(-32031);
    /// Gateway: a message is over `max_message_bytes`; `data` names the server, the method,
    /// the size and the limit.
    pub const MESSAGE_TOO_LARGE: ErrorCode = ErrorCode(-32017);
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: i64,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a serde_json::Value>,
}

/// Serializes a JSON-RPC error object (the value of a response's `error` member).
pub fn error_object(
    code: ErrorCode,
    message: &str,
    data: Option<&serde_json::Value>,
) -> Box<RawValue> {
    let obj = ErrorObject {
        code: code.0,
        message,
        data,
    };
    // Serializing a number and two strings cannot fail; `null` keeps the message well-formed anyway.
    serde_json::value::to_raw_value(&obj).unwrap_or_else(|_| RawValue::NULL.to_owned())
}
