//! What a server answers, checked before the client sees it: hidden characters in text
//! (per the server's `sanitize` mode) and secrets the gateway injected that the answer echoes.
//!
//! Answers are passed through untouched unless there is something to change: printable ASCII
//! without a JSON escape cannot hold a hidden character, and there a secret can only appear
//! literally, so one scan of the raw text settles the common case. Anything else is parsed,
//! every string value is checked (stripped first, so that a secret split by zero-width
//! characters is still found), and the answer is serialized again only when it changed.

use serde_json::value::RawValue;
use serde_json::Value;

use super::sanitize::{self, Findings};
use crate::policy::Sanitize;
use crate::secrets::Redactor;

/// What checking one answer found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Hidden characters found (and removed, unless the answer was refused).
    pub sanitized: Findings,
    /// Names of the injected secrets the answer echoed (each once), redacted.
    pub echoed: Vec<String>,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.sanitized.is_empty() && self.echoed.is_empty()
    }

    /// The audit record's view: `{"sanitized": {...}, "secret_echo": [...]}`.
    pub fn to_json(&self) -> Value {
        let mut m = serde_json::Map::new();
        if !self.sanitized.is_empty() {
            m.insert("sanitized".into(), self.sanitized.to_json());
        }
        if !self.echoed.is_empty() {
            m.insert("secret_echo".into(), Value::from(self.echoed.clone()));
        }
        Value::Object(m)
    }
}

/// What becomes of an answer.
#[derive(Debug)]
pub enum Verdict {
    /// Forward the server's bytes as they are.
    Unchanged,
    /// Forward this instead (hidden characters stripped, secrets redacted).
    Replaced(Box<RawValue>),
    /// `sanitize = "refuse"` and the answer held hidden characters: the client gets an error
    /// saying this instead.
    Refused(String),
}

/// Checks a server's `result`. `secrets` are the values injected into servers (and obtained at
/// run time) that must not come back out.
pub fn check_result(result: &RawValue, mode: Sanitize, secrets: &Redactor) -> (Verdict, Report) {
    let text = result.get();
    if mode == Sanitize::Off && secrets.is_empty() && crate::secrets::live().is_empty() {
        return (Verdict::Unchanged, Report::default());
    }
    if is_literal(text) && !secrets.occurs_in(text) {
        return (Verdict::Unchanged, Report::default());
    }
    let Ok(mut value) = serde_json::from_str::<Value>(text) else {
        // Not ours to judge: the connection only hands over well-formed JSON.
        return (Verdict::Unchanged, Report::default());
    };
    let mut report = Report::default();
    let strip = mode == Sanitize::Strip;
    if mode != Sanitize::Off {
        let (found, _) = sanitize::clean(&mut value, strip, &[]);
        report.sanitized = found;
    }
    if mode == Sanitize::Refuse && !report.sanitized.is_empty() {
        let why = format!(
            "the server's answer holds hidden characters ({}), and its policy says sanitize = \"refuse\"",
            report.sanitized.describe()
        );
        return (Verdict::Refused(why), report);
    }
    redact_strings(&mut value, secrets, &mut report.echoed);
    report.echoed.sort();
    report.echoed.dedup();
    if report.is_empty() {
        return (Verdict::Unchanged, report);
    }
    (Verdict::Replaced(crate::mcp::to_raw(&value)), report)
}

/// Whether the JSON text is printable ASCII without escapes: its strings then read exactly as
/// written.
fn is_literal(text: &str) -> bool {
    text.bytes()
        .all(|b| ((0x20..0x7f).contains(&b) && b != b'\\') || matches!(b, b'\n' | b'\r' | b'\t'))
}

fn redact_strings(v: &mut Value, secrets: &Redactor, names: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            let (out, found) = secrets.redact_naming(s);
            if !found.is_empty() {
                *s = out.into_owned();
                names.extend(found);
            }
        }
        Value::Array(items) => {
            for item in items {
                redact_strings(item, secrets, names);
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                redact_strings(item, secrets, names);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    fn replaced(v: Verdict) -> Value {
        match v {
            Verdict::Replaced(r) => serde_json::from_str(r.get()).unwrap(),
            other => panic!("not replaced: {other:?}"),
        }
    }

    #[test]
    fn plain_answers_pass_untouched() {
        let secrets = Redactor::new([("API_KEY", "sk-live-0123456789")]);
        let r = raw(r#"{"content":[{"type":"text","text":"all fine"}]}"#);
        let (v, rep) = check_result(&r, Sanitize::Strip, &secrets);
        assert!(matches!(v, Verdict::Unchanged) && rep.is_empty());
        let r = raw(r#"{"content":[{"type":"text","text":"line\nnext é"}]}"#);
        assert!(matches!(
            check_result(&r, Sanitize::Strip, &secrets).0,
            Verdict::Unchanged
        ));
    }

    #[test]
    fn hidden_characters_are_stripped_or_refused() {
        let secrets = Redactor::new([]);
        let r = raw(r#"{"content":[{"type":"text","text":"ok\u001b[2Jgone\u200b"}]}"#);
        let (v, rep) = check_result(&r, Sanitize::Strip, &secrets);
        assert_eq!(replaced(v)["content"][0]["text"], "okgone");
        assert_eq!((rep.sanitized.ansi, rep.sanitized.zero_width), (1, 1));
        let (v, _) = check_result(&r, Sanitize::Refuse, &secrets);
        assert!(matches!(v, Verdict::Refused(m) if m.contains("1 ansi, 1 zero_width")));
        assert!(matches!(
            check_result(&r, Sanitize::Off, &secrets).0,
            Verdict::Unchanged
        ));
    }

    #[test]
    fn echoed_secrets_are_redacted_however_they_are_escaped() {
        let secrets = Redactor::new([("API_KEY", "sk-live-0123456789")]);
        for text in [
            r#"{"t":"key is sk-live-0123456789"}"#,
            r#"{"t":"key is sk-live-\u0030123456789"}"#,
            r#"{"t":"key is sk-live-0123\u200b456789"}"#,
            r#"{"nested":[{"deep":"sk-live-0123456789!"}],"t":"key is sk-live-0123456789"}"#,
        ] {
            let (v, rep) = check_result(&raw(text), Sanitize::Strip, &secrets);
            let out = replaced(v);
            assert!(!out.to_string().contains("0123456789"), "{text} -> {out}");
            assert_eq!(out["t"], "key is [REDACTED:API_KEY]", "{text}");
            assert_eq!(rep.echoed, vec!["API_KEY".to_owned()]);
        }
        // With sanitize off a zero-width split is not undone (documented), but plain echoes are.
        let (v, _) = check_result(
            &raw(r#"{"t":"sk-live-0123456789"}"#),
            Sanitize::Off,
            &secrets,
        );
        assert_eq!(replaced(v)["t"], "[REDACTED:API_KEY]");
    }
}
