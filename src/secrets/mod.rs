//! Secret values: read from their sources at the moment a server starts, never stored in the
//! policy, never logged.

use std::borrow::Cow;
use std::path::Path;

use crate::policy::SecretRef;

mod live;
pub use live::{live, LiveSecrets};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret `{name}`: environment variable `{var}` is not set on the gateway")]
    MissingEnv { name: String, var: String },
    #[error("secret `{name}`: cannot read file `{path}`: {reason}")]
    File {
        name: String,
        path: String,
        reason: String,
    },
    #[error("secret `{name}`: key `{key}` not found in dotenv file `{path}`")]
    MissingDotenvKey {
        name: String,
        path: String,
        key: String,
    },
}

/// Reads the value of secret `name` from its source.
pub fn resolve(name: &str, source: &SecretRef) -> Result<String, SecretError> {
    match source {
        SecretRef::Env(var) => std::env::var(var).map_err(|_| SecretError::MissingEnv {
            name: name.to_owned(),
            var: var.clone(),
        }),
        SecretRef::File(path) => {
            read(name, path).map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        }
        SecretRef::Dotenv { path, key } => {
            let text = read(name, path)?;
            dotenv_lookup(&text, key).ok_or_else(|| SecretError::MissingDotenvKey {
                name: name.to_owned(),
                path: path.display().to_string(),
                key: key.clone(),
            })
        }
    }
}

fn read(name: &str, path: &Path) -> Result<String, SecretError> {
    std::fs::read_to_string(path).map_err(|e| SecretError::File {
        name: name.to_owned(),
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Finds `KEY=value` in dotenv text (optional `export `, optional single or double quotes).
fn dotenv_lookup(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line.split_once('=')?;
        if k.trim() != key {
            return None;
        }
        let v = v.trim();
        let unquoted = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(v);
        Some(unquoted.to_owned())
    })
}

/// Every secret value `policy` names, as the audit log's redactor wants them: plain and as they
/// appear inside JSON text (call arguments). Secrets that cannot be read now are left out.
pub fn redaction_values(policy: &crate::policy::Policy) -> Vec<String> {
    let mut out = Vec::new();
    for server in policy.servers.values() {
        for (name, source) in &server.secrets {
            if let Ok(v) = resolve(name, source) {
                let escaped = serde_json::to_string(&v).unwrap_or_default();
                out.push(escaped.trim_matches('"').to_owned());
                out.push(v);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What the audit log scrubs: `values` (the policy's secret values, [`redaction_values`]), then
/// the credentials the gateway obtained at run time ([`live`]) from the moment they arrive.
pub fn audit_redactor(values: Vec<String>) -> impl Fn(&str) -> String + Send + Sync + 'static {
    let fixed = crate::audit::RedactStrings(values);
    move |text: &str| {
        let text = crate::audit::Redact::redact(&fixed, text);
        live().redact(&text).into_owned()
    }
}

/// A digest of the values `server`'s secrets have now (an unreadable one counts as its own
/// value): a reload restarts a server whose digest changed, so a rotated secret file takes
/// effect on SIGHUP. The values themselves are not kept.
pub fn fingerprint(server: &crate::policy::Server) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, source) in &server.secrets {
        h.update(name.len().to_le_bytes());
        h.update(name.as_bytes());
        match resolve(name, source) {
            Ok(v) => {
                h.update([1]);
                h.update(v.len().to_le_bytes());
                h.update(v.as_bytes());
            }
            Err(_) => h.update([0]),
        }
    }
    hex::encode(h.finalize())
}

/// Shortest value the redactor scrubs: shorter ones would shred ordinary log text and are not
/// credentials anyone should be using.
pub const MIN_REDACTED_LEN: usize = 4;

/// Scrubs loaded secret values out of text before it is logged.
#[derive(Default, Clone)]
pub struct Redactor {
    /// (value, replacement), longest value first so that a secret containing another is
    /// replaced whole.
    entries: Vec<(String, String)>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.entries.len())
            .finish()
    }
}

impl Redactor {
    /// Builds a redactor from `(NAME, value)` pairs.
    pub fn new<'a>(secrets: impl IntoIterator<Item = (&'a str, &'a str)>) -> Redactor {
        let mut entries: Vec<(String, String)> = secrets
            .into_iter()
            .filter(|(_, v)| v.len() >= MIN_REDACTED_LEN)
            .map(|(name, v)| (v.to_owned(), format!("[REDACTED:{name}]")))
            .collect();
        entries.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        entries.dedup_by(|a, b| a.0 == b.0);
        Redactor { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any secret value (or [`live`] one) occurs in `text`.
    pub fn occurs_in(&self, text: &str) -> bool {
        self.entries.iter().any(|(v, _)| text.contains(v.as_str())) || live().occurs_in(text)
    }

    /// Like [`Redactor::redact`], also naming the secrets that were found (each once).
    pub fn redact_naming<'t>(&self, text: &'t str) -> (Cow<'t, str>, Vec<String>) {
        let mut names = Vec::new();
        let mut out = Cow::Borrowed(text);
        for (value, replacement) in &self.entries {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), replacement));
                names.push(label_of(replacement));
            }
        }
        if let (Cow::Owned(scrubbed), found) = live().redact_naming(&out) {
            names.extend(found);
            out = Cow::Owned(scrubbed);
        }
        names.sort();
        names.dedup();
        (out, names)
    }

    /// `text` with every secret value (and every [`live`] one) replaced by `[REDACTED:NAME]`;
    /// borrowed when there was nothing to replace (the common case costs no allocation).
    pub fn redact<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut out = Cow::Borrowed(text);
        for (value, replacement) in &self.entries {
            if out.contains(value.as_str()) {
                out = Cow::Owned(out.replace(value.as_str(), replacement));
            }
        }
        // Tokens obtained at run time (OAuth) are scrubbed wherever policy secrets are.
        if let Cow::Owned(scrubbed) = live().redact(&out) {
            return Cow::Owned(scrubbed);
        }
        out
    }

    /// [`Redactor::redact`] for text whose end was cut off: a cut through a secret leaves only
    /// its beginning, which `redact` cannot recognise, so an end that begins a secret (at least
    /// [`CUT_PREFIX_MIN`] bytes of it) is replaced as well.
    pub fn redact_cut(&self, text: &str) -> String {
        let mut out = self.redact(text).into_owned();
        let entries = self.entries.iter().map(|(v, r)| (v.as_str(), r.as_str()));
        let ours = cut_secret(&out, entries).map(|(n, r)| (n, r.to_owned()));
        let theirs = live().cut_secret(&out);
        if let Some((n, replacement)) = ours.into_iter().chain(theirs).max_by_key(|(n, _)| *n) {
            out.truncate(out.len() - n);
            out.push_str(&replacement);
        }
        out
    }
}

/// Shorter beginnings of a secret at the end of cut text are left alone: they tell little, and
/// masking them would mangle ordinary text that happens to end the way a secret starts.
pub const CUT_PREFIX_MIN: usize = 4;

/// The longest end of `text` that is a proper beginning of one of the `(value, replacement)`
/// entries, as (its length in bytes, the replacement).
fn cut_secret<'a>(
    text: &str,
    entries: impl Iterator<Item = (&'a str, &'a str)>,
) -> Option<(usize, &'a str)> {
    entries
        .filter_map(|(value, replacement)| {
            (CUT_PREFIX_MIN..value.len())
                .rev()
                .filter(|&n| value.is_char_boundary(n))
                .find(|&n| text.ends_with(&value[..n]))
                .map(|n| (n, replacement))
        })
        .max_by_key(|(n, _)| *n)
}

/// `NAME` of a `[REDACTED:NAME]` replacement.
fn label_of(replacement: &str) -> String {
    replacement
        .strip_prefix("[REDACTED:")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(replacement)
        .to_owned()
}

/// Every secret value `policy` gives its servers, with its name: what a server's answer must
/// not echo. Secrets that cannot be read now are left out (the server cannot have them either).
pub fn injected(policy: &crate::policy::Policy) -> Redactor {
    let mut pairs = Vec::new();
    for server in policy.servers.values() {
        for (name, source) in &server.secrets {
            if let Ok(v) = resolve(name, source) {
                pairs.push((name.clone(), v));
            }
        }
    }
    Redactor::new(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_naming_names_each_secret_found_once() {
        let r = Redactor::new([("TOKEN", "ghp_abcdef123456"), ("OTHER", "zzzz-9999")]);
        let (out, names) = r.redact_naming("ghp_abcdef123456 and ghp_abcdef123456");
        assert_eq!(out, "[REDACTED:TOKEN] and [REDACTED:TOKEN]");
        assert_eq!(names, vec!["TOKEN".to_owned()]);
        assert!(r.occurs_in("x zzzz-9999 y"));
        assert!(!r.occurs_in("nothing"));
        assert!(r.redact_naming("nothing").1.is_empty());
    }

    #[test]
    fn a_cut_through_a_secret_does_not_leak_its_beginning() {
        let r = Redactor::new([("TOKEN", "ghp_abcdef123456")]);
        assert_eq!(r.redact_cut("key ghp_abcdef12"), "key [REDACTED:TOKEN]");
        assert_eq!(
            r.redact_cut("ghp_abcdef123456 then ghp_ab"),
            "[REDACTED:TOKEN] then [REDACTED:TOKEN]"
        );
        assert_eq!(
            r.redact_cut("ends with gh"),
            "ends with gh",
            "too short to mask"
        );
        assert_eq!(r.redact_cut("nothing here"), "nothing here");
        crate::secrets::live().remember("oauth:cut-test", "live-token-abcdefgh");
        assert_eq!(
            r.redact_cut("bearer live-token-ab"),
            "bearer [REDACTED:oauth:cut-test]"
        );
    }

    #[test]
    fn redactor_replaces_values_with_their_names() {
        let r = Redactor::new([
            ("TOKEN", "ghp_abcdef123456"),
            ("INNER", "abcdef"),
            ("SHORT", "abc"),
        ]);
        assert_eq!(
            r.redact("auth ghp_abcdef123456 then abcdef and abc"),
            "auth [REDACTED:TOKEN] then [REDACTED:INNER] and abc"
        );
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
        assert!(Redactor::new([]).is_empty());
        assert!(!format!("{r:?}").contains("ghp_"));
    }

    #[test]
    fn dotenv_handles_quotes_and_export() {
        let text = "# c\nA=1\nexport B=\"two words\"\nC='x=y'\n";
        assert_eq!(dotenv_lookup(text, "A").as_deref(), Some("1"));
        assert_eq!(dotenv_lookup(text, "B").as_deref(), Some("two words"));
        assert_eq!(dotenv_lookup(text, "C").as_deref(), Some("x=y"));
        assert_eq!(dotenv_lookup(text, "D"), None);
    }

    #[test]
    fn missing_env_names_the_secret_and_source() {
        let e = resolve(
            "TOKEN",
            &SecretRef::Env("PORTCULLIS_TEST_SURELY_UNSET".into()),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("TOKEN") && msg.contains("PORTCULLIS_TEST_SURELY_UNSET"),
            "{msg}"
        );
    }
}
