//! MCP vocabulary: JSON-RPC 2.0 framing that keeps unparsed bytes, method names, protocol revisions.

pub mod error;
pub mod head;
pub mod message;
pub mod methods;
pub mod protocol;

pub use error::ErrorCode;
pub use message::{
    error_response_bytes, error_response_with_data, is_notification, to_raw, Body, Id, Message,
    Notification, ParseError, Request, Response,
};
