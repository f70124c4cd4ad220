//! Credentials the gateway obtains while it runs (OAuth access and refresh tokens).
//!
//! Policy secrets are known when a server starts, so each redactor is built with them; these
//! arrive later and change, so every redactor (logs, error text, the audit log) also consults
//! this process-wide set.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::RwLock;

use super::MIN_REDACTED_LEN;

/// Values kept at most. Old tokens stay redacted for a while after they were replaced (a late
/// log line may still carry one); beyond this many the oldest are forgotten.
const MAX_VALUES: usize = 512;

pub struct LiveSecrets {
    /// (value, replacement), newest last.
    entries: RwLock<VecDeque<(String, String)>>,
}

static LIVE: LiveSecrets = LiveSecrets {
    entries: RwLock::new(VecDeque::new()),
};

/// The process-wide set.
pub fn live() -> &'static LiveSecrets {
    &LIVE
}

impl LiveSecrets {
    /// Adds `value` (and its JSON-escaped form, as it would appear inside JSON text) under
    /// `label`; it is replaced by `[REDACTED:label]` from now on.
    pub fn remember(&self, label: &str, value: &str) {
        if value.len() < MIN_REDACTED_LEN {
            return;
        }
        let escaped = serde_json::to_string(value).unwrap_or_default();
        let escaped = escaped
            .strip_prefix('"')
            .and_then(|e| e.strip_suffix('"'))
            .unwrap_or_default();
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        for v in [value, escaped] {
            if v.len() >= MIN_REDACTED_LEN && !entries.iter().any(|(e, _)| e == v) {
                entries.push_back((v.to_owned(), format!("[REDACTED:{label}]")));
            }
        }
        while entries.len() > MAX_VALUES {
            entries.pop_front();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.read().map(|e| e.is_empty()).unwrap_or(true)
    }

    /// Whether any remembered value occurs in `text`.
    pub fn occurs_in(&self, text: &str) -> bool {
        self.entries
            .read()
            .map(|e| e.iter().any(|(v, _)| text.contains(v.as_str())))
            .unwrap_or(false)
    }

    /// Like [`LiveSecrets::redact`], also naming the labels found.
    pub fn redact_naming<'t>(&self, text: &'t str) -> (Cow<'t, str>, Vec<String>) {
        let mut names = Vec::new();
        let mut out = Cow::Borrowed(text);
        let Ok(entries) = self.entries.read() else {
            return (out, names);
        };
        for (value, replacement) in entries.iter() {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), replacement));
                names.push(super::label_of(replacement));
            }
        }
        (out, names)
    }

    /// `text` with every remembered value replaced; borrowed when nothing matched.
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        let Ok(entries) = self.entries.read() else {
            return out;
        };
        for (value, replacement) in entries.iter() {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), replacement));
            }
        }
        out
    }

    /// The longest end of cut `text` that begins a remembered value (see
    /// [`super::Redactor::redact_cut`]), as (its length in bytes, the replacement).
    pub fn cut_secret(&self, text: &str) -> Option<(usize, String)> {
        let entries = self.entries.read().ok()?;
        super::cut_secret(text, entries.iter().map(|(v, r)| (v.as_str(), r.as_str())))
            .map(|(n, r)| (n, r.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_values_are_redacted_plain_and_json_escaped() {
        let live = LiveSecrets {
            entries: RwLock::new(VecDeque::new()),
        };
        live.remember("oauth:s", "tok\"en-123");
        live.remember("oauth:s", "abc");
        assert_eq!(live.redact("a tok\"en-123 b"), "a [REDACTED:oauth:s] b");
        assert_eq!(
            live.redact(r#"{"x":"tok\"en-123"}"#),
            r#"{"x":"[REDACTED:oauth:s]"}"#
        );
        assert!(matches!(live.redact("abc"), Cow::Borrowed(_)));
        for i in 0..MAX_VALUES + 10 {
            live.remember("n", &format!("value-{i:05}"));
        }
        assert_eq!(live.redact("value-00000"), "value-00000");
        assert_eq!(
            live.redact(&format!("value-{:05}", MAX_VALUES + 9)),
            "[REDACTED:n]"
        );
    }
}
