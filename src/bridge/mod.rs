//! Bridging a 2026-07-28 client and the servers behind the gateway, beside the router: what a
//! stateless client carries between requests and what the gateway holds for it.
//!
//! - [`client_side`]: multi round-trip requests (`InputRequiredResult` / `inputResponses` /
//!   `requestState`), made from a 2025-era server's own requests or passed through from a
//!   2026-era server's, with the state the client carries always sealed by the gateway.
//! - [`tasks`]: task handles of the tasks extension, sealed the same way and routed back to
//!   the server that made the task; [`legacy_tasks`] runs them on a 2025-11-25 server's
//!   experimental tasks.
//! - [`seal`]: the signed, client-bound, expiring tokens both use.
//!
//! The router below neither knows nor asks which era a request came in: the bridge drives it
//! with ordinary requests, responses and sessions.

pub mod client_side;
mod exchange;
mod legacy_tasks;
mod results;
pub mod seal;
pub mod tasks;

pub use client_side::{Call, ClientSide};
pub use seal::Seal;
pub use tasks::Tasks;
