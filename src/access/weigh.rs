//! Weighing a client's rules on one call: the flat `allow`/`deny` lists and the
//! `[[clients.NAME.rules]]` entries with their `when` conditions.
//!
//! In this order:
//! 1. a flat `deny`, or a `deny` rule whose condition is true, refuses;
//! 2. a flat `allow`, or an `allow` rule whose condition is true, grants; when no allow names
//!    anything at all, what is not denied is granted;
//! 3. a granted call that a `confirm` rule (condition true) names needs a person's approval.
//!
//! A condition that cannot be evaluated on the call (a missing field, a wrong type, arguments
//! too large to judge) never grants: on a `deny` or `confirm` rule it refuses, on an `allow`
//! rule that rule does not grant, and the refusal says why.

use serde_json::Value;

use super::condition::{ArgsUse, Evaluated, Facts, Prepared};
use super::decision::{Confirm, Decision, Denied, Matched, Permit, Question};
use super::rules::{Conditional, Rules};
use crate::policy::model::Effect;

/// The facts of one call, made into CEL values on first need and then shared.
struct Lazy<'a> {
    facts: Facts<'a>,
    /// What of the arguments the client's conditions read: nothing else is converted.
    args_use: &'a ArgsUse,
    prepared: Option<Result<Prepared<'a>, String>>,
}

impl Lazy<'_> {
    /// The rule's condition on this call; a rule without one holds.
    fn eval(&mut self, rule: &Conditional) -> Evaluated {
        let Some(when) = &rule.when else {
            return Evaluated::True;
        };
        let (facts, args_use) = (self.facts, self.args_use);
        match self
            .prepared
            .get_or_insert_with(|| Prepared::reading(&facts, args_use))
        {
            Ok(p) => when.eval(p),
            Err(why) => Evaluated::Error(why.clone()),
        }
    }
}

fn matched(rule: &Conditional) -> Matched {
    Matched {
        index: rule.index,
        text: rule.text.clone(),
        by_condition: rule.when.is_some(),
    }
}

impl Rules {
    pub(super) fn weigh(
        &self,
        client: &str,
        claims: Option<&Value>,
        question: &Question,
    ) -> Decision {
        let target = &question.target;
        let (server, item) = (target.server(), target.item());
        if self.flat_denies(server, item) {
            return Decision::Deny(Rules::refusal(client, target));
        }
        let (tool, prompt, uri) = question.names();
        let mut lazy = Lazy {
            facts: Facts {
                client,
                claims,
                server,
                tool,
                prompt,
                uri,
                method: question.method,
                args: question.args,
            },
            args_use: &self.args_use,
            prepared: None,
        };
        let what = format!("{} `{server}__{item}`", target.action());
        let refuse = |rule: &Conditional, why: String| {
            Decision::Deny(Denied {
                reason: format!(
                    "client `{client}` may not {what}: {why} (clients.{client}.rules[{}]: {})",
                    rule.index, rule.text
                ),
                rule: Some(matched(rule)),
            })
        };
        let applicable = || self.rules.iter().filter(|r| r.matches(server, item));
        for rule in applicable().filter(|r| r.effect == Effect::Deny) {
            match lazy.eval(rule) {
                Evaluated::False => {}
                Evaluated::True if rule.when.is_some() => {
                    return refuse(rule, "a deny rule's condition is true".into())
                }
                Evaluated::True => return refuse(rule, "a deny rule names it".into()),
                Evaluated::Error(e) => {
                    return refuse(
                        rule,
                        format!("the condition of a deny rule could not be evaluated ({e}), so the call is refused"),
                    )
                }
            }
        }
        let mut granted = !self.names_allows() || self.flat_allows(server, item);
        // The first allow rule that named the item but did not grant, and why.
        let mut missed: Option<(&Conditional, String)> = None;
        if !granted {
            for rule in applicable().filter(|r| r.effect == Effect::Allow) {
                match lazy.eval(rule) {
                    Evaluated::True => {
                        granted = true;
                        break;
                    }
                    Evaluated::False => {
                        missed.get_or_insert((rule, "the allow rule's condition is false".into()));
                    }
                    Evaluated::Error(e) => {
                        missed.get_or_insert((
                            rule,
                            format!("the allow rule's condition could not be evaluated ({e})"),
                        ));
                    }
                }
            }
        }
        if !granted {
            return match missed {
                Some((rule, why)) => refuse(rule, why),
                None => Decision::Deny(Rules::refusal(client, target)),
            };
        }
        let mut confirm = None;
        for rule in applicable().filter(|r| r.effect == Effect::Confirm) {
            match lazy.eval(rule) {
                Evaluated::False => {}
                Evaluated::True => {
                    confirm = Some(Confirm {
                        rule: matched(rule),
                        timeout: self.confirm_timeout(),
                        max_waiting: self.max_waiting_approvals(),
                    });
                    break;
                }
                Evaluated::Error(e) => {
                    return refuse(
                        rule,
                        format!("the condition of a confirm rule could not be evaluated ({e}), so the call is refused"),
                    )
                }
            }
        }
        Decision::Allow(Permit::of(target).confirmed_by(confirm))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::{Decision, Question, Rules, Target};

    const SERVERS: &str = "[servers.git]\nruntime = \"process\"\ncommand = \"x\"\n[servers.fetch]\nruntime = \"process\"\ncommand = \"x\"\n";

    fn rules(client: &str) -> Rules {
        let src = format!("{SERVERS}[clients.bob]\n{client}");
        let p = crate::policy::parse(&src, "p.toml").unwrap_or_else(|e| panic!("{e}"));
        Rules::for_client(&p.clients["bob"])
    }

    fn tool<'a>(server: &'a str, name: &'a str) -> Target<'a> {
        Target::Tool { server, name }
    }

    fn decide(r: &Rules, t: Target, args: serde_json::Value) -> Decision {
        r.decide("bob", None, &Question::new(t, "tools/call", Some(&args)))
    }

    const RECIPES: &str = r#"
[[clients.bob.rules]]
allow = ["fetch__fetch"]
when = 'args.url.startsWith("https://docs.example.com/")'
[[clients.bob.rules]]
allow = ["git__*"]
[[clients.bob.rules]]
deny = ["git__git_push"]
when = 'args.branch in ["main", "release"]'
[[clients.bob.rules]]
confirm = ["git__git_reset"]
"#;

    #[test]
    fn allow_and_deny_follow_the_arguments() {
        let r = rules(RECIPES);
        let fetch = |url: &str| decide(&r, tool("fetch", "fetch"), json!({ "url": url }));
        assert!(matches!(
            fetch("https://docs.example.com/a"),
            Decision::Allow(_)
        ));
        let Decision::Deny(d) = fetch("https://evil.example/") else {
            panic!("allowed")
        };
        assert!(d.reason.contains("condition is false"), "{}", d.reason);
        let rule = d.rule.expect("the rule is named");
        assert_eq!((rule.index, rule.by_condition), (0, true));
        assert!(rule.text.contains("startsWith"), "{}", rule.text);
        let push = |branch: &str| decide(&r, tool("git", "git_push"), json!({ "branch": branch }));
        assert!(matches!(push("feature"), Decision::Allow(_)));
        let Decision::Deny(d) = push("main") else {
            panic!("allowed")
        };
        assert_eq!(d.rule.map(|m| m.index), Some(2));
        assert!(d.reason.contains("rules[2]"), "{}", d.reason);
        // A run-time error in a deny rule refuses.
        let Decision::Deny(d) = decide(&r, tool("git", "git_push"), json!({})) else {
            panic!("allowed")
        };
        assert!(d.reason.contains("could not be evaluated"), "{}", d.reason);
        // Lists show what some call may use.
        assert!(r.allows(&tool("fetch", "fetch")));
        assert!(r.allows(&tool("git", "git_push")));
    }

    #[test]
    fn confirm_rules_ask_before_a_granted_call() {
        let r = rules(RECIPES);
        let Decision::Allow(p) = decide(&r, tool("git", "git_reset"), json!({})) else {
            panic!("refused")
        };
        let c = p.confirm().expect("needs approval");
        assert_eq!(c.rule.index, 3);
        assert_eq!(c.timeout, std::time::Duration::from_secs(120));
        let Decision::Allow(p) = decide(&r, tool("git", "git_status"), json!({})) else {
            panic!("refused")
        };
        assert!(p.confirm().is_none());
        // confirm does not grant by itself.
        let r = rules("allow = [\"git__git_status\"]\nconfirm_timeout = \"5s\"\n[[clients.bob.rules]]\nconfirm = [\"git__git_reset\"]\n");
        assert!(matches!(
            decide(&r, tool("git", "git_reset"), json!({})),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn conditions_on_other_capabilities() {
        let read = |r: &Rules, uri| {
            let t = Target::Resource { server: "git", uri };
            r.decide("bob", None, &Question::new(t, "resources/read", None))
        };
        let r = rules("[[clients.bob.rules]]\ndeny = [\"git__*\"]\nwhen = 'uri.contains(\"secret\") || prompt == \"p\" || args.x == 1'\n");
        assert!(
            matches!(read(&r, "file:///a"), Decision::Deny(_)),
            "args.x is missing: fails closed"
        );
        let r = rules("[[clients.bob.rules]]\ndeny = [\"git__*\"]\nwhen = 'uri.contains(\"secret\") || prompt == \"p\"'\n");
        assert!(matches!(read(&r, "file:///a"), Decision::Allow(_)));
        assert!(matches!(read(&r, "file:///secret"), Decision::Deny(_)));
        let prompt = |name| {
            let args = json!({});
            matches!(
                r.decide(
                    "bob",
                    None,
                    &Question::new(
                        Target::Prompt {
                            server: "git",
                            name
                        },
                        "prompts/get",
                        Some(&args)
                    )
                ),
                Decision::Allow(_)
            )
        };
        assert!(prompt("q"));
        assert!(!prompt("p"));
    }
}
