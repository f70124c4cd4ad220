//! MCP vocabulary: JSON-RPC 2.0 framing that keeps unparsed bytes, method names, protocol
//! revisions, the request context both eras decode into, and the 2026-07-28 `_meta` keys and
//! request metadata headers.

pub mod context;
pub mod error;
pub mod head;
pub mod headers;
pub mod message;
pub mod meta;
pub mod methods;
pub mod protocol;
pub mod result;

pub use context::{ClientCaps, LogLevel, RequestContext, TraceContext};
pub use error::ErrorCode;
pub use message::{
    error_response_bytes, error_response_with_data, is_notification, to_raw, Body, Id, Message,
    Notification, ParseError, Request, Response,
};
