//! The guard's checks (see [`crate::guard`]) where the router applies them: a server's
//! definitions before the catalog adopts them, its answers before they are released.
//!
//! A definition with hidden characters is stripped (`sanitize = "strip"`) or withheld
//! (`"refuse"`, and always when the characters are in its name or URI, which route calls and
//! cannot change); a withheld one is refused on use with a message saying why. Each finding
//! about a definition is audited and counted once (a server lists again and again); a finding
//! in an answer goes into that call's `result` record and is counted each time.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::catalog::{Kind, Withheld};
use super::{Failure, Router};
use crate::audit::{AuditEvent, Kind as AuditKind};
use crate::guard::content::{self, Report, Verdict};
use crate::guard::sanitize::{self, Findings};
use crate::mcp::ErrorCode;
use crate::policy::Sanitize;

/// Findings remembered as already audited before the memory is cleared (a server that changes
/// its definitions endlessly is audited again, not remembered without bound).
const MAX_REMEMBERED: usize = 100_000;

/// What the router remembers about findings it has already reported.
#[derive(Default)]
pub(super) struct Reported {
    seen: Mutex<HashSet<String>>,
}

impl Reported {
    /// True the first time `key` is seen.
    pub(super) fn first(&self, key: String) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return true;
        };
        if seen.len() >= MAX_REMEMBERED {
            seen.clear();
        }
        seen.insert(key)
    }
}

/// The member that identifies an entry of `kind`.
pub(super) fn identifier(kind: Kind) -> &'static str {
    match kind {
        Kind::Tools | Kind::Prompts => "name",
        Kind::Resources => "uri",
        Kind::Templates => "uriTemplate",
    }
}

/// `tool`, `prompt`, `resource`, `resource template`, for messages.
pub(super) fn noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Tools => "tool",
        Kind::Prompts => "prompt",
        Kind::Resources => "resource",
        Kind::Templates => "resource template",
    }
}

impl Router {
    /// Hidden characters in `items` (one list of `server`): what stays (stripped) and what is
    /// withheld.
    pub(super) fn sanitize_definitions(
        &self,
        server: &Arc<str>,
        kind: Kind,
        items: Vec<Map<String, Value>>,
        withheld: &mut Vec<Withheld>,
    ) -> Vec<Map<String, Value>> {
        let mode = self.settings().sanitize_of(server);
        if mode == Sanitize::Off {
            return items;
        }
        let ident = identifier(kind);
        let mut kept = Vec::with_capacity(items.len());
        for item in items {
            let mut v = Value::Object(item);
            let (found, in_id) = sanitize::clean(&mut v, false, &[ident]);
            let Value::Object(item) = v else { continue };
            if found.is_empty() && in_id.is_empty() {
                kept.push(item);
                continue;
            }
            let id = item
                .get(ident)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let mut all = found;
            all.add(in_id);
            let withhold = mode == Sanitize::Refuse || !in_id.is_empty();
            self.report_sanitized(server, kind, &id, &item, all, withhold);
            if withhold {
                let where_ = if in_id.is_empty() {
                    "its definition"
                } else {
                    "its name"
                };
                withheld.push(Withheld {
                    reason: format!(
                        "{} `{id}` of server `{server}` is withheld: {where_} holds hidden characters ({}){}",
                        noun(kind),
                        all.describe(),
                        if mode == Sanitize::Refuse {
                            " and the policy says sanitize = \"refuse\""
                        } else {
                            ", which cannot be removed from a name without breaking calls"
                        }
                    ),
                    id,
                });
            } else {
                let mut v = Value::Object(item);
                sanitize::clean(&mut v, true, &[ident]);
                if let Value::Object(item) = v {
                    kept.push(item);
                }
            }
        }
        kept
    }

    fn report_sanitized(
        &self,
        server: &Arc<str>,
        kind: Kind,
        id: &str,
        raw: &Map<String, Value>,
        found: Findings,
        withhold: bool,
    ) {
        let digest = crate::guard::canonical::digest(raw);
        if !self.reported.first(format!(
            "sanitized\0{server}\0{}\0{id}\0{digest}",
            kind.result_key()
        )) {
            return;
        }
        let action = if withhold { "withheld" } else { "stripped" };
        tracing::warn!(server = %server, list = kind.result_key(), item = id, found = %found.describe(), action, "hidden characters in a server's definition");
        for (class, n) in found.by_class() {
            crate::metrics::global().sanitized(server, "definition", class, n);
        }
        let detail = json!({
            "list": kind.result_key(),
            "found": found.to_json(),
            "action": action,
            "sha256": digest,
        });
        self.audit.record_later(
            AuditEvent::new(AuditKind::Sanitized)
                .server(server.to_string())
                .tool(id)
                .detail(detail.to_string()),
        );
    }

    /// A server's answer as the client may see it: sanitized, echoed secrets redacted, or
    /// refused. The report goes into the call's `result` record.
    pub(super) fn check_answer(
        &self,
        server: &Arc<str>,
        result: Box<RawValue>,
    ) -> (Result<Box<RawValue>, Failure>, Report) {
        let settings = self.settings();
        let (verdict, report) =
            content::check_result(&result, settings.sanitize_of(server), &settings.injected);
        for (class, n) in report.sanitized.by_class() {
            crate::metrics::global().sanitized(server, "result", class, n);
        }
        if !report.echoed.is_empty() {
            crate::metrics::global().secret_echo(server);
            tracing::warn!(server = %server, secrets = ?report.echoed, "a server's answer echoed injected secrets; redacted");
        }
        let out = match verdict {
            Verdict::Unchanged => Ok(result),
            Verdict::Replaced(r) => Ok(r),
            Verdict::Refused(why) => Err(Failure::Gateway(
                ErrorCode::CONTENT_REFUSED,
                format!("server `{server}`: {why}"),
            )),
        };
        (out, report)
    }

    /// A server's `instructions` as clients may see them.
    pub(super) fn sanitize_instructions(&self, server: &Arc<str>, text: &str) -> Option<String> {
        let mode = self.settings().sanitize_of(server);
        let (clean, found) = sanitize::strip(text);
        if found.is_empty() || mode == Sanitize::Off {
            return Some(text.to_owned());
        }
        tracing::warn!(server = %server, found = %found.describe(), mode = mode.as_str(), "hidden characters in a server's instructions");
        for (class, n) in found.by_class() {
            crate::metrics::global().sanitized(server, "instructions", class, n);
        }
        (mode == Sanitize::Strip).then(|| clean.into_owned())
    }
}
