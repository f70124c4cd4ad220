//! The validated policy: plain types that the rest of the gateway reads.
//!
//! Parsing and validation (with file:line:column errors) turn a TOML document into these;
//! nothing downstream of `policy` ever sees raw TOML.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::glob::glob_match;
pub use super::model_audit::*;
pub use super::model_server::*;

/// A complete, validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Where the policy came from (a path, or `<embedded default>`), for messages.
    pub origin: String,
    pub gateway: Gateway,
    /// Gateway-wide egress settings (`[egress]`).
    pub egress: EgressSettings,
    /// Servers by name. Names match `^[a-zA-Z0-9-]{1,32}$` so that `name__tool` stays readable.
    pub servers: BTreeMap<String, Server>,
    /// Clients by name: who may connect, with which credentials, to which tools, how often.
    pub clients: BTreeMap<String, Client>,
    /// The audit log and its SIEM sinks.
    pub audit: Audit,
    /// How clients prove who they are beyond static tokens (JWT), and what the gateway
    /// advertises about it.
    pub auth: Auth,
    /// OpenTelemetry trace export (`[telemetry]`); `None`: no spans are made.
    pub telemetry: Option<Telemetry>,
    /// Where quotas are kept when several replicas share them (`[limits]`).
    pub limits: super::fleet::SharedLimits,
    /// `[workspace]`: where the devcontainer kit's workspace (the agent's own container) may
    /// connect, in the syntax of a server's `egress.allow`. `None` without the section. The
    /// egress agent of the kit enforces it; the gateway itself only validates and shows it.
    pub workspace: Option<Egress>,
}

/// `[telemetry]`: where and how the gateway exports its trace spans (OTLP).
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// The collector's base URL (`http://host:4318` for OTLP/HTTP, `http://host:4317` for gRPC;
    /// `https://` for TLS); for OTLP/HTTP `/v1/traces` is appended unless the URL already ends
    /// with it.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// With an https endpoint: trust only the CAs in this PEM file (resolved against the
    /// policy's directory) instead of the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// Request headers (OTLP/HTTP) or metadata (gRPC), e.g. `Authorization`.
    pub headers: Vec<(String, HeaderValue)>,
    /// Share of new traces kept, 0.0 to 1.0; a caller's sampled flag is followed.
    pub sampling: f64,
    pub service_name: String,
    /// Longest one export may take; a slower collector loses that batch, never a call.
    pub timeout: Duration,
    /// Spans waiting for export at most; more are dropped (and counted).
    pub queue: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    Grpc,
}

/// A header value: written in the policy, or a secret read at start-up.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderValue {
    Literal(String),
    Secret(SecretRef),
}

/// Client authentication settings besides per-client token hashes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Auth {
    pub jwt: Option<Jwt>,
    /// This gateway's public URL as an OAuth protected resource (RFC 9728 `resource`).
    pub resource: Option<String>,
    /// Authorization servers named in the protected-resource metadata.
    pub authorization_servers: Vec<String>,
}

/// JSON Web Token verification.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    pub issuer: String,
    pub audience: String,
    /// Accepted `alg` values; never `none`.
    pub algorithms: Vec<JwtAlgorithm>,
    pub key: JwtKey,
    /// The claim whose value names the client (`sub` by default).
    pub client_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
    EdDsa,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JwtKey {
    /// Shared secret for HS256, read like any other secret.
    Secret(SecretRef),
    /// A PEM public key (RSA or Ed25519).
    PublicKeyPem(PathBuf),
    /// A JWKS document on disk.
    Jwks(PathBuf),
}

/// The listener's TLS identity and, for mTLS, the CA that client certificates must chain to.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The listener and protocol-level settings of the gateway itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub listen: SocketAddr,
    /// A loopback listener that serves `/health`, `/ready` and `/metrics` (without a token);
    /// when set, the main listener no longer serves `/ready` and `/metrics`.
    pub admin_listen: Option<SocketAddr>,
    pub naming: Naming,
    /// Extra `Origin` values accepted besides loopback origins (exact match, e.g. `https://app.example`).
    pub allowed_origins: Vec<String>,
    /// Extra `Host` header values accepted besides loopback hosts (host or host:port).
    pub allowed_hosts: Vec<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Largest JSON-RPC message read from a server or sent to a client; servers may override it.
    pub max_message_bytes: usize,
    /// How long an upstream may take to answer one request before the client gets an error.
    pub request_timeout: Duration,
    /// Sessions with no request for this long are closed.
    pub session_idle_timeout: Duration,
    /// Sessions that only initialized or listed (no call, no read, no stream held open) are
    /// closed after this long without a request: health checks such as `claude mcp list` and
    /// the Inspector's CLI never send DELETE. Never longer than `session_idle_timeout`.
    pub unused_session_timeout: Duration,
    /// How many lines of a server's stderr reach the gateway's log (per server, every instance
    /// together); beyond it lines are counted, not logged. A server's `log_rate` overrides it.
    pub server_log_rate: Rate,
    /// Upper bound on concurrently open sessions.
    pub max_sessions: usize,
    /// Items per page in aggregated `*/list` answers.
    pub page_size: usize,
    /// How long 2026-07-28 clients may consider the gateway's lists fresh (`ttlMs`); list
    /// changes still reach `subscriptions/listen` streams at once.
    pub list_ttl: Duration,
    /// Interval between SSE keep-alive comments.
    pub sse_keepalive: Duration,
    /// When set, a POST's SSE stream is closed after this long and the client resumes it with
    /// `GET` + `Last-Event-ID` (SSE polling, SEP-1699): no connection is held open for the whole
    /// of a long call, which suits proxies with idle timeouts.
    pub sse_poll_interval: Option<Duration>,
    /// TLS for the listener; required (with client authentication) off loopback.
    pub tls: Option<Tls>,
    /// Where the gateway keeps state between runs (the OAuth token caches, the instance lock);
    /// resolved against the policy file's directory when relative.
    pub state_dir: PathBuf,
    /// The gateway's instance id (`crate::instance`): names every kernel and Docker object it
    /// makes. `None`: derived from `state_dir`.
    pub instance: Option<String>,
    /// `[gateway] fleet_key`: the secret every replica of a fleet seals `requestState` and task
    /// handles with, so that a replica can check what another issued. `None`: a key per process.
    pub fleet_key: Option<SecretRef>,
    /// `[gateway] fleet_ca`: a PEM file of the CA(s) that signed the other replicas' listener
    /// certificates, the only roots trusted when forwarding to an `https://` replica. `None`:
    /// the system's trust store (a replica with a private CA is then refused, never reached in
    /// clear).
    pub fleet_ca: Option<PathBuf>,
    /// The policy's version number (`[gateway] serial`). A gateway that requires signed
    /// policies loads none without it and none whose serial is lower than the one in force.
    pub serial: Option<u64>,
    /// How servers' list changes are paced and when a server counts as unstable.
    pub list_changes: ListChanges,
    /// The approved tool definitions (`[gateway] lock`), and what a difference from them does.
    pub lock: Option<LockSettings>,
    /// Docker servers must name their image by digest (`name@sha256:...`).
    pub require_image_digest: bool,
}

/// `[gateway] lock` and `lock_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockSettings {
    /// The lock file written by `portcullis tools lock`; resolved against the policy file's
    /// directory when relative.
    pub path: PathBuf,
    pub mode: LockMode,
}

/// What a definition (or image) that differs from the lock does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// Withheld from lists and refused on call; a docker server whose image differs does not
    /// start.
    Enforce,
    /// Shown and callable; logged, audited and counted.
    Warn,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Enforce => "enforce",
            LockMode::Warn => "warn",
        }
    }
}

/// `[servers.X] sanitize`: what happens to hidden characters (ANSI escapes, zero-width, bidi
/// controls, Unicode tags) in a server's definitions and answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sanitize {
    /// Removed before a client sees them.
    #[default]
    Strip,
    /// A definition holding one is withheld; an answer holding one becomes an error.
    Refuse,
    /// Passed through.
    Off,
}

impl Sanitize {
    pub fn as_str(self) -> &'static str {
        match self {
            Sanitize::Strip => "strip",
            Sanitize::Refuse => "refuse",
            Sanitize::Off => "off",
        }
    }
}

/// `[gateway] list_changed_interval`, `unstable_list_changes` and `unstable_window`: what keeps
/// a server that floods `*/list_changed` from reaching every client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListChanges {
    /// At most one `*/list_changed` per session and list (and one `resources/updated` per
    /// session and URI), and one list request per server and list, this often.
    pub interval: Duration,
    /// More list changes than this from one server within `window` are audited as
    /// `catalog_unstable`.
    pub unstable_after: u64,
    pub window: Duration,
}

impl Default for ListChanges {
    fn default() -> Self {
        ListChanges {
            interval: Duration::from_millis(250),
            unstable_after: 60,
            window: Duration::from_secs(60),
        }
    }
}

/// Default state directory, relative to the policy file (or the working directory for the
/// embedded default policy).
pub const DEFAULT_STATE_DIR: &str = "portcullis-state";

/// Gateway-wide egress settings: how the pinning resolver answers and where sandbox networks live.
#[derive(Debug, Clone, PartialEq)]
pub struct EgressSettings {
    /// Where the pinning resolver forwards allowed questions. Empty means sandboxes resolve
    /// nothing (every name query is refused), which is the safe default.
    pub upstream_resolvers: Vec<SocketAddr>,
    /// A pin lives at least this long even when the answer's TTL is shorter, so that a client
    /// that connects a moment after a TTL-0 answer is not refused.
    pub pin_ttl_min: Duration,
    /// A pin lives at most this long even when the TTL is longer, so rotated-away addresses close.
    pub pin_ttl_max: Duration,
    /// Addresses taken from one answer; the rest are dropped from the answer (and not pinned).
    pub max_addresses_per_name: usize,
    /// The IPv4 range per-server networks (/29 each) are carved from.
    pub network_pool: (std::net::Ipv4Addr, u8),
    /// Whether a `process` server with egress rules may run without enforcement when the
    /// gateway is not root (it then has the host's network). Off: such servers do not start.
    pub allow_unconfined_process: bool,
    /// Where docker servers' tables live (`[egress] mode`); see [`EgressMode`].
    pub mode: EgressMode,
    /// The image of the egress agent containers (sidecar mode). `None`: the image of the
    /// container the gateway itself runs in.
    pub agent_image: Option<String>,
    /// Questions each server's resolver may forward to the upstream resolvers (cache misses);
    /// beyond it the sandbox gets REFUSED. A server's `egress.dns_rate` overrides it.
    pub dns_rate: Rate,
}

/// Where the nftables table of a docker server lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EgressMode {
    /// Not written: `host` when the gateway is in the host's network namespace, `sidecar`
    /// otherwise (decided at start, see `egress::mode`).
    #[default]
    Auto,
    /// One table in the gateway's (the host's) network namespace judges every server bridge.
    Host,
    /// Each server's network namespace is owned by a `portcullis egress-agent` container that
    /// programs the table there; the server container joins that namespace.
    Sidecar,
}

impl EgressMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Auto => "auto",
            EgressMode::Host => "host",
            EgressMode::Sidecar => "sidecar",
        }
    }
}

/// The uid the egress agent runs as in sidecar mode. Its DNS to the upstream resolvers is told
/// apart from the server's by this socket owner (`meta skuid`), so no server may run as it.
pub const AGENT_UID: u32 = 65533;

/// 50 questions a second per server, bursts of 100: far above what a well-behaved server asks
/// once its answers are cached, far below what would load a shared resolver.
pub const DEFAULT_DNS_RATE: Rate = Rate {
    count: 50,
    per: Duration::from_secs(1),
    burst: 100,
};

impl Default for EgressSettings {
    fn default() -> Self {
        EgressSettings {
            upstream_resolvers: Vec::new(),
            pin_ttl_min: Duration::from_secs(5),
            pin_ttl_max: Duration::from_secs(300),
            max_addresses_per_name: 8,
            network_pool: (std::net::Ipv4Addr::new(10, 213, 0, 0), 16),
            allow_unconfined_process: false,
            mode: EgressMode::Auto,
            agent_image: None,
            dns_rate: DEFAULT_DNS_RATE,
        }
    }
}

/// How aggregated tool and prompt names are formed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `passthrough` when exactly one server is configured, `prefix` otherwise.
    Auto,
    /// `server__tool`.
    Prefix,
    /// Upstream names unchanged (only valid with one server).
    Passthrough,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Client {
    pub name: String,
    /// Hex SHA-256 of the client's bearer token.
    pub token_sha256: Option<String>,
    /// The JWT claim value (see `auth.jwt.client_claim`) that identifies this client.
    pub jwt_subject: Option<String>,
    /// This client's quota across all its calls.
    pub rate: Option<Rate>,
    /// Sessions it may hold open at once; `None`: the default share ([`Policy::client_quotas`]).
    pub max_sessions: Option<usize>,
    /// How fast it may open sessions; `None`: the default.
    pub session_rate: Option<Rate>,
    /// Its share of a contended server's call slots against other clients'; `None`: 1.
    pub weight: Option<u32>,
    /// `server__tool` patterns (`*` globs).
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    /// `[[clients.NAME.rules]]`, in the order written: patterns with an effect and an optional
    /// `when` condition on the call.
    pub rules: Vec<ClientRule>,
    /// How long a `confirm` question waits for the person's answer; `None`: 120 s.
    pub confirm_timeout: Option<std::time::Duration>,
    /// How many of its `confirm` questions may wait for an answer at once; `None`: 16. The
    /// gateway holds at most 1024 in all, so one client's flood cannot take every slot.
    pub max_waiting_approvals: Option<usize>,
}

/// What a `[[clients.NAME.rules]]` entry does when its patterns match and its `when` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Grants the call.
    Allow,
    /// Refuses the call.
    Deny,
    /// The call, granted by an allow, needs a person's approval first.
    Confirm,
}

impl Effect {
    pub fn key(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Confirm => "confirm",
        }
    }
}

/// One `[[clients.NAME.rules]]` entry, its condition already compiled (so a policy that loads
/// has only conditions that compile).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRule {
    pub effect: Effect,
    /// `server__item` patterns, as for `allow`/`deny`.
    pub patterns: Vec<String>,
    pub when: Option<std::sync::Arc<crate::access::condition::Condition>>,
}

impl ClientRule {
    /// The rule in one line, as records and `policy show` print it.
    pub fn text(&self) -> String {
        let patterns: Vec<String> = self.patterns.iter().map(|p| format!("{p:?}")).collect();
        let mut t = format!("{} = [{}]", self.effect.key(), patterns.join(", "));
        if let Some(w) = &self.when {
            t.push_str(&format!(" when {}", w.source()));
        }
        t
    }
}

impl DockerSpec {
    /// The digest the image is pinned to (`sha256:...`), when `image` names one.
    pub fn pinned_digest(&self) -> Option<&str> {
        self.image.rsplit_once('@').map(|(_, d)| d)
    }
}

impl Policy {
    /// Moves the state directory (e.g. `serve --state-dir`), and with it every token cache.
    pub fn set_state_dir(&mut self, dir: PathBuf) {
        for server in self.servers.values_mut() {
            let oauth = match &mut server.runtime {
                Runtime::Remote(RemoteSpec { oauth, .. }) => oauth.as_mut(),
                Runtime::OpenApi(OpenApiSpec { oauth, .. }) => oauth.as_mut(),
                _ => None,
            };
            if let Some(o) = oauth {
                o.cache_file = OAuth::cache_file_in(&dir, &server.name);
            }
        }
        self.gateway.state_dir = dir;
    }

    /// Whether clients must authenticate: some client has a token, or JWTs are configured.
    pub fn requires_auth(&self) -> bool {
        self.auth.jwt.is_some()
            || self
                .clients
                .values()
                .any(|c| c.token_sha256.is_some() || c.jwt_subject.is_some())
    }

    /// Why serving this policy would be unsafe, if it would: a listener off loopback without
    /// TLS and client authentication. `gateway.listen` is checked when the file is validated;
    /// this is for what is actually bound (`--listen`) and for reloads.
    pub fn listener_exposure(&self) -> Option<String> {
        let addr = self.gateway.listen;
        if addr.ip().is_loopback() {
            return None;
        }
        let mut missing = Vec::new();
        if self.gateway.tls.is_none() {
            missing.push("TLS ([gateway.tls] cert and key)");
        }
        if !self.requires_auth() {
            missing.push("client authentication ([clients.NAME] token_sha256 or [auth.jwt])");
        }
        if missing.is_empty() {
            return None;
        }
        Some(format!(
            "refusing to listen on {addr}: it is not a loopback address, and anything that can reach it could use every tool behind this gateway; configure {} or listen on 127.0.0.1",
            missing.join(" and ")
        ))
    }

    /// The naming mode in effect once `auto` is resolved against the server count.
    pub fn effective_naming(&self) -> Naming {
        match self.gateway.naming {
            Naming::Auto if self.servers.len() == 1 => Naming::Passthrough,
            Naming::Auto => Naming::Prefix,
            other => other,
        }
    }
}

impl ToolFilter {
    /// Whether `tool` passes this filter: deny wins, then an empty allow list allows all.
    pub fn permits(&self, tool: &str) -> bool {
        if self.deny.iter().any(|p| glob_match(p, tool)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|p| glob_match(p, tool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_user_expects() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("git_*", "git_status"));
        assert!(!glob_match("git_*", "xgit_status"));
        assert!(glob_match("*_status", "git_status"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn deny_wins_over_allow() {
        let f = ToolFilter {
            allow: vec!["*".into()],
            deny: vec!["delete_*".into()],
        };
        assert!(f.permits("read_file"));
        assert!(!f.permits("delete_repo"));
    }
}
