//! A client's `allow`/`deny` patterns, compiled once per policy, and the question they answer:
//! may this client use item `item` of server `server`?
//!
//! Every capability kind is named the same way, `server__item`: a tool or prompt by its name
//! on its server (`time__get_current_time`), a resource by its URI (`fs__file:///docs/a.md`), a
//! resource template by its URI template (`fs__file:///docs/{name}`). `*` matches any run of
//! characters, `/` and `__` included. The part of a pattern before its first `__`, when it is a
//! server name (letters, digits, `-`, `*`), matches the server alone and the rest matches the
//! item alone, so `a__*` never reaches into server `a-b`; a pattern without `__` (`*`, `git*`)
//! matches the whole `server__item`. Deny wins; an empty allow list allows what is not denied.
//!
//! `[[clients.NAME.rules]]` entries ([`Conditional`]) add patterns with an effect (allow, deny,
//! confirm) and an optional `when` condition on the call; [`Rules::decide`](super::Decision)
//! in `decision.rs` weighs them.

use std::sync::Arc;
use std::time::Duration;

use super::condition::{ArgsUse, Condition};
use crate::policy::glob::{self, Joined};
use crate::policy::model::Effect;
use crate::policy::Client;

/// How long a `confirm` question waits when the policy does not say.
pub const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);
/// How many approval questions one client may have waiting when the policy does not say: a
/// person answers them one at a time, so more than a few means a runaway or hostile caller.
pub const DEFAULT_MAX_WAITING_APPROVALS: usize = 16;
/// Approval questions the gateway holds at once, for all clients together; past it questions
/// are refused rather than queued.
pub const WAITING_APPROVALS_IN_ALL: usize = 1024;

/// A compiled `*` glob.
#[derive(Debug, Clone, PartialEq)]
enum Glob {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
    Contains(Box<str>),
    General(Box<[u8]>),
}

impl Glob {
    fn compile(pattern: &str) -> Glob {
        let stars = pattern.bytes().filter(|&b| b == b'*').count();
        let (first, last) = (pattern.starts_with('*'), pattern.ends_with('*'));
        let inner = || pattern[1..pattern.len() - 1].into();
        match stars {
            0 => Glob::Exact(pattern.into()),
            _ if stars == pattern.len() => Glob::Any,
            1 if last => Glob::Prefix(pattern[..pattern.len() - 1].into()),
            1 if first => Glob::Suffix(pattern[1..].into()),
            2 if first && last => Glob::Contains(inner()),
            _ => Glob::General(pattern.as_bytes().into()),
        }
    }

    fn matches(&self, text: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(e) => **e == *text,
            Glob::Prefix(p) => text.starts_with(&**p),
            Glob::Suffix(s) => text.ends_with(&**s),
            Glob::Contains(c) => text.contains(&**c),
            Glob::General(p) => glob::matches(p, &Joined::one(text.as_bytes())),
        }
    }
}

/// One `allow`/`deny` entry.
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    /// `server__item`: each part matched on its own.
    Split {
        server: Glob,
        item: Glob,
    },
    /// No server part: matched against the whole `server__item`.
    Whole(Box<[u8]>),
    AnyName,
}

impl Pattern {
    fn compile(pattern: &str) -> Pattern {
        if let Some((server, item)) = pattern.split_once("__") {
            let server_glob = !server.is_empty()
                && server
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*');
            if server_glob {
                return Pattern::Split {
                    server: Glob::compile(server),
                    item: Glob::compile(item),
                };
            }
        }
        if pattern.bytes().all(|b| b == b'*') {
            return Pattern::AnyName;
        }
        Pattern::Whole(pattern.as_bytes().into())
    }

    fn matches(&self, server: &str, item: &str) -> bool {
        match self {
            Pattern::Split { server: s, item: i } => s.matches(server) && i.matches(item),
            Pattern::Whole(p) => glob::matches(p, &Joined::name(server, item)),
            Pattern::AnyName => true,
        }
    }
}

/// One `[[clients.NAME.rules]]` entry, compiled.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Conditional {
    pub index: usize,
    pub effect: Effect,
    patterns: Vec<Pattern>,
    pub when: Option<Arc<Condition>>,
    /// The rule as written, for refusals and records.
    pub text: Arc<str>,
}

impl Conditional {
    pub fn matches(&self, server: &str, item: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(server, item))
    }
}

/// One client's rules, compiled. Cheap to ask: a list of a thousand entries is filtered with
/// a few byte comparisons per entry and pattern, and nothing is allocated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rules {
    allow: Vec<Pattern>,
    deny: Vec<Pattern>,
    pub(super) rules: Vec<Conditional>,
    /// What of a call's arguments the conditions of `rules` can read, together.
    pub(super) args_use: ArgsUse,
    pub(super) confirm_timeout: Option<Duration>,
    pub(super) max_waiting_approvals: Option<usize>,
}

impl Rules {
    pub fn for_client(c: &Client) -> Rules {
        let mut r = Rules::compile(&c.allow, &c.deny);
        r.rules = c
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| Conditional {
                index,
                effect: rule.effect,
                patterns: rule.patterns.iter().map(|p| Pattern::compile(p)).collect(),
                when: rule.when.clone(),
                text: Arc::from(rule.text()),
            })
            .collect();
        for when in r.rules.iter().filter_map(|c| c.when.as_ref()) {
            r.args_use.union(when.args_use());
        }
        r.confirm_timeout = c.confirm_timeout;
        r.max_waiting_approvals = c.max_waiting_approvals;
        r
    }

    pub fn compile(allow: &[String], deny: &[String]) -> Rules {
        Rules {
            allow: allow.iter().map(|p| Pattern::compile(p)).collect(),
            deny: deny.iter().map(|p| Pattern::compile(p)).collect(),
            rules: Vec::new(),
            args_use: ArgsUse::default(),
            confirm_timeout: None,
            max_waiting_approvals: None,
        }
    }

    /// Rules that permit nothing: for a client the policy no longer names.
    pub fn nothing() -> Rules {
        Rules {
            allow: Vec::new(),
            deny: vec![Pattern::AnyName],
            rules: Vec::new(),
            args_use: ArgsUse::default(),
            confirm_timeout: None,
            max_waiting_approvals: None,
        }
    }

    /// How long a `confirm` question of this client waits for an answer.
    pub fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout.unwrap_or(DEFAULT_CONFIRM_TIMEOUT)
    }

    /// How many of this client's approval questions may wait at once.
    pub fn max_waiting_approvals(&self) -> usize {
        self.max_waiting_approvals
            .unwrap_or(DEFAULT_MAX_WAITING_APPROVALS)
    }

    /// Whether `server`'s `item` may be granted to some call: not denied outright, and named by
    /// an allow (flat, or a rule, conditional or not) unless nothing is named by any. Lists show
    /// what this says yes to; the decision on a call then weighs the conditions.
    pub fn permits(&self, server: &str, item: &str) -> bool {
        if self.deny.iter().any(|p| p.matches(server, item)) {
            return false;
        }
        let unconditional_deny = self
            .rules
            .iter()
            .any(|r| r.effect == Effect::Deny && r.when.is_none() && r.matches(server, item));
        if unconditional_deny {
            return false;
        }
        !self.names_allows()
            || self.allow.iter().any(|p| p.matches(server, item))
            || self
                .rules
                .iter()
                .any(|r| r.effect == Effect::Allow && r.matches(server, item))
    }

    /// Whether any allow pattern (flat or in a rule) exists: if none, what is not denied is
    /// allowed.
    pub(super) fn names_allows(&self) -> bool {
        !self.allow.is_empty() || self.rules.iter().any(|r| r.effect == Effect::Allow)
    }

    /// Whether a flat `deny` pattern names the item.
    pub(super) fn flat_denies(&self, server: &str, item: &str) -> bool {
        self.deny.iter().any(|p| p.matches(server, item))
    }

    /// Whether a flat `allow` pattern names the item.
    pub(super) fn flat_allows(&self, server: &str, item: &str) -> bool {
        self.allow.iter().any(|p| p.matches(server, item))
    }

    pub fn is_unrestricted(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty() && self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> Rules {
        let s = |v: &[&str]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        Rules::compile(&s(allow), &s(deny))
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let r = rules(&["time__*", "git__git_status"], &["time__convert*"]);
        assert!(r.permits("time", "get_current_time"));
        assert!(!r.permits("time", "convert_time"));
        assert!(r.permits("git", "git_status"));
        assert!(!r.permits("git", "git_commit"));
        assert!(Rules::default().permits("any", "thing"));
        assert!(!Rules::nothing().permits("any", "thing"));
    }

    #[test]
    fn uri_patterns_grant_exactly_their_resources() {
        let r = rules(&["fs__file:///workspace/docs/*"], &["fs__*.key"]);
        assert!(r.permits("fs", "file:///workspace/docs/a.md"));
        assert!(
            r.permits("fs", "file:///workspace/docs/{name}"),
            "the template"
        );
        assert!(!r.permits("fs", "file:///workspace/src/main.rs"));
        assert!(!r.permits("fs", "file:///workspace/docs/tls.key"));
        assert!(!r.permits("fs2", "file:///workspace/docs/a.md"));
    }

    #[test]
    fn the_server_part_matches_the_server_alone() {
        let r = rules(&["a__*"], &[]);
        assert!(r.permits("a", "x__y"));
        assert!(!r.permits("a-b", "x"));
        assert!(!r.permits("ab", "x"));
        let r = rules(&["*__read*"], &[]);
        assert!(r.permits("fs", "read_file"));
        assert!(!r.permits("fs", "write_file"));
        let r = rules(&["e*__x"], &[]);
        assert!(r.permits("ev", "x"));
        assert!(!r.permits("ev", "y__x"), "the item is matched on its own");
    }

    #[test]
    fn patterns_without_a_server_part_match_the_whole_name() {
        let r = rules(&["git*"], &[]);
        assert!(r.permits("git", "status"));
        assert!(r.permits("github", "issues"));
        assert!(!r.permits("time", "now"));
        let r = rules(&["*_status"], &[]);
        assert!(r.permits("git", "git_status"));
        assert!(!r.permits("git", "git_log"));
        let r = rules(&["*"], &[]);
        assert!(r.permits("x", "demo://anything"));
        let r = rules(&["g*t__status"], &[]);
        assert!(r.permits("git", "status"));
    }

    #[test]
    fn compiled_globs_agree_with_the_policy_glob() {
        let names = [
            ("git", "git_status"),
            ("ev", "demo://resource/static/document/a.md"),
            ("ev", "demo://resource/dynamic/text/{resourceId}"),
            ("time", "get_current_time"),
            ("a", "b__c"),
            ("x", ""),
        ];
        let patterns = [
            "*",
            "**",
            "git__*",
            "*__*",
            "ev__demo://*",
            "ev__*.md",
            "*time*",
            "ev__*dynamic*",
            "a__b__c",
            "a__b*",
            "x__",
            "*__git_*",
            "ev__demo://resource/*/text/*",
            "t*__*_time",
        ];
        for p in patterns {
            let compiled = Pattern::compile(p);
            for (s, i) in names {
                let whole = format!("{s}__{i}");
                assert_eq!(
                    compiled.matches(s, i),
                    crate::policy::glob_match(p, &whole),
                    "pattern {p} on {whole}"
                );
            }
        }
    }
}
