//! Supply-chain and content guardrails: pure checks the router applies to what servers send
//! before any client sees it.
//!
//! - [`sanitize`]: hidden characters (ANSI escapes and other controls, zero-width, bidi
//!   controls, the Unicode Tags block) in definitions and answers, stripped or refused per
//!   server (`[servers.X] sanitize`).
//! - [`content`]: an answer checked as a whole: sanitized, and any secret the gateway injected
//!   that it echoes redacted.
//! - [`canonical`]: the canonical form and hash of a tool, prompt or resource template
//!   definition, which the lock file approves.
//!
//! Nothing here does I/O or keeps state: the router decides what to withhold, audits and
//! counts.

pub mod canonical;
pub mod content;
pub mod lock;
pub mod review;
pub mod sanitize;
