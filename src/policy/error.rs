//! Policy errors: every problem carries the file, line and column a human needs to fix it.

use std::fmt;

/// One problem found in a policy, at a place in its source text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name (or `<embedded default>`) as given to the parser.
    pub origin: String,
    /// 1-based; `0` when the problem has no position (for example an unreadable file).
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// What is wrong, then `; ` and how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: error: {}", self.origin, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: error: {}",
                self.origin, self.line, self.column, self.message
            )
        }
    }
}

/// Every diagnostic of one failed load, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// A policy that could not be loaded: what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: error: cannot read policy: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Syntax, type or semantic errors; syntax errors stop at the first, semantic ones are all listed.
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl PolicyError {
    /// The located problems (empty for a read error).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            PolicyError::Read { .. } => &[],
            PolicyError::Invalid(d) => &d.0,
        }
    }
}
