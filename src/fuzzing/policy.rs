//! The policy: TOML -> validated policy with located diagnostics, and `policy import`.

use crate::egress::ruleset;
use crate::policy::{self, show, PolicyError};

const ORIGIN: &str = "fuzz.toml";

/// A policy file: either a valid policy that `policy show` and `firewall plan` can render, or
/// diagnostics that point inside the file.
pub fn policy_toml(data: &[u8]) {
    // The loader reads files as UTF-8 and refuses anything else before parsing.
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match policy::parse(src, ORIGIN) {
        Ok(p) => {
            let _ = show::render(&p);
            let _ = ruleset::plan(&p);
        }
        Err(e) => check_diagnostics(src, &e),
    }
}

/// A Claude `.mcp.json` or `servers.json`: its import is a policy that passes `parse`, as
/// `policy import` promises.
pub fn policy_import(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match policy::import(src, ".mcp.json") {
        Ok(toml) => {
            if let Err(e) = policy::parse(&toml, ORIGIN) {
                panic!("the imported policy does not parse:\n{e}\n--- imported:\n{toml}");
            }
        }
        Err(e) => check_diagnostics(src, &e),
    }
}

/// Every diagnostic has a message and, when it has a position, one inside `src`.
fn check_diagnostics(src: &str, e: &PolicyError) {
    let text = e.to_string();
    assert!(!text.is_empty());
    let diagnostics = e.diagnostics();
    assert!(!diagnostics.is_empty(), "an error without a diagnostic");
    let lines: Vec<&str> = src.split('\n').collect();
    for d in diagnostics {
        assert!(!d.message.is_empty(), "a diagnostic without a message");
        if d.line == 0 {
            continue;
        }
        let Some(line) = lines.get(d.line - 1) else {
            panic!(
                "{d}: line {} is past the end ({} lines)",
                d.line,
                lines.len()
            );
        };
        let width = line.chars().count() + 1;
        assert!(
            d.column >= 1 && d.column <= width,
            "{d}: column {} is outside line {} ({} characters)",
            d.column,
            d.line,
            width - 1
        );
    }
}
