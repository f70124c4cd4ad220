//! The `[clients.NAME]` sections of `portcullis policy show`: token fingerprints, what each
//! client may call, its rules in words, and its quotas with the defaults filled in (and the
//! implicit anonymous client when no credentials are configured).

use std::fmt::Write;

use super::model::*;
use super::show::list;
use super::units::format_rate;

/// Every client's section of policy `p`.
pub(super) fn lines(o: &mut String, p: &Policy) {
    for c in p.clients.values() {
        let _ = writeln!(o, "\n[clients.{}]", c.name);
        let _ = writeln!(
            o,
            "  token_sha256          {}",
            c.token_sha256
                .as_deref()
                .unwrap_or("(none: cannot authenticate)")
        );
        let _ = writeln!(
            o,
            "  allow                 {}",
            if c.allow.is_empty() {
                let by_rules = c
                    .rules
                    .iter()
                    .any(|r| r.effect == super::model::Effect::Allow);
                if by_rules {
                    "(none here: only what the allow rules below grant)".into()
                } else {
                    "all".into()
                }
            } else {
                c.allow.join(", ")
            }
        );
        let _ = writeln!(o, "  deny                  {}", list(&c.deny));
        for (i, r) in c.rules.iter().enumerate() {
            let _ = writeln!(o, "  rules[{i}]              {}", explain_rule(r, c));
        }
        quota_lines(o, p, &c.name);
    }
    if !p.requires_auth() && !p.clients.contains_key("anonymous") {
        let _ = writeln!(
            o,
            "\n[clients.anonymous]  (implicit: every caller, as no credentials are configured; one shared quota)"
        );
        quota_lines(o, p, "anonymous");
    }
}

/// A `[[clients.NAME.rules]]` entry in words.
fn explain_rule(r: &super::model::ClientRule, c: &super::model::Client) -> String {
    use super::model::Effect;
    let what = r.patterns.join(", ");
    let mut t = match r.effect {
        Effect::Allow => format!("grants {what}"),
        Effect::Deny => format!("refuses {what}"),
        Effect::Confirm => format!(
            "asks the caller's person to approve {what} (when granted) and waits up to {}s (at most {} of this client's questions wait at once; more are refused)",
            c.confirm_timeout
                .unwrap_or(crate::access::rules::DEFAULT_CONFIRM_TIMEOUT)
                .as_secs(),
            c.max_waiting_approvals
                .unwrap_or(crate::access::rules::DEFAULT_MAX_WAITING_APPROVALS)
        ),
    };
    match &r.when {
        Some(w) => t.push_str(&format!(
            " only when `{}` is true; a call on which it cannot be evaluated is refused",
            w.source()
        )),
        None => t.push_str(" on every call"),
    }
    t
}

/// A client's session quota, session rate and call-slot weight, defaults filled in.
fn quota_lines(o: &mut String, p: &Policy, client: &str) {
    let q = p.client_quotas(client);
    let rate = p
        .clients
        .get(client)
        .and_then(|c| c.rate)
        .map_or("unlimited".to_string(), |r| {
            format!("{} (burst {})", format_rate(r.count, r.per), r.burst)
        });
    let _ = writeln!(o, "  rate                  {rate}");
    let _ = writeln!(
        o,
        "  max_sessions          {}{}",
        q.max_sessions,
        if q.max_sessions_set {
            ""
        } else {
            " (default: 256, at most half of gateway.max_sessions)"
        }
    );
    let r = q.session_rate;
    let _ = writeln!(
        o,
        "  session_rate          {} (burst {})",
        format_rate(r.count, r.per),
        r.burst
    );
    let _ = writeln!(o, "  weight                {}", q.weight);
}
