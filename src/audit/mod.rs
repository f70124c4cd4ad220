//! placeholder
pub mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod export;
pub mod config;
pub mod error;
pub mod keys;
pub mod merkle;
pub mod prove;
pub mod record;
mod recover;
pub mod segment;
pub mod sinks;
pub mod verify;
pub mod writer;

pub use config::AuditConfig;
pub use error::AuditError;
pub use record::{AuditEvent, Kind, Outcome, Redact, RedactStrings};
pub use writer::{AuditLog, Seq};
