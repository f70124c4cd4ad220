//! Validation of `[[clients.NAME.rules]]`: each entry has exactly one of `allow`, `deny` and
//! `confirm`, patterns like the client's own, and an optional `when` condition compiled here,
//! so that an expression that cannot run is reported at its line and column in the policy
//! file, with its own position in the expression.

use std::collections::BTreeSet;
use std::sync::Arc;

use toml::Spanned;

use super::model::{ClientRule, Effect};
use super::raw::{RawRule, Str};
use super::validate::Checker;
use crate::access::condition::Condition;
use crate::access::rules::WAITING_APPROVALS_IN_ALL;

/// Most rules one client may have.
const MAX_RULES: usize = 256;

impl Checker<'_> {
    pub(super) fn client_rules(
        &mut self,
        raw: &Option<Vec<Spanned<RawRule>>>,
        servers: &BTreeSet<String>,
    ) -> Vec<ClientRule> {
        let mut out = Vec::new();
        let rules = raw.as_deref().unwrap_or_default();
        if let Some(extra) = rules.get(MAX_RULES) {
            self.error(
                extra.span().start,
                format!("a client may have at most {MAX_RULES} rules; merge patterns that share an effect and a condition"),
            );
            return out;
        }
        for (index, rule) in rules.iter().enumerate() {
            let at = rule.span().start;
            let r = rule.get_ref();
            let given: Vec<(Effect, &Vec<Str>)> = [
                (Effect::Allow, &r.allow),
                (Effect::Deny, &r.deny),
                (Effect::Confirm, &r.confirm),
            ]
            .into_iter()
            .filter_map(|(e, v)| v.as_ref().map(|v| (e, v)))
            .collect();
            let (effect, patterns) = match given.as_slice() {
                [(effect, patterns)] => (*effect, *patterns),
                _ => {
                    self.error(at, format!("rules[{index}] needs exactly one of `allow`, `deny` or `confirm` (a list of `server__item` patterns); write one rule per effect"));
                    continue;
                }
            };
            if patterns.is_empty() {
                self.error(at, format!("rules[{index}] has an empty `{}` list; name at least one `server__item` pattern, like \"git__git_push\"", effect.key()));
                continue;
            }
            let checked = self.patterns(&Some(patterns.clone()), true);
            for p in patterns {
                self.pattern_server(p, servers);
            }
            let when = r.when.as_ref().and_then(|w| self.condition(w));
            out.push(ClientRule {
                effect,
                patterns: checked,
                when,
            });
        }
        out
    }

    /// `clients.NAME.max_waiting_approvals`: at least one (a client with `confirm` rules must
    /// be able to ask), at most what the gateway holds in all.
    pub(super) fn max_waiting_approvals(
        &mut self,
        client: &str,
        v: &Option<Spanned<u64>>,
    ) -> Option<usize> {
        let v = v.as_ref()?;
        let n = *v.get_ref();
        let most = WAITING_APPROVALS_IN_ALL as u64;
        if n == 0 || n > most {
            self.error(
                v.span().start,
                format!("client `{client}` has max_waiting_approvals = {n}; use 1 to {most} (how many of its approval questions may wait for an answer at once; the gateway holds at most {most} for all clients together)"),
            );
            return None;
        }
        usize::try_from(n).ok()
    }

    /// Compiles a `when` expression; an error points into the expression where it can.
    fn condition(&mut self, w: &Str) -> Option<Arc<Condition>> {
        match Condition::compile(w.get_ref()) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                let start = w.span().start;
                let (at, place) = match e.at {
                    Some((line, col)) => (
                        self.inside_string(w, line, col).unwrap_or(start),
                        format!(" (at {line}:{col} of the expression)"),
                    ),
                    None => (start, String::new()),
                };
                self.error(at, format!("`when`: {}{place}", e.message));
                None
            }
        }
    }

    /// The byte offset in the policy of the character at `line`:`col` of the string value `w`,
    /// when the string is written without escapes (so that its text is the value's).
    fn inside_string(&self, w: &Str, line: usize, col: usize) -> Option<usize> {
        let span = w.span();
        let written = self.source().get(span.clone())?;
        let value = w.get_ref();
        let body_start = ["'''", "\"\"\"", "'", "\""]
            .iter()
            .find(|q| written.starts_with(**q) && written.ends_with(**q))
            .map(|q| {
                let after = q.len();
                let newline = q.len() == 3 && written[after..].starts_with('\n');
                after + usize::from(newline)
            })?;
        if written.get(body_start..body_start + value.len())? != value.as_str() {
            return None;
        }
        let line_start: usize = value
            .split_inclusive('\n')
            .take(line.saturating_sub(1))
            .map(str::len)
            .sum();
        let col_bytes: usize = value
            .get(line_start..)?
            .chars()
            .take(col.saturating_sub(1))
            .map(char::len_utf8)
            .sum();
        Some(span.start + body_start + line_start + col_bytes)
    }
}
