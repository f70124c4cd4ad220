//! The policy: model, parsing, validation with file:line:column errors, import, display.

mod diagnose;
pub mod diff;
pub mod egress;
pub mod error;
pub mod fleet;
pub mod glob;
pub mod import;
pub mod location;
pub mod model;
mod model_audit;
mod model_server;
pub mod quotas;
mod raw;
pub mod show;
mod show_clients;
mod show_server;
mod show_telemetry;
pub mod signature;
pub mod trust;
pub mod units;
mod validate;
mod validate_access;
mod validate_audit;
mod validate_egress;
mod validate_gateway;
mod validate_guard;
mod validate_oauth;
mod validate_openapi;
mod validate_remote;
mod validate_rules;
mod validate_server;
mod validate_telemetry;

pub use error::{Diagnostic, Diagnostics, PolicyError};
pub use fleet::{OnStoreError, QuotaStore, SharedLimits};
pub use glob::glob_match;
pub use import::import;
pub use model::*;
pub use quotas::ClientQuotas;
pub use validate::{
    is_server_name, parse_secret_ref, secret_refs, validate_host_port, DEFAULT_SERVER_LOG_RATE,
    RESERVED_WORKSPACE,
};

use std::path::Path;

/// The default policy shipped inside the binary.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../policy/default.toml");

/// How the embedded default policy is named in messages.
pub const DEFAULT_POLICY_ORIGIN: &str = "<embedded default>";

/// Parses and validates a policy document; `origin` names it in error messages. Relative paths
/// stay relative (use [`load`] to resolve them against the file's directory).
pub fn parse(src: &str, origin: &str) -> Result<Policy, PolicyError> {
    parse_in(src, origin, None)
}

/// Like [`parse`], resolving relative paths (cwd, mount sources, `file:` and `dotenv:` secrets)
/// against `base`.
pub fn parse_in(src: &str, origin: &str, base: Option<&Path>) -> Result<Policy, PolicyError> {
    let (raw, text) = raw_collecting_unknown_keys(src, origin)?;
    validate::validate(raw, &text, origin, base).map_err(|d| PolicyError::Invalid(Diagnostics(d)))
}

/// Unknown keys reported in one run, not one per edit: serde stops at the first, so each one
/// that stands alone on its line is commented out (bytes replaced one for one, so every later
/// location stays right) and the document read again. An unknown key elsewhere (a table
/// header, inside an inline table) or any other error ends the search, with what was found.
/// Validation runs only on a document without unknown keys: a misspelt key is usually a
/// required one, and "missing `command`" next to "unknown key `comand`" says nothing new.
fn raw_collecting_unknown_keys(
    src: &str,
    origin: &str,
) -> Result<(raw::RawPolicy, String), PolicyError> {
    /// More unknown keys than this in one file is not a typo; stop reporting.
    const MAX_UNKNOWN: usize = 50;
    let mut text = src.to_owned();
    let mut diags = Vec::new();
    for _ in 0..=MAX_UNKNOWN {
        let (e, path) = match raw::from_str(&text) {
            Ok(raw) if diags.is_empty() => return Ok((raw, text)),
            Ok(_) => break,
            Err(err) => err,
        };
        let unknown = e.message().starts_with("unknown field `");
        if !unknown && !diags.is_empty() {
            // Possibly a consequence of a key taken out; what was found is already useful.
            break;
        }
        diags.push(diagnose::from_toml_error(&text, origin, &e, &path));
        match (unknown, e.span()) {
            (true, Some(span)) => match comment_out_key_line(&text, span.start) {
                Some(next) => text = next,
                None => break,
            },
            _ => break,
        }
    }
    Err(PolicyError::Invalid(Diagnostics(diags)))
}

/// `text` with the `key = value` line whose key starts at byte `at` turned into a comment, or
/// `None` when the key is not the first thing on its line or its value continues past it.
fn comment_out_key_line(text: &str, at: usize) -> Option<String> {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    if !text[line_start..at].trim().is_empty() {
        return None;
    }
    let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = &text[at..line_end];
    let value = line.split_once('=')?.1.trim_start();
    // Arrays, inline tables and multi-line strings may span lines: leave those alone.
    if value.starts_with('[')
        || value.starts_with('{')
        || value.starts_with("\"\"\"")
        || value.starts_with("'''")
    {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..at]);
    out.push('#');
    // The key's first character may be several bytes long: pad to keep every offset.
    let first = text[at..].chars().next()?;
    out.push_str(&" ".repeat(first.len_utf8() - 1));
    out.push_str(&text[at + first.len_utf8()..]);
    Some(out)
}

/// Reads, parses and validates a policy file; relative paths in it are relative to its directory.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    load_text(path).map(|(policy, _)| policy)
}

/// Like [`load`], also returning the text that was read (what a hot reload fingerprints).
pub fn load_text(path: &Path) -> Result<(Policy, String), PolicyError> {
    let src = read(path)?;
    let policy = parse_file(path, &src)?;
    Ok((policy, src))
}

/// The text of the policy file at `path`.
pub fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Parses and validates `src`, read from the file at `path`: relative paths in it are relative
/// to the file's directory.
pub fn parse_file(path: &Path, src: &str) -> Result<Policy, PolicyError> {
    let base = path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    });
    parse_in(src, &path.display().to_string(), base)
}

/// The embedded default policy, validated.
pub fn default_policy() -> Result<Policy, PolicyError> {
    parse(DEFAULT_POLICY_TOML, DEFAULT_POLICY_ORIGIN)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_rules;
#[cfg(test)]
mod tests_workspace;
