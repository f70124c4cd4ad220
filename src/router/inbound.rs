//! The one request model the router takes, whichever era the request came in.

use std::sync::Arc;

use crate::access::Identity;
use crate::mcp::{Request, RequestContext};

/// A client request as the router sees it. Downstream builds it from a 2025-era session (the
/// session's key, what its handshake settled) or from a stateless 2026-07-28 request (a key
/// for the request alone, what its `_meta` said, the era's `_meta` keys already lifted out of
/// `request.params`): the router, access and audit read the same fields either way.
#[derive(Debug)]
pub struct Inbound {
    pub identity: Identity,
    /// The router session the request belongs to: where messages related to it and the
    /// answers to server requests it causes are routed.
    pub session: Arc<str>,
    pub request: Request,
    pub context: RequestContext,
}
