//! The tamper-evident audit log: records, canonical JSON, the hash chain, signed Merkle
//! checkpoints, the group-commit writer, crash recovery, verification, proofs and SIEM sinks.
//!
//! # Format (version 1)
//!
//! A log is a directory of segments `audit-000001.jsonl`, `audit-000002.jsonl`, ... Each line is
//! one record: a JSON object serialized canonically per RFC 8785 (JCS: members sorted by UTF-16
//! code units, no whitespace, minimal string escaping, non-ASCII unescaped) and a `\n`. Records
//! hold only strings and integers; integers stay within +/-(2^53-1), so the ECMAScript number
//! formatting JCS asks for is plain decimal. A line that is not exactly its own canonical form
//! fails verification.
//!
//! The segment being written has zeros written 1 MiB ahead of its records (so that an
//! `fdatasync` rarely has to write the file's size). Records are JSON
//! text and never contain a zero byte, so the first zero byte of a segment ends its records;
//! readers stop there. Only zeros may follow: any other byte after them fails verification
//! (records zeroed out, or a crash that tore a write). The writer cuts the zeros when it closes
//! a segment or stops cleanly, and at start-up after a crash.
//!
//! Every record has:
//!
//! | field | meaning |
//! |---|---|
//! | `v` | format version, `1` |
//! | `log_id` | 32 hex digits, random, fixed for the life of the log |
//! | `seq` | 0, 1, 2, ... across all segments, no gaps |
//! | `ts` | RFC 3339 UTC with milliseconds, `2026-11-24T16:53:51.123Z` (writer's clock; not used for ordering) |
//! | `prev` | hex SHA-256 of the previous record's line (without `\n`); 64 zeros for `seq` 0 |
//! | `kind` | `call`, `result`, `denied`, `egress_denied`, `policy_load`, `policy_reload`, `container_start`, `container_stop`, `firewall`, `tamper`, `gateway_start`, `gateway_stop`, `catalog_unstable`, `sanitized`, `lock_mismatch`, and, written by the log itself, `segment_start`, `checkpoint`, `key_rotation`, `recovery` |
//!
//! Optional event fields ([`AuditEvent`]): `client`, `session`, `server`, `image_digest`,
//! `container`, `method`, `tool`, `args_sha256` (hex SHA-256 of the raw argument JSON),
//! `args` (the argument JSON text, secrets redacted, only with `record_arguments = true` and a
//! redactor installed), `outcome` (`ok`, `error` + `error_code`, `denied_auth`, `rate_limited`,
//! `egress_denied`, `rejected` for a refused policy reload), `latency_us`, `bytes_in`,
//! `bytes_out`, `detail` (redacted), `policy_serial` (the signed policy's serial in force, on
//! every record the router writes, in signed mode only).
//!
//! `catalog_unstable` (a server sent more list changes than `unstable_list_changes` within
//! `unstable_window`) has `server` and `detail` = JSON `{"count", "lists", "limit", "window_ms"}`.
//!
//! `sanitized` (hidden characters in a server's tool, prompt, resource or template definition,
//! written once per definition) has `server`, `tool` (the item's name or URI) and `detail` =
//! JSON `{"list", "found": {"ansi", "zero_width", "bidi", "tags"}, "action": "stripped" |
//! "withheld"}`. An answer's findings go into its `result` record's `detail`:
//! `{"sanitized": {...}, "secret_echo": [secret names]}`.
//!
//! `lock_mismatch` (a definition or image that differs from the lock file, written once per
//! difference) has `server`, `tool` and `detail` = JSON `{"list", "change": "added" | "changed"
//! | "image", "locked", "found", "mode", "action": "withheld" | "allowed" | "not_started"}` with
//! `locked`/`found` the hashes (or image digests) before and after.
//!
//! Log-written records: `segment_start` (`segment` = its file name, `prev_segment`) is the first
//! record of every segment; `checkpoint` (`tree_size`, `root`, `key_id`, `sig`) covers records
//! `0..tree_size` with `tree_size == seq`; `recovery` (`detail`, and for a cut torn record
//! `segment`, `offset`, `truncated_bytes`) follows a start-up after a crash; `key_rotation`
//! (`tree_size`, `root`, `key_id`, `next_key_id`, `next_public_key`, `sig`) is a checkpoint
//! that also certifies the key signing from the next record on (see [`epochs`]).
//!
//! # Checkpoints
//!
//! The Merkle tree is RFC 9162's over every record of the log: leaf = SHA-256(0x00 || line),
//! node = SHA-256(0x01 || left || right). The signature is Ed25519 over the text
//! `portcullis-checkpoint-v1\n{log_id}\n{tree_size}\n{root}\n`; `key_id` is the first 8 bytes
//! (16 hex digits) of SHA-256 of the 32-byte public key. Checkpoints are written every
//! `checkpoint_every` records, `checkpoint_interval` after the first record not yet covered
//! (an idle log writes none), when a segment is closed, and at clean shutdown, so a cleanly
//! stopped log always ends with a checkpoint. Key files: see [`keys`].
//!
//! # Durability
//!
//! [`AuditLog::append`] resolves after the record is written and, for `fsync = "group"`, after
//! the one `fdatasync` of the batch that holds it (`"always"`: a `fdatasync` per record;
//! `"none"`: after `write(2)`). Batches are whatever was queued when the writer thread woke, at
//! most `max_batch`. The queue is bounded (`queue_capacity`): appenders wait asynchronously for
//! room. The writer does blocking I/O on its own thread, never on the async runtime.
//!
//! # Key epochs
//!
//! Each checkpoint key signs for one epoch (`[audit] key_epoch`, default 1 h), then certifies the
//! next key in a `key_rotation` record and is destroyed ([`epochs`]). Verification starts from
//! the log's first public key and follows the certificates, so root on the host in epoch N,
//! holding only epoch N's key, can re-sign nothing sealed in an earlier epoch.
//!
//! # What verification proves, and what it cannot
//!
//! `audit verify` detects any change, removal, insertion or reordering of records before the
//! last record, and any change to a checkpoint or a record a checkpoint covers; with the first
//! public key, any seal of an earlier epoch re-signed with a later key. Cutting records off the
//! end of the log, back to a record boundary, and a rewrite of the current epoch (whose key is on
//! the host) are visible only against seals held elsewhere: `--witness` (a witness directory, or
//! what a SIEM stored, imported with `audit witness-import`; see [`witness`]) or `--expect-until`
//! (the auditor knows until when the gateway ran). Likewise the fields of the very last record
//! that its checkpoint signature does not cover (its `ts`) are protected only once a later
//! record links to it.

pub mod anchor;
pub mod canonical;
pub mod chain;
pub mod checkpoint;
pub mod config;
pub mod epochs;
pub mod error;
pub mod export;
pub mod keys;
mod log_dir;
pub mod merkle;
pub mod prove;
pub mod record;
mod recover;
pub mod report;
pub mod retention;
pub mod segment;
pub mod sinks;
mod syncer;
pub mod verify;
pub mod witness;
mod write_thread;
pub mod writer;

pub use config::AuditConfig;
pub use error::AuditError;
pub use record::{AuditEvent, EgressDest, Kind, Outcome, Redact, RedactStrings};
pub use writer::{AuditLog, Seq};
