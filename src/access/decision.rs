//! What a request asks a server for ([`Target`]) and the answer ([`Decision`]): a [`Permit`]
//! that the router must hand over to forward the request, or the reason for a refusal.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::rules::Rules;

/// One item of one capability kind of one server: what a forwarded request reaches, what a
/// list entry shows, what a notification is about. The rules match it as `server__item`
/// ([`Target::item`]); the kind decides which quotas apply and how a refusal reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `tools/call`, and a `tools/list` entry: the tool's name on its server.
    Tool { server: &'a str, name: &'a str },
    /// `prompts/get`, and a `prompts/list` entry.
    Prompt { server: &'a str, name: &'a str },
    /// `resources/read` of a concrete URI (listed, or reached through a template), a
    /// `resources/list` entry, a `notifications/resources/updated` for the URI.
    Resource { server: &'a str, uri: &'a str },
    /// A `resources/templates/list` entry: the template as written.
    Template {
        server: &'a str,
        uri_template: &'a str,
    },
    /// `completion/complete`: granted when what it completes is.
    Completion { server: &'a str, of: Completed<'a> },
    /// `resources/subscribe` and `resources/unsubscribe` of a URI.
    Subscription { server: &'a str, uri: &'a str },
}

/// What a completion request completes the arguments of (its `ref`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed<'a> {
    /// `ref/prompt`: the prompt's name on its server.
    Prompt(&'a str),
    /// `ref/resource`: a resource template or URI.
    Resource(&'a str),
}

impl<'a> Target<'a> {
    pub fn server(&self) -> &'a str {
        match *self {
            Target::Tool { server, .. }
            | Target::Prompt { server, .. }
            | Target::Resource { server, .. }
            | Target::Template { server, .. }
            | Target::Completion { server, .. }
            | Target::Subscription { server, .. } => server,
        }
    }

    /// What the rule patterns match after `server__`: a name, a URI or a URI template.
    pub fn item(&self) -> &'a str {
        match *self {
            Target::Tool { name, .. } | Target::Prompt { name, .. } => name,
            Target::Resource { uri, .. } | Target::Subscription { uri, .. } => uri,
            Target::Template { uri_template, .. } => uri_template,
            Target::Completion { of, .. } => match of {
                Completed::Prompt(name) => name,
                Completed::Resource(uri) => uri,
            },
        }
    }

    /// The concrete URI a read, subscription or resource completion names.
    fn uri(&self) -> Option<&'a str> {
        match *self {
            Target::Resource { uri, .. }
            | Target::Subscription { uri, .. }
            | Target::Completion {
                of: Completed::Resource(uri),
                ..
            } => Some(uri),
            Target::Tool { .. }
            | Target::Prompt { .. }
            | Target::Template { .. }
            | Target::Completion { .. } => None,
        }
    }

    /// The tool, for a tool call: what per-tool quotas count and the audit's `tool` field.
    pub fn tool(&self) -> Option<&'a str> {
        match *self {
            Target::Tool { name, .. } => Some(name),
            _ => None,
        }
    }

    /// What the client tried to do, for refusals: "call tool", "read resource", ...
    pub(super) fn action(&self) -> &'static str {
        match self {
            Target::Tool { .. } => "call tool",
            Target::Prompt { .. } => "get prompt",
            Target::Resource { .. } => "read resource",
            Target::Template { .. } => "use resource template",
            Target::Completion {
                of: Completed::Prompt(_),
                ..
            } => "complete arguments of prompt",
            Target::Completion {
                of: Completed::Resource(_),
                ..
            } => "complete arguments of resource",
            Target::Subscription { .. } => "subscribe to resource",
        }
    }
}

/// What the access decision is asked: a [`Target`], the method that reaches it, and the
/// call's arguments, which `when` conditions judge.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    pub target: Target<'a>,
    pub method: &'a str,
    /// `arguments` of a tool call or prompt, what a completion completes; `None` when the
    /// request has none (a read, a subscription, a list entry).
    pub args: Option<&'a Value>,
}

impl<'a> Question<'a> {
    pub fn new(target: Target<'a>, method: &'a str, args: Option<&'a Value>) -> Question<'a> {
        Question {
            target,
            method,
            args,
        }
    }

    /// `tool`, `prompt` and `uri` as conditions see them (empty when not this kind).
    pub(super) fn names(&self) -> (&'a str, &'a str, &'a str) {
        match self.target {
            Target::Tool { name, .. } => (name, "", ""),
            Target::Prompt { name, .. }
            | Target::Completion {
                of: Completed::Prompt(name),
                ..
            } => ("", name, ""),
            Target::Resource { uri, .. }
            | Target::Subscription { uri, .. }
            | Target::Completion {
                of: Completed::Resource(uri),
                ..
            } => ("", "", uri),
            Target::Template { uri_template, .. } => ("", "", uri_template),
        }
    }
}

/// The `[[clients.NAME.rules]]` entry that decided, for refusals, records and approvals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Its index in the client's `rules` (0-based, as in `rules[0]`).
    pub index: usize,
    /// The rule as written in one line.
    pub text: Arc<str>,
    /// Whether its `when` condition decided (it was true, false, or failed).
    pub by_condition: bool,
}

impl Matched {
    /// `rules[2] (deny = [...] when ...)`, for an audit record's `rule` field.
    pub fn describe(&self) -> String {
        format!("rules[{}] ({})", self.index, self.text)
    }
}

/// A permitted call that needs a person's approval before it is forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirm {
    pub rule: Matched,
    /// How long to wait for the answer.
    pub timeout: Duration,
    /// How many questions of this client may wait at once (this one included).
    pub max_waiting: usize,
}

/// The answer to "may this client do this?".
#[derive(Debug)]
pub enum Decision {
    Allow(Permit),
    Deny(Denied),
}

/// Proof that the access decision allowed one request to one server. Only this module makes
/// them; forwarding takes one by value, so a request cannot reach a server without a decision,
/// nor reach another server than the one decided on.
#[derive(Debug)]
pub struct Permit {
    server: Arc<str>,
    tool: Option<Box<str>>,
    item: Box<str>,
    confirm: Option<Confirm>,
}

impl Permit {
    pub(super) fn of(target: &Target) -> Permit {
        Permit {
            server: Arc::from(target.server()),
            tool: target.tool().map(Box::from),
            item: Box::from(target.item()),
            confirm: None,
        }
    }

    pub(super) fn confirmed_by(mut self, confirm: Option<Confirm>) -> Permit {
        self.confirm = confirm;
        self
    }

    /// The approval the call needs before it is forwarded, if a `confirm` rule applies.
    pub fn confirm(&self) -> Option<&Confirm> {
        self.confirm.as_ref()
    }

    /// The server the request may go to.
    pub fn server(&self) -> &Arc<str> {
        &self.server
    }

    pub fn tool(&self) -> Option<&str> {
        self.tool.as_deref()
    }

    /// The item decided on (a name, URI or template), for the audit record.
    pub fn item(&self) -> &str {
        &self.item
    }
}

/// Why a request was refused; the message names the client, the item and the policy keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Denied {
    pub reason: String,
    /// The rule that refused (or whose condition did not grant), when a rule entry decided.
    pub rule: Option<Matched>,
}

impl Denied {
    pub(super) fn new(reason: String) -> Denied {
        Denied { reason, rule: None }
    }
}

/// Whether `uri` has `.` or `..` path segments, literally or percent-encoded, also behind an
/// encoded `/` or a `\`: a server may resolve them (`file:///docs/../.ssh/id_rsa`) where a
/// pattern such as `fs__file:///docs/*` only sees text.
fn dot_segments(uri: &str) -> bool {
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(uri).collect();
    decoded
        .split(|&b| b == b'/' || b == b'\\')
        .any(|seg| seg == b"." || seg == b"..")
}

impl Rules {
    /// Whether `target` is granted: the list filter's question, without a permit. A client
    /// with rules never gets a URI with dot segments, which its patterns cannot judge.
    pub fn allows(&self, target: &Target) -> bool {
        if self.is_unrestricted() {
            return true;
        }
        !target.uri().is_some_and(dot_segments) && self.permits(target.server(), target.item())
    }

    /// The access decision for `client` (with its JWT claims, if any) under these rules.
    pub fn decide(&self, client: &str, claims: Option<&Value>, question: &Question) -> Decision {
        let target = &question.target;
        if self.is_unrestricted() {
            return Decision::Allow(Permit::of(target));
        }
        if target.uri().is_some_and(dot_segments) {
            return Decision::Deny(Denied::new(format!(
                    "client `{client}` may not {} `{}__{}`: its path has `.` or `..` segments, which rule patterns cannot judge; ask for the URI without them",
                    target.action(),
                    target.server(),
                target.item()
            )));
        }
        self.weigh(client, claims, question)
    }

    /// The refusal by the flat `allow`/`deny` lists.
    pub(super) fn refusal(client: &str, target: &Target) -> Denied {
        Denied::new(format!(
            "client `{client}` may not {} `{}__{}` (clients.{client}.allow/deny in the policy)",
            target.action(),
            target.server(),
            target.item()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str]) -> Rules {
        Rules::compile(
            &allow.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            &[],
        )
    }

    #[test]
    fn every_kind_is_decided_on_its_own_item() {
        let r = rules(&[
            "time__*",
            "ev__demo://resource/static/*",
            "ev__simple-prompt",
        ]);
        let ev = |t: Target| {
            matches!(
                r.decide("bob", None, &Question::new(t, "m", None)),
                Decision::Allow(_)
            )
        };
        assert!(ev(Target::Tool {
            server: "time",
            name: "now"
        }));
        assert!(!ev(Target::Tool {
            server: "ev",
            name: "echo"
        }));
        assert!(ev(Target::Prompt {
            server: "ev",
            name: "simple-prompt"
        }));
        assert!(!ev(Target::Prompt {
            server: "ev",
            name: "complex-prompt"
        }));
        assert!(ev(Target::Resource {
            server: "ev",
            uri: "demo://resource/static/document/a.md"
        }));
        assert!(!ev(Target::Resource {
            server: "ev",
            uri: "demo://resource/dynamic/text/1"
        }));
        assert!(!ev(Target::Template {
            server: "ev",
            uri_template: "demo://resource/dynamic/text/{id}"
        }));
        assert!(ev(Target::Completion {
            server: "ev",
            of: Completed::Prompt("simple-prompt")
        }));
        assert!(!ev(Target::Completion {
            server: "ev",
            of: Completed::Resource("demo://resource/dynamic/text/{id}")
        }));
        assert!(!ev(Target::Subscription {
            server: "ev",
            uri: "demo://resource/dynamic/text/1"
        }));
    }

    #[test]
    fn dot_segments_are_refused_to_clients_with_rules() {
        let r = rules(&["fs__file:///docs/*"]);
        let read = |uri| Target::Resource { server: "fs", uri };
        assert!(r.allows(&read("file:///docs/a.md")));
        for sneaky in [
            "file:///docs/../etc/passwd",
            "file:///docs/%2e%2e/etc/passwd",
            "file:///docs/..%2fetc/passwd",
            "file:///docs/..%5Cetc",
            "file:///docs/./a.md",
            "file:///docs/..",
        ] {
            assert!(!r.allows(&read(sneaky)), "{sneaky}");
            let Decision::Deny(d) = r.decide("bob", None, &Question::new(read(sneaky), "m", None))
            else {
                panic!("{sneaky}");
            };
            assert!(d.reason.contains("segments"), "{}", d.reason);
        }
        assert!(
            r.allows(&read("file:///docs/a..b/c.md")),
            "dots inside a name"
        );
        assert!(
            Rules::default().allows(&read("file:///docs/../x")),
            "an unrestricted client may read anything anyway"
        );
    }

    #[test]
    fn a_permit_names_the_server_and_a_refusal_says_why() {
        let r = rules(&["time__*"]);
        let tool = Target::Tool {
            server: "time",
            name: "now",
        };
        let Decision::Allow(p) = r.decide("bob", None, &Question::new(tool, "m", None)) else {
            panic!("allowed");
        };
        assert_eq!(
            (&**p.server(), p.tool(), p.item()),
            ("time", Some("now"), "now")
        );
        let read = Target::Resource {
            server: "ev",
            uri: "demo://x",
        };
        let Decision::Deny(d) = r.decide("bob", None, &Question::new(read, "m", None)) else {
            panic!("refused");
        };
        assert_eq!(
            d.reason,
            "client `bob` may not read resource `ev__demo://x` (clients.bob.allow/deny in the policy)"
        );
    }
}
