//! The policy: model, parsing, validation with file:line:column errors, import, display.

mod diagnose;
pub mod diff;
pub mod egress;
pub mod error;
pub mod import;
pub mod location;
pub mod model;
mod raw;
pub mod show;
pub mod signature;
pub mod trust;
pub mod units;
mod validate;
mod validate_access;
mod validate_oauth;

pub use error::{Diagnostic, Diagnostics, PolicyError};
pub use import::import;
pub use model::*;
pub use validate::{is_server_name, parse_secret_ref, secret_refs, validate_host_port};

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
    let raw = raw::from_str(src).map_err(|(e, path)| {
        PolicyError::Invalid(Diagnostics(vec![diagnose::from_toml_error(
            src, origin, &e, &path,
        )]))
    })?;
    validate::validate(raw, src, origin, base).map_err(|d| PolicyError::Invalid(Diagnostics(d)))
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
