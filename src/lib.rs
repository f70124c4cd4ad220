//! Portcullis: a security-hardened MCP gateway.
//!
//! Layers, each knowing only the one below it:
//! `downstream` (HTTP transport, sessions, decoding either protocol era) -> `bridge` (what a
//! stateless 2026-07-28 client carries between requests) -> `router` (catalog, naming, id
//! remapping) -> `upstream` (one connection to one MCP server) -> `sandbox` (how a server runs).
//! `policy` and `mcp` are shared vocabulary.

pub mod access;
pub mod audit;
pub mod bridge;
pub mod cli;
pub mod dial;
pub mod downstream;
pub mod egress;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod guard;
pub mod instance;
pub mod mcp;
pub mod metrics;
pub mod openapi;
pub mod policy;
pub mod reload;
pub mod router;
pub mod sandbox;
pub mod secrets;
pub mod telemetry;
pub mod upstream;
