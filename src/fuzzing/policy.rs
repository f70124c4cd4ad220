//! The policy: TOML -> validated policy with located diagnostics, and `policy import`.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use crate::egress::ruleset;
use crate::policy::diff::{diff, keep_running};
use crate::policy::{self, show, Policy, PolicyError};

const ORIGIN: &str = "fuzz.toml";

/// A policy file: either a valid policy that `policy show` and `firewall plan` can render and
/// that hot reload compares sanely, or diagnostics that point inside the file.
pub fn policy_toml(data: &[u8]) {
    // The loader reads files as UTF-8 and refuses anything else before parsing.
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    match policy::parse(src, ORIGIN) {
        Ok(p) => {
            let _ = show::render(&p);
            let _ = ruleset::plan(&p, &crate::egress::Names::default());
            check_reload(&p);
            check_rules(&p);
        }
        Err(e) => check_diagnostics(src, &e),
    }
}

/// Every client's rules (with their `when` conditions) decide sample calls on every server
/// without panicking, and a refusal by a rule names one of the client's rules.
fn check_rules(p: &Policy) {
    use crate::access::{Decision, Question, Rules, Target};
    let samples = [
        serde_json::json!({"branch": "main", "url": "https://docs.example.com/a", "n": 1, "l": [1, "x", null], "m": {"k": 1.5}}),
        serde_json::json!({"branch": 7, "text": "danger", "nested": [[[[]]]]}),
        serde_json::json!(null),
    ];
    for (name, client) in &p.clients {
        let rules = Rules::for_client(client);
        for server in p.servers.keys() {
            for args in &samples {
                for (target, method) in [
                    (
                        Target::Tool {
                            server,
                            name: "git_push",
                        },
                        "tools/call",
                    ),
                    (Target::Prompt { server, name: "p" }, "prompts/get"),
                    (
                        Target::Resource {
                            server,
                            uri: "file:///workspace/a",
                        },
                        "resources/read",
                    ),
                ] {
                    if let Decision::Deny(d) =
                        rules.decide(name, Some(args), &Question::new(target, method, Some(args)))
                    {
                        if let Some(m) = d.rule {
                            assert!(
                                m.index < client.rules.len(),
                                "a refusal names rule {} of {}",
                                m.index,
                                client.rules.len()
                            );
                        }
                    }
                }
            }
        }
    }
}

/// Reloading an unchanged file changes nothing (no server restarts, no session revoked), and a
/// change seen from either side adds what the other removes.
fn check_reload(p: &Policy) {
    let same = diff(p, p);
    assert!(
        same.is_empty(),
        "reloading the same policy changes {same:?}"
    );
    let mut copy = p.clone();
    let kept = keep_running(&mut copy, p);
    assert!(
        kept.is_empty(),
        "the same policy needs a restart for {kept:?}"
    );

    static DEFAULT: OnceLock<Option<Policy>> = OnceLock::new();
    let Some(default) = DEFAULT.get_or_init(|| policy::default_policy().ok()) else {
        return;
    };
    let forward = diff(default, p);
    let backward = diff(p, default);
    let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
    assert_eq!(set(&forward.servers.added), set(&backward.servers.removed));
    assert_eq!(set(&forward.servers.removed), set(&backward.servers.added));
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
