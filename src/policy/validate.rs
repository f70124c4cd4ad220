//! Raw TOML structs -> the validated [`Policy`]. Collects every semantic error instead of stopping
//! at the first, so one `policy check` run shows everything to fix.

use super::error::Diagnostic;
use super::location::{key_start, line_col};
use super::model::*;
use super::raw::*;
use super::units::{parse_duration, parse_rate, parse_size};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::{Spanned, Value};

// The URL and address checks live with the HTTP servers they mostly serve; re-exported here so
// their paths (`validate::check_url`, `policy::validate_host_port`, ...) stay as they were.
pub(super) use super::validate_remote::{check_url, is_loopback_url, private_target_rule};
pub use super::validate_remote::{secret_refs, validate_host_port};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8811";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 4 << 20;
pub const DEFAULT_MAX_MESSAGE_BYTES: u64 = 64 << 20;
/// Below this not even an ordinary `tools/list` fits; above it one message alone could take
/// most of a small machine's memory.
const MESSAGE_BYTES_RANGE: (u64, u64) = (64 << 10, 1 << 30);
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_UNUSED_SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// 50 lines a second with bursts of 200: a chatty server at start-up is logged whole, a flood
/// is not.
pub const DEFAULT_SERVER_LOG_RATE: Rate = Rate {
    count: 50,
    per: Duration::from_secs(1),
    burst: 200,
};
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
pub const DEFAULT_PAGE_SIZE: usize = 200;
pub const DEFAULT_SSE_KEEPALIVE: Duration = Duration::from_secs(15);
pub const DEFAULT_LIST_TTL: Duration = Duration::from_secs(60);
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) struct Checker<'a> {
    src: &'a str,
    origin: &'a str,
    base: Option<&'a Path>,
    pub(super) diags: Vec<Diagnostic>,
    /// `[gateway] state_dir`, resolved; token caches of OAuth servers live below it.
    pub(super) state_dir: PathBuf,
    /// `[gateway] max_message_bytes`: what a server without its own limit gets.
    pub(super) message_limit: usize,
    /// `[egress] mode` as written: a server may not run as the egress agent's uid in sidecar
    /// mode.
    pub(super) egress_mode: EgressMode,
}

/// Validates `raw`; `base` is the policy file's directory, against which relative paths resolve.
pub fn validate(
    raw: RawPolicy,
    src: &str,
    origin: &str,
    base: Option<&Path>,
) -> Result<Policy, Vec<Diagnostic>> {
    let mut c = Checker {
        src,
        origin,
        base,
        diags: Vec::new(),
        state_dir: PathBuf::new(),
        message_limit: DEFAULT_MAX_MESSAGE_BYTES as usize,
        egress_mode: EgressMode::Auto,
    };
    let raw_gateway = raw.gateway.unwrap_or_default();
    let listen_at = raw_gateway.listen.as_ref().map_or(0, |l| l.span().start);
    let (gateway, naming_at) = c.gateway(raw_gateway);
    c.message_limit = gateway.max_message_bytes;
    let egress = c.egress_settings(raw.egress.unwrap_or_default());
    c.egress_mode = egress.mode;
    // Judged on what was written, so a server that fails validation still counts.
    let written_servers = raw.servers.0.len();
    let server_names: BTreeSet<String> = raw
        .servers
        .0
        .iter()
        .map(|(n, _)| n.get_ref().clone())
        .collect();
    let mut servers = BTreeMap::new();
    let image_spans: BTreeMap<String, usize> = raw
        .servers
        .0
        .iter()
        .filter_map(|(n, rs)| Some((n.get_ref().clone(), rs.image.as_ref()?.span().start)))
        .collect();
    for (name, rs) in raw.servers.0 {
        // With a [workspace], the kit's workspace is audited under this name (its egress
        // denials and tamper records): a server of the same name would make those records
        // ambiguous. (The config the gateway hands the workspace's own agent is a policy with
        // just that server and no [workspace], so it is not refused here.)
        if raw.workspace.is_some() && name.get_ref() == RESERVED_WORKSPACE {
            c.error(
                name.span().start,
                format!("server name `{RESERVED_WORKSPACE}` is reserved while the policy has a [workspace] section: the workspace's egress denials are audited as server `{RESERVED_WORKSPACE}`; rename the server, e.g. `{RESERVED_WORKSPACE}-tools`"),
            );
        }
        if let Some(s) = c.server(&name, rs) {
            servers.insert(name.into_inner(), s);
        }
    }
    if gateway.naming == Naming::Passthrough && written_servers != 1 {
        c.error(
            naming_at,
            format!(
                "naming = \"passthrough\" needs exactly one server, but {} are configured; use \"prefix\" or \"auto\" so tool names stay unique",
                written_servers
            ),
        );
    }
    let mut clients = BTreeMap::new();
    let mut tokens: BTreeMap<String, String> = BTreeMap::new();
    for (name, rc) in raw.clients.0 {
        if let Some(cl) = c.client(&name, rc, &server_names, &mut tokens, gateway.max_sessions) {
            clients.insert(name.into_inner(), cl);
        }
    }
    let auth = c.auth(raw.auth.unwrap_or_default());
    c.listener_safety(&gateway, &clients, &auth, listen_at);
    let audit = c.audit(raw.audit.unwrap_or_default());
    let telemetry = raw.telemetry.and_then(|t| c.telemetry(t));
    let limits = c.shared_limits(raw.limits.unwrap_or_default());
    // The same parser and errors as a server's egress.allow; "docker" because the workspace is
    // a container whose names the pinning resolver answers, so a DNS budget applies to it.
    let workspace = raw
        .workspace
        .map(|w| c.server_egress("workspace", "docker", Some(&w)));
    if gateway.require_image_digest {
        c.image_digests(&servers, &image_spans);
    }
    if !c.diags.is_empty() {
        return Err(c.diags);
    }
    Ok(Policy {
        origin: origin.to_string(),
        gateway,
        egress,
        servers,
        clients,
        auth,
        audit,
        telemetry,
        limits,
        workspace,
    })
}

/// The server name the workspace's records carry ([`crate::egress::workspace::SUBJECT`]).
pub const RESERVED_WORKSPACE: &str = "workspace";

pub(crate) fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

pub fn is_server_name(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A valid server name close to `s`, for suggestions.
pub fn sanitize_server_name(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let mut out: String = out.chars().take(32).collect();
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        "server".to_string()
    } else {
        out
    }
}

pub(super) fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

impl Checker<'_> {
    /// The policy text being checked.
    pub(super) fn source(&self) -> &str {
        self.src
    }

    pub(super) fn error(&mut self, at: usize, message: impl Into<String>) {
        let (line, column) = line_col(self.src, at);
        self.diags.push(Diagnostic {
            origin: self.origin.to_string(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Where to point for a problem with key `key` whose value starts at `value_at`.
    pub(super) fn key_at(&self, value_at: usize, key: &str) -> usize {
        key_start(self.src, value_at, key).unwrap_or(value_at)
    }

    pub(super) fn resolve(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        match self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        }
    }

    pub(super) fn duration(&mut self, v: &Option<Spanned<Value>>, key: &str) -> Option<Duration> {
        let v = v.as_ref()?;
        let at = v.span().start;
        match v.get_ref() {
            Value::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.error(at, format!("`{key}`: {e}"));
                    None
                }
            },
            Value::Integer(n) => {
                self.error(at, format!("`{key}` needs a unit; write \"{n}s\" for seconds or \"{n}ms\" for milliseconds"));
                None
            }
            other => {
                self.error(
                    at,
                    format!(
                        "`{key}` must be a duration string like \"30s\", not {}",
                        value_kind(other)
                    ),
                );
                None
            }
        }
    }

    pub(super) fn size(&mut self, v: &Option<Spanned<Value>>, key: &str) -> Option<u64> {
        let v = v.as_ref()?;
        let at = v.span().start;
        match v.get_ref() {
            Value::String(s) => match parse_size(s) {
                Ok(n) => Some(n),
                Err(e) => {
                    self.error(at, format!("`{key}`: {e}"));
                    None
                }
            },
            Value::Integer(n) if *n > 0 => Some(*n as u64),
            Value::Integer(_) => {
                self.error(at, format!("`{key}` must be greater than zero"));
                None
            }
            other => {
                self.error(
                    at,
                    format!(
                        "`{key}` must be a size like \"512m\" or a number of bytes, not {}",
                        value_kind(other)
                    ),
                );
                None
            }
        }
    }

    /// A `max_message_bytes` value, inside [`MESSAGE_BYTES_RANGE`].
    pub(super) fn message_bytes(&mut self, v: &Option<Spanned<Value>>) -> Option<u64> {
        let n = self.size(v, "max_message_bytes")?;
        let (min, max) = MESSAGE_BYTES_RANGE;
        if !(min..=max).contains(&n) {
            let at = v.as_ref().map_or(0, |v| v.span().start);
            self.error(
                at,
                format!("`max_message_bytes` must be between 64k and 1g (it is {n} bytes); the default is \"64m\""),
            );
            return None;
        }
        Some(n)
    }

    pub(super) fn count(
        &mut self,
        v: &Option<Spanned<u64>>,
        key: &str,
        range: (u64, u64),
    ) -> Option<u64> {
        let v = v.as_ref()?;
        let n = *v.get_ref();
        if n < range.0 || n > range.1 {
            self.error(
                v.span().start,
                format!(
                    "`{key}` = {n} is out of range; use {} to {}",
                    range.0, range.1
                ),
            );
            return None;
        }
        Some(n)
    }

    pub(super) fn strings(v: &Option<Vec<Str>>) -> Vec<String> {
        v.iter().flatten().map(|s| s.get_ref().clone()).collect()
    }

    pub(super) fn rate(&mut self, v: &Option<Spanned<Value>>) -> Option<Rate> {
        self.rate_for(v, "rate")
    }

    /// A rate written as `"N/period"` or `{ quota = "N/period", burst = B }`; `key` names it in
    /// messages.
    pub(super) fn rate_for(&mut self, v: &Option<Spanned<Value>>, key: &str) -> Option<Rate> {
        let v = v.as_ref()?;
        let at = v.span().start;
        let (quota, quota_at, burst) = match v.get_ref() {
            Value::String(s) => (s.clone(), at, None),
            Value::Table(t) => {
                for k in t.keys() {
                    if k != "quota" && k != "burst" {
                        self.error(
                            at,
                            format!("unknown key `{k}` in `{key}`; expected one of: quota, burst"),
                        );
                        return None;
                    }
                }
                let quota = match t.get("quota") {
                    Some(Value::String(s)) => s.clone(),
                    _ => {
                        self.error(at, format!("`{key}` needs quota = \"120/min\" (a string)"));
                        return None;
                    }
                };
                let burst = match t.get("burst") {
                    None => None,
                    Some(Value::Integer(b)) if *b >= 1 && *b <= i64::from(u32::MAX) => {
                        Some(*b as u32)
                    }
                    Some(_) => {
                        self.error(
                            at,
                            format!("`{key}.burst` must be a whole number, at least 1"),
                        );
                        return None;
                    }
                };
                (quota, at, burst)
            }
            other => {
                self.error(at, format!("`{key}` must be a string like \"120/min\" or a table like {{ quota = \"120/min\", burst = 20 }}, not {}", value_kind(other)));
                return None;
            }
        };
        match parse_rate(&quota) {
            Ok((count, per)) => Some(Rate {
                count,
                per,
                burst: burst.unwrap_or(count),
            }),
            Err(e) => {
                self.error(quota_at, e);
                None
            }
        }
    }

    /// Tool patterns (`qualified` = client patterns, written `server__tool`).
    pub(super) fn patterns(&mut self, v: &Option<Vec<Str>>, qualified: bool) -> Vec<String> {
        let mut out = Vec::new();
        for p in v.iter().flatten() {
            let s = p.get_ref();
            if s.is_empty() || s.chars().any(char::is_whitespace) {
                self.error(p.span().start, format!("invalid tool pattern \"{s}\"; use a tool name, optionally with `*`, like \"get_*\""));
            } else if !qualified && s.contains("__") {
                self.error(p.span().start, format!("tool pattern \"{s}\" contains `__`; server tool filters match the server's own tool names, so leave out the `server__` prefix"));
            }
            out.push(s.clone());
        }
        out
    }

    /// Refuses a `server__item` pattern that names a server the policy does not configure.
    pub(super) fn pattern_server(&mut self, p: &Str, servers: &BTreeSet<String>) {
        if let Some((server, _)) = p.get_ref().split_once("__") {
            if !server.contains('*') && !servers.contains(server) && is_server_name(server) {
                self.error(p.span().start, format!("pattern \"{}\" names server `{server}`, which is not configured; configured servers: {}", p.get_ref(), if servers.is_empty() { "(none)".to_string() } else { servers.iter().cloned().collect::<Vec<_>>().join(", ") }));
            }
        }
    }
}

/// Parses `env:NAME`, `file:/path` or `dotenv:.env#NAME` (paths not yet resolved).
pub fn parse_secret_ref(s: &str) -> Result<SecretRef, String> {
    const HOW: &str = "use \"env:NAME\", \"file:/run/secrets/name\" or \"dotenv:.env#NAME\"; the secret's value itself never goes in the policy";
    if let Some(name) = s.strip_prefix("env:") {
        if is_env_name(name) {
            return Ok(SecretRef::Env(name.to_string()));
        }
        return Err(format!(
            "invalid environment variable name in \"{s}\"; {HOW}"
        ));
    }
    if let Some(path) = s.strip_prefix("file:") {
        if !path.is_empty() {
            return Ok(SecretRef::File(PathBuf::from(path)));
        }
        return Err(format!("\"{s}\" names no file; {HOW}"));
    }
    if let Some(rest) = s.strip_prefix("dotenv:") {
        if let Some((path, key)) = rest.rsplit_once('#') {
            if !path.is_empty() && is_env_name(key) {
                return Ok(SecretRef::Dotenv {
                    path: PathBuf::from(path),
                    key: key.to_string(),
                });
            }
        }
        return Err(format!("invalid dotenv reference \"{s}\"; {HOW}"));
    }
    // The value is not echoed: someone may have pasted the secret itself here.
    Err(format!("unknown secret source; {HOW}"))
}
