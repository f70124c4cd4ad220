//! The validated policy: plain types that the rest of the gateway reads.
//!
//! Parsing and validation (with file:line:column errors) turn a TOML document into these;
//! nothing downstream of `policy` ever sees raw TOML.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::glob::glob_match;

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
    /// The collector's base URL (`http://host:4318` for OTLP/HTTP, `http://host:4317` for gRPC);
    /// for OTLP/HTTP `/v1/traces` is appended unless the URL already ends with it.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
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

/// The `[audit]` table: where and how the tamper-evident audit log is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    pub enabled: bool,
    /// Resolved against the policy file's directory when relative.
    pub dir: PathBuf,
    pub fsync: FsyncMode,
    /// Refuse calls when the log cannot be written.
    pub fail_closed: bool,
    /// Private key for checkpoints; `None` = `DIR/signing.key`, generated at first start.
    pub signing_key: Option<PathBuf>,
    pub checkpoint_interval: Duration,
    pub checkpoint_every: u64,
    pub max_segment_bytes: u64,
    pub rotate_interval: Duration,
    /// Write call arguments (redacted) besides their SHA-256.
    pub record_arguments: bool,
    /// Each checkpoint key signs for this long, then certifies the next and is destroyed;
    /// `None` (`key_epoch = "off"`): one key for the life of the log.
    pub key_epoch: Option<Duration>,
    pub sinks: Vec<AuditSink>,
    /// Where checkpoints and key rotations are also written, for `audit verify --witness`.
    pub witnesses: Vec<AuditSink>,
    /// How long sealed segments are kept; `None`: forever.
    pub retention: Option<AuditRetention>,
}

/// `[audit] retention = { max_age, max_bytes, archive_dir }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRetention {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    /// Removed segments are gzipped here; `None`: deleted.
    pub archive_dir: Option<PathBuf>,
}

/// Default audit directory, relative to the policy file (or the working directory for the
/// embedded default policy).
pub const DEFAULT_AUDIT_DIR: &str = "portcullis-audit";

impl Default for Audit {
    fn default() -> Self {
        Audit {
            enabled: true,
            dir: PathBuf::from(DEFAULT_AUDIT_DIR),
            fsync: FsyncMode::Group,
            fail_closed: true,
            signing_key: None,
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_every: 10_000,
            max_segment_bytes: 64 << 20,
            rotate_interval: Duration::from_secs(24 * 3600),
            record_arguments: false,
            key_epoch: Some(Duration::from_secs(3600)),
            sinks: Vec::new(),
            witnesses: Vec::new(),
            retention: None,
        }
    }
}

/// When an appended record counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// `fdatasync` after every record.
    Always,
    /// One `fdatasync` per batch of queued records (group commit).
    Group,
    /// After `write(2)` only: survives a gateway crash, not a machine crash.
    None,
}

impl FsyncMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FsyncMode::Always => "always",
            FsyncMode::Group => "group",
            FsyncMode::None => "none",
        }
    }
}

/// One `[[audit.sinks]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditSink {
    /// Names the sink's cursor file `DIR/cursors/NAME.json`; default `TYPE-N` (1-based).
    pub name: String,
    pub kind: SinkKind,
    /// A witness: only checkpoints and key rotations are sent.
    pub witness: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SinkKind {
    /// RFC 5424 over TCP (octet counting), optionally TLS.
    Syslog {
        /// `host:port`.
        address: String,
        tls: bool,
        ca_file: Option<PathBuf>,
        /// TLS server name; default the host part of `address`.
        server_name: Option<String>,
        format: SinkFormat,
    },
    /// Splunk HEC (`hec_token`) or a generic webhook (`hmac_secret`).
    Http {
        url: String,
        auth: HttpSinkAuth,
        ca_file: Option<PathBuf>,
    },
    /// The local systemd journal.
    Journald,
    /// Appended to `DIR/witness-LOG_ID.jsonl` with an fsync per batch (a witness on another
    /// volume or mount).
    WitnessDir { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkFormat {
    Json,
    Cef,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpSinkAuth {
    HecToken(SecretRef),
    HmacSecret(SecretRef),
    None,
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

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    pub name: String,
    pub runtime: Runtime,
    pub lifecycle: Lifecycle,
    pub egress: Egress,
    pub limits: Limits,
    /// Environment variable name -> where its value comes from.
    pub secrets: BTreeMap<String, SecretRef>,
    pub rate: Option<Rate>,
    pub tools: ToolFilter,
    /// Time allowed for start-up plus the initialize handshake.
    pub startup_timeout: Duration,
    /// Overrides the gateway's request timeout for this server.
    pub request_timeout: Option<Duration>,
    /// Quotas for single tools (upstream names), shared by every client.
    pub tool_rates: BTreeMap<String, Rate>,
    /// Calls in flight at this server at once; more wait in a bounded queue.
    pub max_in_flight: Option<u32>,
    /// How long a call may wait for a free slot before it is refused.
    pub queue_timeout: Duration,
    /// Largest message this server may send (and the gateway may relay from it): its own
    /// `max_message_bytes`, else the gateway's.
    pub max_message_bytes: usize,
    /// What the gateway answers the server's `roots/list` with when no client session can be
    /// asked (shared servers between calls, clients without roots): `file://` URIs.
    pub roots: Vec<String>,
    /// Client capabilities the gateway declares to the server in its `initialize`.
    pub client_capabilities: ClientCapabilities,
    /// Which protocol era the gateway speaks to the server.
    pub protocol: ProtocolChoice,
    /// Overrides `[gateway] server_log_rate` for this server.
    pub log_rate: Option<Rate>,
    /// Hidden characters in this server's definitions and answers.
    pub sanitize: Sanitize,
}

/// The client capabilities declared to a server. Sampling and elicitation requests are relayed
/// to the client session that caused them (refused when it lacks the capability); roots are
/// relayed too, or answered from the server's `roots` when no session can be asked. Leaving one
/// out hides features from servers that adapt their tools to what the client can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientCapabilities {
    pub roots: bool,
    pub sampling: bool,
    pub elicitation: bool,
}

impl Default for ClientCapabilities {
    fn default() -> Self {
        ClientCapabilities {
            roots: true,
            sampling: true,
            elicitation: true,
        }
    }
}

/// How the server is run or reached.
#[derive(Debug, Clone, PartialEq)]
pub enum Runtime {
    /// A child process of the gateway speaking MCP over stdio.
    Process(ProcessSpec),
    /// A hardened container speaking MCP over its attached stdio.
    Docker(DockerSpec),
    /// A remote MCP server over Streamable HTTP (or legacy SSE).
    Remote(RemoteSpec),
    /// A REST API described by an OpenAPI document; each operation is a tool.
    OpenApi(OpenApiSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSpec {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<PathBuf>,
    /// The uid and gid the server runs as when the gateway is root (default 65534:65534).
    pub user: ProcessUser,
    /// Host paths bound into the server's read-only view (`target` is a host path too).
    pub mounts: Vec<Mount>,
}

/// `user` of a process server; uid 0 only with `allow_root = true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessUser {
    pub uid: u32,
    pub gid: u32,
}

impl Default for ProcessUser {
    fn default() -> ProcessUser {
        ProcessUser {
            uid: 65534,
            gid: 65534,
        }
    }
}

impl std::fmt::Display for ProcessUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DockerSpec {
    /// As written: `name[:tag]`, optionally followed by `@sha256:<64 hex>` (pinned).
    pub image: String,
    /// Overrides the image's command when non-empty.
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub user: Option<String>,
    pub mounts: Vec<Mount>,
    pub pool: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSpec {
    pub url: String,
    /// Header name -> value template (may reference `${secret:NAME}`).
    pub headers: BTreeMap<String, String>,
    /// PEM bundle of the CAs trusted for this server's TLS, instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// The gateway gets its own access token for this server from an OAuth authorization
    /// server and sends it as `Authorization: Bearer`.
    pub oauth: Option<OAuth>,
}

/// `protocol` of a server: probe for 2026-07-28 and fall back (`auto`), or pin an era.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProtocolChoice {
    /// `server/discover` first; the initialize handshake when the server does not answer it as
    /// a 2026-07-28 server.
    #[default]
    Auto,
    /// The initialize handshake only (2025-11-25 and earlier), no probe.
    Legacy,
    /// 2026-07-28 only: a server that does not speak it fails to start, with the reason.
    Modern,
}

impl ProtocolChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolChoice::Auto => "auto",
            ProtocolChoice::Legacy => "legacy",
            ProtocolChoice::Modern => "2026-07-28",
        }
    }
}

/// A REST API served as MCP tools (`runtime = "openapi"`): the gateway itself makes the HTTP
/// requests, with the same egress check, credentials and redaction as for a remote server.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenApiSpec {
    /// The OpenAPI document, resolved against the policy file's directory.
    pub spec: PathBuf,
    /// Where requests go (the document's own `servers` are ignored: the policy decides).
    pub base_url: String,
    /// Header name -> value template (may reference `${secret:NAME}`).
    pub headers: BTreeMap<String, String>,
    pub ca_file: Option<PathBuf>,
    pub oauth: Option<OAuth>,
    /// Which operations become tools: globs over the operationId or `METHOD /path`.
    pub operations: ToolFilter,
    /// Larger answers become tool errors.
    pub max_response_bytes: u64,
    /// The tools the document makes, read when the policy was validated.
    pub api: std::sync::Arc<crate::openapi::Api>,
}

/// OAuth 2.1 client settings of a remote server (the gateway is the OAuth client).
#[derive(Debug, Clone, PartialEq)]
pub struct OAuth {
    pub token_url: String,
    /// The authorization server's issuer identifier (RFC 8414). Set, the gateway checks the
    /// server's metadata names this issuer and `token_url` before it sends credentials, and
    /// the token cache is keyed by it.
    pub issuer: Option<String>,
    pub client_id: String,
    /// Name of the server secret holding the client secret (`${secret:NAME}`).
    pub client_secret: Option<String>,
    pub client_auth: ClientAuth,
    pub scope: Option<String>,
    /// Name of the server secret holding the first refresh token; set, it selects the
    /// refresh_token grant.
    pub refresh_token: Option<String>,
    /// RFC 8707 resource indicator.
    pub resource: Option<String>,
    /// The `audience` parameter some authorization servers want instead of `resource`.
    pub audience: Option<String>,
    /// Where the tokens are cached between runs: `STATE_DIR/oauth/SERVER.json`.
    pub cache_file: PathBuf,
}

impl OAuth {
    pub fn grant(&self) -> OAuthGrant {
        if self.refresh_token.is_some() {
            OAuthGrant::RefreshToken
        } else {
            OAuthGrant::ClientCredentials
        }
    }

    /// The cache file of server `server` under state directory `dir`.
    pub fn cache_file_in(dir: &std::path::Path, server: &str) -> PathBuf {
        dir.join("oauth").join(format!("{server}.json"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthGrant {
    ClientCredentials,
    RefreshToken,
}

/// How the client authenticates to the token endpoint (RFC 6749 section 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (`client_secret_basic`).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Shared,
    PerSession,
    PerCall,
}

/// Allowed egress destinations. Empty means no network at all (default deny).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Egress {
    pub allow: Vec<EgressRule>,
    /// This server's own DNS budget; `None` follows `[egress] dns_rate`.
    pub dns_rate: Option<Rate>,
}

impl Egress {
    /// The DNS budget in force for this server.
    pub fn dns_rate_in(&self, settings: &EgressSettings) -> Rate {
        self.dns_rate.unwrap_or(settings.dns_rate)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EgressRule {
    pub host: EgressHost,
    /// `None` means any port.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum EgressHost {
    /// An exact DNS name, lower-cased, without a trailing dot.
    Name(String),
    /// `*.example.com`: any name strictly below `example.com` (not `example.com` itself).
    Wildcard(String),
    /// An address range in CIDR form; a single address is a /32 or /128.
    Cidr { addr: std::net::IpAddr, prefix: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub cpus: f64,
    pub pids: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 512 * 1024 * 1024,
            cpus: 1.0,
            pids: 128,
        }
    }
}

/// Where a secret value is read from. The value itself is never stored in the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `env:NAME`
    Env(String),
    /// `file:/run/secrets/x`
    File(PathBuf),
    /// `dotenv:.env#NAME`
    Dotenv { path: PathBuf, key: String },
}

/// A quota such as `"120/min"` with an optional burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

/// Tool name patterns (`*` globs) matched against the upstream tool name.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolFilter {
    /// Empty means every tool.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
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
