//! Raw TOML structs -> the validated [`Policy`]. Collects every semantic error instead of stopping
//! at the first, so one `policy check` run shows everything to fix.

use super::error::Diagnostic;
use super::location::{key_start, line_col};
use super::model::*;
use super::raw::*;
use super::units::{parse_duration, parse_rate, parse_size};
use super::validate_guard::check_image_ref;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::{Spanned, Value};

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
/// Docker refuses containers with less memory than this.
const MIN_MEMORY: u64 = 6 << 20;
const MAX_POOL: u64 = 32;

const PROCESS_KEYS: &[&str] = &[
    "command",
    "args",
    "env",
    "cwd",
    "user",
    "allow_root",
    "mounts",
];
const DOCKER_KEYS: &[&str] = &["image", "command", "env", "user", "mounts", "pool"];
const REMOTE_KEYS: &[&str] = &["url", "headers", "ca_file", "oauth"];
const OPENAPI_KEYS: &[&str] = &[
    "spec",
    "base_url",
    "headers",
    "ca_file",
    "oauth",
    "operations",
    "max_response_bytes",
];

pub(super) struct Checker<'a> {
    src: &'a str,
    origin: &'a str,
    base: Option<&'a Path>,
    pub(super) diags: Vec<Diagnostic>,
    /// `[gateway] state_dir`, resolved; token caches of OAuth servers live below it.
    pub(super) state_dir: PathBuf,
    /// `[gateway] max_message_bytes`: what a server without its own limit gets.
    message_limit: usize,
    /// `[egress] mode` as written: a server may not run as the egress agent's uid in sidecar
    /// mode.
    egress_mode: EgressMode,
    /// Whether [`RESERVED_WORKSPACE`] may name a server: only in the config the gateway itself
    /// writes for the workspace's egress agent, which carries `[workspace]` as that server.
    workspace_name_allowed: bool,
}

/// Who wrote the document being validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Author {
    /// A person (a policy file): every rule applies.
    Person,
    /// The gateway, for an egress agent: the workspace's reserved name is its own to use.
    Gateway,
}

/// Validates `raw`; `base` is the policy file's directory, against which relative paths resolve.
pub fn validate(
    raw: RawPolicy,
    src: &str,
    origin: &str,
    base: Option<&Path>,
    author: Author,
) -> Result<Policy, Vec<Diagnostic>> {
    let mut c = Checker {
        src,
        origin,
        base,
        diags: Vec::new(),
        state_dir: PathBuf::new(),
        message_limit: DEFAULT_MAX_MESSAGE_BYTES as usize,
        egress_mode: EgressMode::Auto,
        workspace_name_allowed: author == Author::Gateway,
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
    fn message_bytes(&mut self, v: &Option<Spanned<Value>>) -> Option<u64> {
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

    fn gateway(&mut self, g: RawGateway) -> (Gateway, usize) {
        let listen = match &g.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 8811)),
            Some(l) => l.get_ref().parse().unwrap_or_else(|_| {
                self.error(l.span().start, format!("invalid listen address \"{}\"; use IP:PORT, like \"{DEFAULT_LISTEN}\" (host names are not resolved)", l.get_ref()));
                SocketAddr::from(([127, 0, 0, 1], 8811))
            }),
        };
        let admin_listen = g.admin_listen.as_ref().and_then(|a| {
            let text = a.get_ref();
            match text.parse::<SocketAddr>() {
                Ok(addr) if addr.ip().is_loopback() => Some(addr),
                Ok(_) => {
                    self.error(a.span().start, format!("admin_listen \"{text}\" is not a loopback address; /ready and /metrics name every server, tool and client, so they are served without a token only on loopback (off loopback, reach them through `listen` with a client token)"));
                    None
                }
                Err(_) => {
                    self.error(a.span().start, format!("invalid admin_listen address \"{text}\"; use a loopback IP:PORT, like \"127.0.0.1:9811\""));
                    None
                }
            }
        });
        let session_idle_timeout = self
            .duration(&g.session_idle_timeout, "session_idle_timeout")
            .unwrap_or(DEFAULT_SESSION_IDLE_TIMEOUT);
        let naming_at = g.naming.as_ref().map_or(0, |n| n.span().start);
        let naming = match g.naming.as_ref().map(|n| n.get_ref().as_str()) {
            None | Some("auto") => Naming::Auto,
            Some("prefix") => Naming::Prefix,
            Some("passthrough") => Naming::Passthrough,
            Some(other) => {
                self.error(
                    naming_at,
                    format!(
                        "unknown naming \"{other}\"; use \"auto\", \"prefix\" or \"passthrough\""
                    ),
                );
                Naming::Auto
            }
        };
        for o in g.allowed_origins.iter().flatten() {
            if let Err(e) = check_origin(o.get_ref()) {
                self.error(o.span().start, e);
            }
        }
        for h in g.allowed_hosts.iter().flatten() {
            let s = h.get_ref();
            if s.is_empty()
                || s.contains("://")
                || s.contains('/')
                || s.chars().any(char::is_whitespace)
            {
                self.error(h.span().start, format!("invalid allowed host \"{s}\"; write a Host header value: a host or host:port, like \"gateway.internal:8811\""));
            }
        }
        let max_body_bytes = self
            .size(&g.max_body_bytes, "max_body_bytes")
            .unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let max_message_bytes = self
            .message_bytes(&g.max_message_bytes)
            .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
        self.state_dir = match &g.state_dir {
            Some(p) if p.get_ref().trim().is_empty() => {
                self.error(
                    p.span().start,
                    "`state_dir` is empty; name a directory, like \"./portcullis-state\"",
                );
                self.resolve(DEFAULT_STATE_DIR)
            }
            Some(p) => self.resolve(p.get_ref()),
            None => self.resolve(DEFAULT_STATE_DIR),
        };
        let instance =
            g.instance
                .as_ref()
                .and_then(|i| match crate::instance::check(i.get_ref()) {
                    Ok(()) => Some(i.get_ref().clone()),
                    Err(e) => {
                        self.error(i.span().start, e);
                        None
                    }
                });
        let fleet_key = g.fleet_key.as_ref().and_then(|v| {
            parse_secret_ref(v.get_ref())
                .map_err(|e| self.error(v.span().start, format!("`fleet_key`: {e}")))
                .ok()
        });
        let gw = Gateway {
            fleet_key,
            listen,
            admin_listen,
            naming,
            allowed_origins: Self::strings(&g.allowed_origins),
            allowed_hosts: Self::strings(&g.allowed_hosts),
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            max_message_bytes: usize::try_from(max_message_bytes).unwrap_or(usize::MAX),
            request_timeout: self
                .duration(&g.request_timeout, "request_timeout")
                .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
            session_idle_timeout,
            server_log_rate: self
                .rate(&g.server_log_rate)
                .unwrap_or(DEFAULT_SERVER_LOG_RATE),
            unused_session_timeout: self
                .duration(&g.unused_session_timeout, "unused_session_timeout")
                .unwrap_or(DEFAULT_UNUSED_SESSION_TIMEOUT)
                .min(session_idle_timeout),
            max_sessions: self
                .count(&g.max_sessions, "max_sessions", (1, 1_000_000))
                .map_or(DEFAULT_MAX_SESSIONS, |n| n as usize),
            page_size: self
                .count(&g.page_size, "page_size", (1, 10_000))
                .map_or(DEFAULT_PAGE_SIZE, |n| n as usize),
            list_ttl: self
                .duration(&g.list_ttl, "list_ttl")
                .unwrap_or(DEFAULT_LIST_TTL),
            sse_keepalive: self
                .duration(&g.sse_keepalive, "sse_keepalive")
                .unwrap_or(DEFAULT_SSE_KEEPALIVE),
            sse_poll_interval: self.duration(&g.sse_poll_interval, "sse_poll_interval"),
            tls: g.tls.as_ref().map(|t| self.tls(t)),
            state_dir: self.state_dir.clone(),
            instance,
            serial: self.count(&g.serial, "serial", (0, i64::MAX as u64)),
            list_changes: self.list_changes(&g),
            lock: self.lock(&g),
            require_image_digest: g
                .require_image_digest
                .as_ref()
                .is_some_and(|r| *r.get_ref()),
        };
        (gw, naming_at)
    }

    fn list_changes(&mut self, g: &RawGateway) -> ListChanges {
        let d = ListChanges::default();
        let mut within = |v: &Option<Spanned<Value>>, key: &str, max: Duration| {
            let at = v.as_ref().map_or(0, |v| v.span().start);
            let got = self.duration(v, key)?;
            if got > max {
                self.error(
                    at,
                    format!("`{key}` is too long; use at most \"{}s\"", max.as_secs()),
                );
                return None;
            }
            Some(got)
        };
        ListChanges {
            interval: within(
                &g.list_changed_interval,
                "list_changed_interval",
                Duration::from_secs(60),
            )
            .unwrap_or(d.interval),
            window: within(
                &g.unstable_window,
                "unstable_window",
                Duration::from_secs(3600),
            )
            .unwrap_or(d.window),
            unstable_after: self
                .count(
                    &g.unstable_list_changes,
                    "unstable_list_changes",
                    (1, 1_000_000),
                )
                .unwrap_or(d.unstable_after),
        }
    }

    fn server(&mut self, name: &Str, rs: RawServer) -> Option<Server> {
        let n = name.get_ref().as_str();
        let before = self.diags.len();
        if !is_server_name(n) {
            let why = if n.contains('_') {
                "`_` is not allowed because `__` separates server and tool in `server__tool`"
            } else {
                "names are 1-32 letters, digits or `-`"
            };
            self.error(
                name.span().start,
                format!(
                    "server name `{n}` is invalid: {why}; rename it, e.g. `{}`",
                    sanitize_server_name(n)
                ),
            );
        } else if n == RESERVED_WORKSPACE && !self.workspace_name_allowed {
            // The kit's workspace is audited under this name (its egress denials and tamper
            // records): a server of the same name would make those records ambiguous.
            self.error(
                name.span().start,
                format!("server name `{n}` is reserved for the devcontainer kit's workspace, whose egress denials are audited as server `{n}`; rename the server, e.g. `{n}-tools`"),
            );
        }
        let rt = rs.runtime.get_ref().as_str();
        let allowed = match rt {
            "process" => PROCESS_KEYS,
            "docker" => DOCKER_KEYS,
            "remote" => REMOTE_KEYS,
            "openapi" => OPENAPI_KEYS,
            other => {
                self.error(
                    rs.runtime.span().start,
                    format!("unknown runtime \"{other}\" in [servers.{n}]; use \"process\", \"docker\", \"remote\" or \"openapi\""),
                );
                return None;
            }
        };
        let present: [(&str, Option<usize>); 17] = [
            ("command", rs.command.as_ref().map(|v| v.span().start)),
            ("args", rs.args.as_ref().map(|v| v.span().start)),
            ("env", rs.env.as_ref().map(|v| v.span().start)),
            ("cwd", rs.cwd.as_ref().map(|v| v.span().start)),
            ("image", rs.image.as_ref().map(|v| v.span().start)),
            ("user", rs.user.as_ref().map(|v| v.span().start)),
            ("allow_root", rs.allow_root.as_ref().map(|v| v.span().start)),
            ("mounts", rs.mounts.as_ref().map(|v| v.span().start)),
            ("pool", rs.pool.as_ref().map(|v| v.span().start)),
            ("url", rs.url.as_ref().map(|v| v.span().start)),
            ("headers", rs.headers.as_ref().map(|v| v.span().start)),
            ("ca_file", rs.ca_file.as_ref().map(|v| v.span().start)),
            ("oauth", rs.oauth.as_ref().map(|v| v.span().start)),
            ("spec", rs.spec.as_ref().map(|v| v.span().start)),
            ("base_url", rs.base_url.as_ref().map(|v| v.span().start)),
            ("operations", rs.operations.as_ref().map(|v| v.span().start)),
            (
                "max_response_bytes",
                rs.max_response_bytes.as_ref().map(|v| v.span().start),
            ),
        ];
        for (key, at) in present {
            if let (Some(at), false) = (at, allowed.contains(&key)) {
                let owners: Vec<&str> = [
                    ("process", PROCESS_KEYS),
                    ("docker", DOCKER_KEYS),
                    ("remote", REMOTE_KEYS),
                    ("openapi", OPENAPI_KEYS),
                ]
                .iter()
                .filter(|(_, keys)| keys.contains(&key))
                .map(|(r, _)| *r)
                .collect();
                self.error(
                    self.key_at(at, key),
                    format!(
                        "`{key}` is not a key of a runtime = \"{rt}\" server [servers.{n}] (it belongs to runtime = \"{}\"); remove it, or use only: {}",
                        owners.join("\" or \""),
                        allowed.join(", ")
                    ),
                );
            }
        }

        let secrets = self.secrets(&rs.secrets);
        let env = self.env(&rs.env, &rs.secrets);
        let egress = self.server_egress(n, rt, rs.egress.as_ref());

        let runtime = match rt {
            "process" => self.process(n, &rs, env),
            "docker" => self.docker(n, &rs, env),
            "openapi" => self.openapi(n, &rs, &secrets, &egress),
            _ => self.remote(n, &rs, &secrets, &egress),
        };

        let lifecycle = match rs
            .lifecycle
            .as_ref()
            .map(|l| (l.get_ref().as_str(), l.span().start))
        {
            None | Some(("shared", _)) => Lifecycle::Shared,
            Some((l @ ("per-session" | "per-call"), at)) => {
                // A remote server is one endpoint: the gateway cannot start copies of it.
                if rt == "remote" || rt == "openapi" {
                    self.error(
                        self.key_at(at, "lifecycle"),
                        format!("lifecycle = \"{l}\" needs a runtime the gateway starts itself (\"docker\" or \"process\"); [servers.{n}] is \"{rt}\", so use lifecycle = \"shared\""),
                    );
                }
                if l == "per-session" {
                    Lifecycle::PerSession
                } else {
                    Lifecycle::PerCall
                }
            }
            Some((other, at)) => {
                self.error(at, format!("unknown lifecycle \"{other}\"; use \"shared\", \"per-session\" or \"per-call\""));
                Lifecycle::Shared
            }
        };
        if let (Some(p), Lifecycle::Shared, "docker") = (&rs.pool, lifecycle, rt) {
            if *p.get_ref() > 0 {
                self.error(
                    self.key_at(p.span().start, "pool"),
                    "a warm pool only helps lifecycle = \"per-session\" or \"per-call\"; remove `pool` or change the lifecycle",
                );
            }
        }

        let limits = self.limits(rs.limits.unwrap_or_default());
        let rate = self.rate(&rs.rate);
        let tools = ToolFilter {
            allow: self.patterns(&rs.tools.as_ref().and_then(|t| t.allow.clone()), false),
            deny: self.patterns(&rs.tools.as_ref().and_then(|t| t.deny.clone()), false),
        };
        let startup_timeout = self
            .duration(&rs.startup_timeout, "startup_timeout")
            .unwrap_or(DEFAULT_STARTUP_TIMEOUT);
        let request_timeout = self.duration(&rs.request_timeout, "request_timeout");
        let tool_rates = self.tool_rates(&rs.tool_rates);
        let max_in_flight = self
            .count(&rs.max_in_flight, "max_in_flight", (1, 100_000))
            .map(|n| n as u32);
        let queue_timeout = self
            .duration(&rs.queue_timeout, "queue_timeout")
            .unwrap_or(DEFAULT_QUEUE_TIMEOUT);
        let max_message_bytes = self
            .message_bytes(&rs.max_message_bytes)
            .map_or(self.message_limit, |n| {
                usize::try_from(n).unwrap_or(usize::MAX)
            });
        let roots = self.roots(&rs.roots);
        let client_capabilities = self.client_capabilities(&rs.client_capabilities);
        let log_rate = self.rate(&rs.log_rate);
        let protocol = self.protocol(n, rt, &rs.protocol);
        let sanitize = self.sanitize(&rs.sanitize);

        if self.diags.len() != before {
            return None;
        }
        Some(Server {
            name: n.to_string(),
            runtime: runtime?,
            lifecycle,
            egress,
            limits,
            secrets,
            rate,
            tools,
            startup_timeout,
            request_timeout,
            tool_rates,
            max_in_flight,
            roots,
            client_capabilities,
            log_rate,
            queue_timeout,
            sanitize,
            max_message_bytes,
            protocol,
        })
    }

    fn protocol(&mut self, n: &str, rt: &str, v: &Option<Str>) -> ProtocolChoice {
        if let (Some(p), "openapi") = (v, rt) {
            // The gateway answers an openapi server's MCP itself: there is no era to choose.
            let at = self.key_at(p.span().start, "protocol");
            self.error(at, format!("`protocol` does not apply to a runtime = \"openapi\" server [servers.{n}] (the gateway makes its MCP side itself); remove it"));
            return ProtocolChoice::Auto;
        }
        match v.as_ref().map(|p| (p.get_ref().as_str(), p.span().start)) {
            None | Some(("auto", _)) => ProtocolChoice::Auto,
            Some(("legacy", _)) => ProtocolChoice::Legacy,
            Some(("2026-07-28", _)) => ProtocolChoice::Modern,
            Some((other, at)) => {
                self.error(at, format!("unknown protocol \"{other}\" in [servers.{n}]; use \"auto\" (probe with server/discover, fall back to initialize), \"legacy\" (initialize only) or \"2026-07-28\" (stateless only)"));
                ProtocolChoice::Auto
            }
        }
    }

    fn secrets(&mut self, raw: &Option<StrMap>) -> BTreeMap<String, SecretRef> {
        let mut out = BTreeMap::new();
        for (k, v) in raw.iter().flatten() {
            if !is_env_name(k.get_ref()) {
                self.error(k.span().start, format!("secret name `{}` is not a valid environment variable name; use letters, digits and `_`, not starting with a digit", k.get_ref()));
            }
            match parse_secret_ref(v.get_ref()) {
                Ok(r) => {
                    let r = match r {
                        SecretRef::File(p) => SecretRef::File(self.resolve(&p.to_string_lossy())),
                        SecretRef::Dotenv { path, key } => SecretRef::Dotenv {
                            path: self.resolve(&path.to_string_lossy()),
                            key,
                        },
                        env => env,
                    };
                    out.insert(k.get_ref().clone(), r);
                }
                Err(e) => self.error(v.span().start, e),
            }
        }
        out
    }

    fn env(
        &mut self,
        raw: &Option<Spanned<StrMap>>,
        secrets: &Option<StrMap>,
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in raw.iter().flat_map(|m| m.get_ref().iter()) {
            let name = k.get_ref();
            if !is_env_name(name) {
                self.error(k.span().start, format!("environment variable name `{name}` is invalid; use letters, digits and `_`, not starting with a digit"));
            }
            if secrets.iter().flatten().any(|(s, _)| s.get_ref() == name) {
                self.error(
                    k.span().start,
                    format!("`{name}` is set both in env and in secrets; keep it only in secrets"),
                );
            }
            out.insert(name.clone(), v.get_ref().clone());
        }
        out
    }

    fn process(
        &mut self,
        n: &str,
        rs: &RawServer,
        env: BTreeMap<String, String>,
    ) -> Option<Runtime> {
        let command = match rs.command.as_ref().map(|c| (c.get_ref(), c.span().start)) {
            Some((Value::String(s), at)) if s.trim().is_empty() => {
                self.error(at, "`command` is empty; name the program to run");
                None
            }
            Some((Value::String(s), _)) => Some(s.clone()),
            Some((Value::Array(_), at)) => {
                self.error(at, "for runtime = \"process\", `command` is a string (the program) and its arguments go in `args`, like command = \"uvx\", args = [\"mcp-server-time\"]");
                None
            }
            Some((other, at)) => {
                self.error(
                    at,
                    format!("`command` must be a string, not {}", value_kind(other)),
                );
                None
            }
            None => {
                self.error(self.server_at(rs), format!("[servers.{n}] has runtime = \"process\" but no `command`; add command = \"program\""));
                None
            }
        }?;
        let user = self.process_user(n, rs);
        let mounts = self.mounts(rs);
        Some(Runtime::Process(ProcessSpec {
            command,
            args: rs
                .args
                .as_ref()
                .map(|a| a.get_ref().clone())
                .unwrap_or_default(),
            env,
            cwd: rs.cwd.as_ref().map(|c| self.resolve(c.get_ref())),
            user,
            mounts,
        }))
    }

    /// `mounts` of a docker or process server.
    fn mounts(&mut self, rs: &RawServer) -> Vec<Mount> {
        let mut mounts = Vec::new();
        for m in rs.mounts.iter().flat_map(|m| m.get_ref().iter()) {
            let src = m.source.get_ref();
            let tgt = m.target.get_ref();
            if src.trim().is_empty() {
                self.error(
                    m.source.span().start,
                    "mount `source` is empty; name a host path",
                );
            } else if src.trim_end_matches('/').is_empty() {
                self.error(m.source.span().start, "mounting the host's root directory gives the server the whole machine; mount only the directory it needs");
            } else if src.ends_with("docker.sock") {
                self.error(m.source.span().start, "mounting the Docker socket lets the server escape its sandbox; remove this mount");
            }
            if !tgt.starts_with('/') {
                self.error(m.target.span().start, format!("mount target \"{tgt}\" must be an absolute path (inside the container for docker, in the host's filesystem for process), like \"/workspace\""));
            }
            mounts.push(Mount {
                source: self.resolve(src),
                target: PathBuf::from(tgt),
                read_only: m.read_only.as_ref().is_none_or(|r| *r.get_ref()),
            });
        }
        mounts
    }

    /// `user` (numeric `uid:gid`, or `uid` for both) and `allow_root` of a process server.
    fn process_user(&mut self, n: &str, rs: &RawServer) -> ProcessUser {
        let allow_root = rs.allow_root.as_ref().is_some_and(|a| *a.get_ref());
        let Some(u) = &rs.user else {
            return ProcessUser::default();
        };
        let text = u.get_ref().trim();
        let (uid, gid) = text.split_once(':').unwrap_or((text, text));
        let (Ok(uid), Ok(gid)) = (uid.parse::<u32>(), gid.parse::<u32>()) else {
            self.error(u.span().start, format!("user = \"{text}\" of [servers.{n}] must be numeric, \"UID:GID\" like \"65534:65534\" (a process server's user is not looked up by name)"));
            return ProcessUser::default();
        };
        if uid == 0 && !allow_root {
            self.error(u.span().start, format!("user = \"{text}\" runs [servers.{n}] as root (no capabilities, but root's files); use a non-root user like \"65534:65534\", or set allow_root = true if this server really needs root-owned files"));
        }
        ProcessUser { uid, gid }
    }

    fn server_at(&self, rs: &RawServer) -> usize {
        rs.runtime.span().start
    }

    fn docker(
        &mut self,
        n: &str,
        rs: &RawServer,
        env: BTreeMap<String, String>,
    ) -> Option<Runtime> {
        let image = match &rs.image {
            Some(i)
                if i.get_ref().trim().is_empty()
                    || i.get_ref().chars().any(char::is_whitespace) =>
            {
                self.error(
                    i.span().start,
                    format!(
                        "invalid image \"{}\"; name an image like \"portcullis/mcp-time:local\"",
                        i.get_ref()
                    ),
                );
                None
            }
            Some(i) => match check_image_ref(i.get_ref()) {
                Ok(()) => Some(i.get_ref().clone()),
                Err(why) => {
                    self.error(i.span().start, why);
                    None
                }
            },
            None => {
                self.error(self.server_at(rs), format!("[servers.{n}] has runtime = \"docker\" but no `image`; add image = \"name:tag\""));
                None
            }
        };
        let command = match rs.command.as_ref().map(|c| (c.get_ref(), c.span().start)) {
            None => Vec::new(),
            Some((Value::Array(items), at)) => {
                let strs: Vec<String> = items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                if strs.len() != items.len() {
                    self.error(at, "every element of `command` must be a string");
                }
                strs
            }
            Some((Value::String(s), at)) => {
                self.error(
                    at,
                    format!(
                        "for runtime = \"docker\", `command` is an array, like command = [{}]",
                        toml::Value::String(s.clone())
                    ),
                );
                Vec::new()
            }
            Some((other, at)) => {
                self.error(
                    at,
                    format!(
                        "`command` must be an array of strings, not {}",
                        value_kind(other)
                    ),
                );
                Vec::new()
            }
        };
        if let Some(u) = &rs.user {
            let user = u.get_ref();
            let uid = user.split(':').next().unwrap_or_default();
            if uid == "root" || uid == "0" {
                self.error(u.span().start, format!("user = \"{user}\" runs the server as root inside its container; use a non-root user like \"65534:65534\" or leave `user` out to run as nobody (65534:65534)"));
            } else if uid == AGENT_UID.to_string() && self.egress_mode != EgressMode::Host {
                self.error(u.span().start, format!("user = \"{user}\" is the egress agent's uid ({AGENT_UID}): in sidecar mode the agent's DNS to the upstream resolvers is allowed by that socket owner, so a server running as it could reach them directly; use another uid like \"65534:65534\""));
            }
        }
        let mounts = self.mounts(rs);
        let pool = self.count(&rs.pool, "pool", (0, MAX_POOL)).unwrap_or(0) as usize;
        Some(Runtime::Docker(DockerSpec {
            image: image?,
            command,
            env,
            user: rs.user.as_ref().map(|u| u.get_ref().clone()),
            mounts,
            pool,
        }))
    }

    fn remote(
        &mut self,
        n: &str,
        rs: &RawServer,
        secrets: &BTreeMap<String, SecretRef>,
        egress: &Egress,
    ) -> Option<Runtime> {
        let url = match &rs.url {
            Some(u) => self.endpoint_url(n, u, egress, "url"),
            None => {
                self.error(self.server_at(rs), format!("[servers.{n}] has runtime = \"remote\" but no `url`; add url = \"https://...\""));
                None
            }
        };
        let (headers, ca_file, oauth) =
            self.http_credentials(n, rs, secrets, egress, url.as_deref());
        Some(Runtime::Remote(RemoteSpec {
            url: url?,
            headers,
            ca_file,
            oauth,
        }))
    }

    /// A server's `url` (or `base_url`, named by `key`): well-formed, and reachable under its
    /// egress rules when it names a private address.
    pub(super) fn endpoint_url(
        &mut self,
        n: &str,
        u: &Str,
        egress: &Egress,
        key: &str,
    ) -> Option<String> {
        let named = |msg: String| match msg.strip_prefix("url ") {
            Some(rest) => format!("{key} {rest}"),
            None => msg,
        };
        match check_url(u.get_ref()) {
            Ok(()) => {
                if let Some(why) = unreachable_without_rule(u.get_ref(), egress) {
                    self.error(u.span().start, format!("[servers.{n}] {}", named(why)));
                }
                Some(u.get_ref().clone())
            }
            Err(e) => {
                self.error(u.span().start, named(e));
                None
            }
        }
    }

    /// `headers`, `ca_file` and `oauth` of a server the gateway reaches over HTTP (`remote`,
    /// `openapi`); `url` is where requests go.
    pub(super) fn http_credentials(
        &mut self,
        n: &str,
        rs: &RawServer,
        secrets: &BTreeMap<String, SecretRef>,
        egress: &Egress,
        url: Option<&str>,
    ) -> (BTreeMap<String, String>, Option<PathBuf>, Option<OAuth>) {
        // Plain http may carry secrets only to a loopback address: those bytes never leave
        // the machine (this is how a sidecar or a test server on 127.0.0.1 is reached).
        let plain_http = url.is_some_and(|u| u.starts_with("http://") && !is_loopback_url(u));
        let mut headers = BTreeMap::new();
        for (k, v) in rs.headers.iter().flat_map(|h| h.get_ref().iter()) {
            let name = k.get_ref();
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                self.error(k.span().start, format!("invalid HTTP header name `{name}`"));
            }
            match secret_refs(v.get_ref()) {
                Ok(refs) => {
                    for r in &refs {
                        if !secrets.contains_key(r) {
                            self.error(v.span().start, format!("header `{name}` uses ${{secret:{r}}} but [servers.{n}] declares no secret `{r}`; add secrets = {{ {r} = \"env:{r}\" }}"));
                        }
                    }
                    if plain_http && !refs.is_empty() {
                        self.error(v.span().start, format!("header `{name}` would send a secret over plain http; use an https:// url"));
                    }
                }
                Err(e) => self.error(v.span().start, e),
            }
            headers.insert(name.clone(), v.get_ref().clone());
        }
        let ca_file = rs.ca_file.as_ref().map(|p| self.resolve(p.get_ref()));
        let oauth = match &rs.oauth {
            Some(o) => {
                if let Some(k) = rs
                    .headers
                    .iter()
                    .flat_map(|h| h.get_ref().keys())
                    .find(|k| k.get_ref().eq_ignore_ascii_case("authorization"))
                {
                    self.error(k.span().start, format!("header `{}` conflicts with `oauth`, which sends its own `Authorization: Bearer` access token; remove the header", k.get_ref()));
                }
                if plain_http {
                    self.error(o.span().start, "`oauth` would send access tokens over plain http; use an https:// url (plain http is accepted only to a loopback IP literal)");
                }
                self.oauth(n, o, secrets, egress)
            }
            None => None,
        };
        (headers, ca_file, oauth)
    }

    fn roots(&mut self, v: &Option<Vec<Str>>) -> Vec<String> {
        let mut out = Vec::new();
        for r in v.iter().flatten() {
            let uri = r.get_ref();
            if uri.strip_prefix("file:///").is_none() || uri.chars().any(char::is_whitespace) {
                self.error(
                    r.span().start,
                    format!("root \"{uri}\" must be a file:// URI of an absolute path, like \"file:///workspace\""),
                );
            } else {
                out.push(uri.clone());
            }
        }
        out
    }

    fn client_capabilities(&mut self, v: &Option<Vec<Str>>) -> ClientCapabilities {
        let Some(list) = v else {
            return ClientCapabilities::default();
        };
        let mut caps = ClientCapabilities {
            roots: false,
            sampling: false,
            elicitation: false,
        };
        for c in list {
            match c.get_ref().as_str() {
                "roots" => caps.roots = true,
                "sampling" => caps.sampling = true,
                "elicitation" => caps.elicitation = true,
                other => self.error(
                    c.span().start,
                    format!("unknown client capability \"{other}\"; use \"roots\", \"sampling\" or \"elicitation\""),
                ),
            }
        }
        caps
    }

    fn limits(&mut self, l: RawLimits) -> Limits {
        let d = Limits::default();
        let memory_bytes = match self.size(&l.memory, "memory") {
            Some(m) if m < MIN_MEMORY => {
                let at = l.memory.as_ref().map_or(0, |m| m.span().start);
                self.error(
                    at,
                    "`memory` is below Docker's minimum of 6m; use at least \"6m\"",
                );
                d.memory_bytes
            }
            Some(m) => m,
            None => d.memory_bytes,
        };
        let cpus = match l.cpus.as_ref().map(|c| (c.get_ref(), c.span().start)) {
            None => d.cpus,
            Some((v, at)) => {
                let x = match v {
                    Value::Float(f) => Some(*f),
                    Value::Integer(i) => Some(*i as f64),
                    _ => None,
                };
                match x {
                    Some(x) if x.is_finite() && x > 0.0 && x <= 1024.0 => x,
                    _ => {
                        self.error(at, "`cpus` must be a number greater than 0, like 0.5 or 2");
                        d.cpus
                    }
                }
            }
        };
        let pids = self
            .count(&l.pids, "pids", (1, 1 << 22))
            .map_or(d.pids, |n| n as u32);
        Limits {
            memory_bytes,
            cpus,
            pids,
        }
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

    fn client(
        &mut self,
        name: &Str,
        rc: RawClient,
        servers: &BTreeSet<String>,
        tokens: &mut BTreeMap<String, String>,
        gateway_max_sessions: usize,
    ) -> Option<Client> {
        let n = name.get_ref();
        let before = self.diags.len();
        if n.is_empty()
            || n.len() > 64
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            self.error(
                name.span().start,
                format!("client name `{n}` is invalid; use 1-64 letters, digits, `-`, `_` or `.`"),
            );
        }
        if let Some(t) = &rc.token_sha256 {
            let h = t.get_ref();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.error(t.span().start, "`token_sha256` must be 64 hex digits: the SHA-256 of the token, e.g. from `printf %s \"$TOKEN\" | sha256sum`");
            } else if h.bytes().any(|b| b.is_ascii_uppercase()) {
                self.error(
                    t.span().start,
                    format!(
                        "`token_sha256` must be lower-case hex; write \"{}\"",
                        h.to_ascii_lowercase()
                    ),
                );
            } else if let Some(other) = tokens.insert(h.clone(), n.clone()) {
                self.error(t.span().start, format!("client `{n}` has the same token as client `{other}`; give every client its own token"));
            }
        }
        let allow = self.patterns(&rc.allow, true);
        let deny = self.patterns(&rc.deny, true);
        for p in rc.allow.iter().chain(rc.deny.iter()).flatten() {
            self.pattern_server(p, servers);
        }
        let rules = self.client_rules(&rc.rules, servers);
        let confirm_timeout = self.duration(&rc.confirm_timeout, "confirm_timeout");
        let max_waiting_approvals = self.max_waiting_approvals(n, &rc.max_waiting_approvals);
        let quotas = self.client_quotas(n, &rc, gateway_max_sessions);
        if self.diags.len() != before {
            return None;
        }
        let rate = self.rate(&rc.rate);
        Some(Client {
            name: n.clone(),
            token_sha256: rc.token_sha256.map(|t| t.into_inner()),
            jwt_subject: rc.jwt_subject.map(|t| t.into_inner()),
            rate,
            max_sessions: quotas.max_sessions,
            session_rate: quotas.session_rate,
            weight: quotas.weight,
            allow,
            deny,
            rules,
            confirm_timeout,
            max_waiting_approvals,
        })
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

/// `host:port` with a non-empty host and a valid port (IPv6 in brackets).
pub fn validate_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return None;
    }
    Some((host.to_string(), port))
}

fn check_origin(o: &str) -> Result<(), String> {
    let bad = || {
        format!("invalid allowed origin \"{o}\"; write scheme://host[:port] without a path, like \"https://app.example.com\"")
    };
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(bad)?;
    if rest.is_empty() || rest.contains('/') || rest.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok(())
}

/// Whether an `http://` url names a loopback IP literal (127.0.0.0/8 or [::1]).
pub(super) fn is_loopback_url(u: &str) -> bool {
    let rest = u.strip_prefix("http://").unwrap_or(u);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// A remote server's url that names a private, loopback or link-local address as an IP literal can be reached only when a CIDR rule allows it: the gateway refuses such
/// addresses otherwise, at every connection. Returns the address and the rule that allows it.
pub(super) fn private_target_rule(u: &str, egress: &Egress) -> Option<(std::net::IpAddr, String)> {
    let (https, rest) = match u.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, u.strip_prefix("http://")?),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(p) => p.parse::<u16>().ok()?,
        None if https => 443,
        None => 80,
    };
    // Names are checked when they resolve (and by `doctor`): only literals are known here.
    let ip: std::net::IpAddr = host.parse().ok()?;
    if !super::egress::is_special(ip) {
        return None;
    }
    let addr = std::net::SocketAddr::new(ip, port);
    if egress.allow.iter().any(|r| r.covers(addr)) {
        return None;
    }
    let rule = if ip.is_ipv4() {
        format!("{ip}:{port}")
    } else {
        format!("[{ip}]:{port}")
    };
    Some((ip, rule))
}

fn unreachable_without_rule(u: &str, egress: &Egress) -> Option<String> {
    let (ip, rule) = private_target_rule(u, egress)?;
    Some(format!(
        "url \"{u}\" names {ip}, a private/loopback address that remote servers may reach only when an egress rule allows it; every connection would be refused. add egress.allow = [\"{rule}\"]"
    ))
}

pub(super) fn check_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("url \"{u}\" must start with https:// (or http://)"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || u.chars().any(char::is_whitespace) {
        return Err(format!("url \"{u}\" has no valid host; write it like \"https://mcp.example.com/mcp\" (credentials go in headers and secrets, not the url)"));
    }
    Ok(())
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

/// The `NAME`s of every `${secret:NAME}` in a header template.
pub fn secret_refs(t: &str) -> Result<BTreeSet<String>, String> {
    let mut out = BTreeSet::new();
    let mut rest = t;
    while let Some(i) = rest.find("${") {
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unclosed `${` in header value; write ${secret:NAME}".to_string())?;
        let inner = &after[..end];
        match inner.strip_prefix("secret:") {
            Some(name) if is_env_name(name) => {
                out.insert(name.to_string());
            }
            _ => return Err(format!("`${{{inner}}}` in header value is not a secret reference; write ${{secret:NAME}} and declare NAME in `secrets`")),
        }
        rest = &after[end + 1..];
    }
    Ok(out)
}
