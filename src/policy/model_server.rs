//! The validated `[servers.NAME]` tables: how each server runs (process, docker, remote,
//! openapi), its OAuth, egress rules and quotas. Part of the policy model (see `model.rs`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::model::*;
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
