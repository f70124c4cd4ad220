//! What the gateway tells the log ([`AuditEvent`]) and how a record is laid out.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Format version written in `v`.
pub const FORMAT_VERSION: u64 = 1;

/// What happened. Kinds marked "log only" are written by the log itself and refused by
/// [`crate::audit::AuditLog::append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Call,
    Result,
    Denied,
    EgressDenied,
    PolicyLoad,
    PolicyReload,
    ContainerStart,
    ContainerStop,
    Firewall,
    Tamper,
    GatewayStart,
    GatewayStop,
    CatalogUnstable,
    /// Hidden characters found in a server's definition (stripped or withheld).
    Sanitized,
    /// A definition or image that differs from the lock file.
    LockMismatch,
    /// Log only.
    Recovery,
    /// Log only.
    Checkpoint,
    /// Log only.
    SegmentStart,
    /// Log only: a checkpoint by the current epoch's key that certifies the next one.
    KeyRotation,
    /// Log only: retention removed (or archived) the oldest segment.
    Retention,
    /// A `confirm` rule's question to the caller, and its answer.
    Approval,
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::Call,
        Kind::Result,
        Kind::Denied,
        Kind::EgressDenied,
        Kind::PolicyLoad,
        Kind::PolicyReload,
        Kind::ContainerStart,
        Kind::ContainerStop,
        Kind::Firewall,
        Kind::Tamper,
        Kind::GatewayStart,
        Kind::GatewayStop,
        Kind::CatalogUnstable,
        Kind::Sanitized,
        Kind::LockMismatch,
        Kind::Recovery,
        Kind::Checkpoint,
        Kind::SegmentStart,
        Kind::KeyRotation,
        Kind::Retention,
        Kind::Approval,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Call => "call",
            Kind::Result => "result",
            Kind::Denied => "denied",
            Kind::EgressDenied => "egress_denied",
            Kind::PolicyLoad => "policy_load",
            Kind::PolicyReload => "policy_reload",
            Kind::ContainerStart => "container_start",
            Kind::ContainerStop => "container_stop",
            Kind::Firewall => "firewall",
            Kind::Tamper => "tamper",
            Kind::GatewayStart => "gateway_start",
            Kind::GatewayStop => "gateway_stop",
            Kind::CatalogUnstable => "catalog_unstable",
            Kind::Sanitized => "sanitized",
            Kind::LockMismatch => "lock_mismatch",
            Kind::Recovery => "recovery",
            Kind::Checkpoint => "checkpoint",
            Kind::SegmentStart => "segment_start",
            Kind::KeyRotation => "key_rotation",
            Kind::Retention => "retention",
            Kind::Approval => "approval",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    pub fn log_only(self) -> bool {
        matches!(
            self,
            Kind::Recovery
                | Kind::Checkpoint
                | Kind::SegmentStart
                | Kind::KeyRotation
                | Kind::Retention
        )
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A JSON-RPC (or transport) error code; written as `outcome = "error"`, `error_code = N`.
    Error(i64),
    DeniedAuth,
    RateLimited,
    EgressDenied,
    /// A request to change the gateway (a policy reload) that was refused.
    Rejected,
    /// The answer was over `max_message_bytes` and the caller got an error instead;
    /// `bytes_out` is the answer's size (or the limit, when reading stopped at it).
    TooLarge,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error(_) => "error",
            Outcome::DeniedAuth => "denied_auth",
            Outcome::RateLimited => "rate_limited",
            Outcome::EgressDenied => "egress_denied",
            Outcome::Rejected => "rejected",
            Outcome::TooLarge => "too_large",
        }
    }
}

/// Replaces secret values in text bound for the log. The secrets module provides the real one.
pub trait Redact: Send + Sync {
    fn redact(&self, text: &str) -> String;
}

impl<F: Fn(&str) -> String + Send + Sync> Redact for F {
    fn redact(&self, text: &str) -> String {
        self(text)
    }
}

/// Replaces every occurrence of any of a set of strings with `[REDACTED]`.
pub struct RedactStrings(pub Vec<String>);

impl Redact for RedactStrings {
    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        // Longest first, so a secret that contains another is replaced whole.
        let mut set: Vec<&String> = self.0.iter().filter(|s| !s.is_empty()).collect();
        set.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in set {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[REDACTED]");
            }
        }
        out
    }
}

/// One event as the gateway describes it; the log adds `v`, `log_id`, `seq`, `ts` and `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub kind: Kind,
    pub client: Option<String>,
    pub session: Option<String>,
    pub server: Option<String>,
    pub image_digest: Option<String>,
    pub container: Option<String>,
    pub method: Option<String>,
    pub tool: Option<String>,
    /// What a request other than a tool call reached: a prompt name, resource URI or template.
    pub item: Option<String>,
    pub args_sha256: Option<String>,
    /// The raw arguments; written (redacted, as a JSON text string) only when the policy sets
    /// `record_arguments = true`, and never held in the record otherwise.
    pub args: Option<String>,
    pub outcome: Option<Outcome>,
    pub latency_us: Option<u64>,
    pub bytes_in: Option<u64>,
    pub bytes_out: Option<u64>,
    pub detail: Option<String>,
    /// The client rule that decided a refusal or an approval: `rules[INDEX] (TEXT)`, and
    /// whether its `when` condition decided (`rule_condition`).
    pub rule: Option<String>,
    pub rule_condition: Option<bool>,
    /// The serial of the signed policy in force when the record was written (signed mode only).
    pub policy_serial: Option<u64>,
    /// `egress_denied`: where the dropped packets were going (written as `destinations`).
    pub destinations: Option<Vec<EgressDest>>,
}

/// One destination of an `egress_denied` record: `{"dest":..,"proto":..,"port":..,"packets":..}`
/// (strings and integers only, so the record stays canonical JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressDest {
    /// An address, a refused DNS name, or `other` (the rest past the cap, summed).
    pub dest: String,
    pub proto: String,
    pub port: Option<u16>,
    /// Logged packets (the log is rate-limited; the record's total is in its detail).
    pub packets: u64,
}

impl EgressDest {
    fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("dest".into(), Value::from(self.dest.clone()));
        m.insert("proto".into(), Value::from(self.proto.clone()));
        if let Some(p) = self.port {
            m.insert("port".into(), Value::from(p));
        }
        m.insert(
            "packets".into(),
            Value::from(self.packets.min(super::canonical::MAX_SAFE_INTEGER)),
        );
        Value::Object(m)
    }
}

macro_rules! setter {
    ($name:ident, String) => {
        pub fn $name(mut self, v: impl Into<String>) -> Self {
            self.$name = Some(v.into());
            self
        }
    };
    ($name:ident, $ty:ty) => {
        pub fn $name(mut self, v: $ty) -> Self {
            self.$name = Some(v);
            self
        }
    };
}

impl AuditEvent {
    pub fn new(kind: Kind) -> Self {
        AuditEvent {
            kind,
            client: None,
            session: None,
            server: None,
            image_digest: None,
            container: None,
            method: None,
            tool: None,
            item: None,
            args_sha256: None,
            args: None,
            outcome: None,
            latency_us: None,
            policy_serial: None,
            bytes_in: None,
            bytes_out: None,
            detail: None,
            rule: None,
            rule_condition: None,
            destinations: None,
        }
    }

    setter!(client, String);
    setter!(session, String);
    setter!(server, String);
    setter!(image_digest, String);
    setter!(container, String);
    setter!(method, String);
    setter!(tool, String);
    setter!(item, String);
    setter!(outcome, Outcome);
    setter!(latency_us, u64);
    setter!(policy_serial, u64);
    setter!(bytes_in, u64);
    setter!(bytes_out, u64);
    setter!(detail, String);
    setter!(rule, String);
    setter!(rule_condition, bool);
    setter!(destinations, Vec<EgressDest>);

    /// The rule that decided, if a rule entry did.
    pub fn rule_of(self, rule: Option<&crate::access::Matched>) -> Self {
        match rule {
            Some(m) => self.rule(m.describe()).rule_condition(m.by_condition),
            None => self,
        }
    }

    /// Records the SHA-256 of the raw argument bytes (always) and keeps the text for the log to
    /// write only if the policy opts in.
    pub fn arguments(mut self, raw_json: &str) -> Self {
        self.args_sha256 = Some(hex::encode(Sha256::digest(raw_json.as_bytes())));
        self.args = Some(raw_json.to_string());
        self
    }

    /// The record's own fields (without the header), secrets redacted; `args` only if
    /// `record_arguments` and a redactor is present.
    pub(crate) fn into_fields(
        self,
        record_arguments: bool,
        redactor: Option<&dyn Redact>,
    ) -> Map<String, Value> {
        let mut m = Map::new();
        let red = |s: String| match redactor {
            Some(r) => r.redact(&s),
            None => s,
        };
        m.insert("kind".into(), Value::from(self.kind.as_str()));
        let strs = [
            ("client", self.client),
            ("session", self.session),
            ("server", self.server),
            ("image_digest", self.image_digest),
            ("container", self.container),
            ("method", self.method),
            ("tool", self.tool),
            ("item", self.item),
            ("args_sha256", self.args_sha256),
        ];
        for (k, v) in strs {
            if let Some(v) = v {
                m.insert(k.into(), Value::from(red(v)));
            }
        }
        if let (true, Some(r), Some(a)) = (record_arguments, redactor, self.args) {
            m.insert("args".into(), Value::from(r.redact(&a)));
        }
        if let Some(o) = self.outcome {
            m.insert("outcome".into(), Value::from(o.as_str()));
            if let Outcome::Error(code) = o {
                m.insert("error_code".into(), Value::from(code));
            }
        }
        for (k, v) in [
            ("latency_us", self.latency_us),
            ("bytes_in", self.bytes_in),
            ("bytes_out", self.bytes_out),
            ("policy_serial", self.policy_serial),
        ] {
            if let Some(v) = v {
                // Kept inside the canonical integer range; a larger value is not meaningful.
                m.insert(
                    k.into(),
                    Value::from(v.min(super::canonical::MAX_SAFE_INTEGER)),
                );
            }
        }
        if let Some(d) = self.detail {
            m.insert("detail".into(), Value::from(red(d)));
        }
        if let Some(r) = self.rule {
            m.insert("rule".into(), Value::from(red(r)));
        }
        if let Some(c) = self.rule_condition {
            m.insert("rule_condition".into(), Value::from(c));
        }
        if let Some(d) = self.destinations {
            let list = d.iter().map(EgressDest::to_value).collect();
            m.insert("destinations".into(), Value::Array(list));
        }
        m
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-24T16:53:51.123Z`.
pub fn format_ts(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let ms = d.subsec_millis();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, mo, da) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{da:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Milliseconds since the epoch of a timestamp written by [`format_ts`].
pub fn parse_ts_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[23] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let t = days * 86_400_000 + h * 3_600_000 + mi * 60_000 + se * 1000 + ms;
    u64::try_from(t).ok()
}

/// Like [`parse_ts_ms`], also accepting whole seconds (`2026-12-05T18:00:00Z`).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    match s.strip_suffix('Z') {
        Some(head) if head.len() == 19 => parse_ts_ms(&format!("{head}.000Z")),
        _ => parse_ts_ms(s),
    }
}

// Howard Hinnant's civil-calendar algorithms.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_round_trip() {
        for secs in [0u64, 951_782_400, 1_795_000_000, 4_102_444_799] {
            let t = UNIX_EPOCH + Duration::from_millis(secs * 1000 + 123);
            let s = format_ts(t);
            assert_eq!(parse_ts_ms(&s), Some(secs * 1000 + 123), "{s}");
        }
        assert_eq!(format_ts(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_ts(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn arguments_only_with_opt_in_and_redacted() {
        let r = RedactStrings(vec!["s3cr3t".into()]);
        let ev = AuditEvent::new(Kind::Call).arguments(r#"{"token":"s3cr3t"}"#);
        let off = ev.clone().into_fields(false, Some(&r));
        assert!(off.get("args").is_none());
        assert!(off.get("args_sha256").is_some());
        let on = ev.into_fields(true, Some(&r));
        assert_eq!(on["args"], r#"{"token":"[REDACTED]"}"#);
    }
}
