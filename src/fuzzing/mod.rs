//! Fuzz harnesses: one function per cargo-fuzz target in `fuzz/`, each taking the fuzzer's
//! bytes. They live in the library so that the normal test suite replays every committed seed
//! and every past crash through exactly the code the fuzzer ran (tests/fuzz_inputs.rs).
//!
//! Besides "never panics on input", each harness checks properties a user would notice if they
//! broke (a parsed message re-serializes to itself, an answer never names another host, ...);
//! a broken property panics, which the fuzzer reports as a crash. Not part of the gateway's API.

mod audit;
mod dns;
mod guard;
mod http;
mod mcp;
mod modern;
mod openapi;
mod policy;
mod sse;

pub use audit::{audit_verify, SEED_LOG_KEY};
pub use dns::dns_query;
pub use guard::tool_definition;
pub use http::http_request;
pub use mcp::mcp_message;
pub use modern::modern_request;
pub use openapi::openapi_tools;
pub use policy::{policy_import, policy_toml};
pub use sse::sse_stream;

/// A harness: the fuzzer's bytes in, a panic for a crash.
pub type Harness = fn(&[u8]);

/// Every harness under the name of its fuzz target (`fuzz/fuzz_targets/NAME.rs`, seeds in
/// `fuzz/corpus/NAME/`, past crashes in `fuzz/regressions/NAME/`).
pub const TARGETS: &[(&str, Harness)] = &[
    ("mcp_message", mcp_message),
    ("http_request", http_request),
    ("modern_request", modern_request),
    ("sse_stream", sse_stream),
    ("policy_toml", policy_toml),
    ("policy_import", policy_import),
    ("dns_query", dns_query),
    ("audit_verify", audit_verify),
    ("tool_definition", tool_definition),
    ("openapi_tools", openapi_tools),
];
