//! The policy: model, parsing, validation, import. (Parsing lands with the policy work.)

pub mod model;
pub use model::*;

/// A policy that could not be loaded: what is wrong and where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

/// The default policy shipped inside the binary.
pub const DEFAULT_POLICY_TOML: &str = include_str!("../../policy/default.toml");

/// Parses and validates a policy document; `origin` names it in error messages.
pub fn parse(_src: &str, origin: &str) -> Result<Policy, PolicyError> {
    Err(PolicyError(format!("{origin}: policy parsing is not implemented yet")))
}

/// Reads, parses and validates a policy file.
pub fn load(path: &std::path::Path) -> Result<Policy, PolicyError> {
    let src = std::fs::read_to_string(path)
        .map_err(|e| PolicyError(format!("{}: cannot read policy: {e}", path.display())))?;
    parse(&src, &path.display().to_string())
}
