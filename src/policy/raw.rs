//! Serde structs mirroring the TOML text exactly, with spans where a later check needs a location.
//!
//! Every struct denies unknown keys. While deserializing, the table path being read is kept in a
//! thread-local so that a serde error (which only knows a byte span) can name the table it is in.

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use toml::{Spanned, Value};

pub type Str = Spanned<String>;
pub type StrMap = BTreeMap<Str, Str>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default, deserialize_with = "in_gateway")]
    pub gateway: Option<RawGateway>,
    /// Gateway-wide egress settings (the resolver, pin lifetimes, the network pool).
    #[serde(default, deserialize_with = "in_egress_settings")]
    pub egress: Option<RawEgressSettings>,
    #[serde(default, deserialize_with = "in_servers")]
    pub servers: Named<RawServer>,
    #[serde(default, deserialize_with = "in_clients")]
    pub clients: Named<RawClient>,
    #[serde(default, deserialize_with = "in_auth")]
    pub auth: Option<RawAuth>,
    #[serde(default, deserialize_with = "in_audit")]
    pub audit: Option<RawAudit>,
    #[serde(default, deserialize_with = "in_telemetry")]
    pub telemetry: Option<RawTelemetry>,
    /// Gateway-wide quota settings (`[limits]`): where a fleet keeps its shared quotas.
    #[serde(default, deserialize_with = "in_shared_limits")]
    pub limits: Option<RawSharedLimits>,
    /// The devcontainer kit's workspace: its own egress rules, written as a server's.
    #[serde(default, deserialize_with = "in_workspace")]
    pub workspace: Option<RawEgress>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub endpoint: Option<Str>,
    pub protocol: Option<Str>,
    pub ca_file: Option<Str>,
    pub headers: Option<Spanned<BTreeMap<String, Str>>>,
    pub sampling: Option<Spanned<f64>>,
    pub service_name: Option<Str>,
    pub timeout: Option<Spanned<Value>>,
    pub queue: Option<Spanned<u64>>,
}

/// `[limits]` at the top level (not a server's `limits`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSharedLimits {
    pub store: Option<Str>,
    pub password: Option<Str>,
    pub on_store_error: Option<Str>,
    pub replicas: Option<Spanned<u64>>,
    pub store_timeout: Option<Spanned<Value>>,
    pub store_ca: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub enabled: Option<Spanned<bool>>,
    pub dir: Option<Str>,
    pub fsync: Option<Str>,
    pub fail_closed: Option<Spanned<bool>>,
    pub signing_key: Option<Str>,
    pub checkpoint_interval: Option<Spanned<Value>>,
    pub checkpoint_every: Option<Spanned<u64>>,
    pub max_segment_bytes: Option<Spanned<Value>>,
    pub rotate_interval: Option<Spanned<Value>>,
    pub record_arguments: Option<Spanned<bool>>,
    #[serde(default, deserialize_with = "in_sinks")]
    pub sinks: Option<Vec<RawSink>>,
    pub key_epoch: Option<Spanned<Value>>,
    #[serde(default, deserialize_with = "in_retention")]
    pub retention: Option<Spanned<RawRetention>>,
    #[serde(default, deserialize_with = "in_witness")]
    pub witness: Option<Vec<RawWitness>>,
}

/// `[audit] retention = { ... }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    pub max_age: Option<Spanned<Value>>,
    pub max_bytes: Option<Spanned<Value>>,
    pub archive_dir: Option<Str>,
}

/// One `[[audit.witness]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWitness {
    #[serde(rename = "type")]
    pub kind: Str,
    pub name: Option<Str>,
    pub path: Option<Str>,
    pub url: Option<Str>,
    pub hmac_secret: Option<Str>,
    pub ca_file: Option<Str>,
}

/// One `[[audit.sinks]]` entry; keys of the other sink types are refused during validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    #[serde(rename = "type")]
    pub kind: Str,
    pub name: Option<Str>,
    pub address: Option<Str>,
    pub tls: Option<Spanned<bool>>,
    pub ca_file: Option<Str>,
    pub server_name: Option<Str>,
    pub format: Option<Str>,
    pub url: Option<Str>,
    pub hec_token: Option<Str>,
    pub hmac_secret: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub listen: Option<Str>,
    pub admin_listen: Option<Str>,
    pub naming: Option<Str>,
    pub allowed_origins: Option<Vec<Str>>,
    pub allowed_hosts: Option<Vec<Str>>,
    pub max_body_bytes: Option<Spanned<Value>>,
    pub max_message_bytes: Option<Spanned<Value>>,
    pub request_timeout: Option<Spanned<Value>>,
    pub session_idle_timeout: Option<Spanned<Value>>,
    pub unused_session_timeout: Option<Spanned<Value>>,
    pub server_log_rate: Option<Spanned<Value>>,
    pub max_sessions: Option<Spanned<u64>>,
    pub page_size: Option<Spanned<u64>>,
    pub list_ttl: Option<Spanned<Value>>,
    pub sse_keepalive: Option<Spanned<Value>>,
    pub sse_poll_interval: Option<Spanned<Value>>,
    #[serde(default, deserialize_with = "in_tls")]
    pub tls: Option<Spanned<RawTls>>,
    pub state_dir: Option<Str>,
    pub instance: Option<Str>,
    pub fleet_key: Option<Str>,
    pub fleet_ca: Option<Str>,
    pub serial: Option<Spanned<u64>>,
    pub list_changed_interval: Option<Spanned<Value>>,
    pub unstable_list_changes: Option<Spanned<u64>>,
    pub unstable_window: Option<Spanned<Value>>,
    pub lock: Option<Str>,
    pub lock_mode: Option<Str>,
    pub require_image_digest: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Str,
    pub key: Str,
    pub client_ca: Option<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(default, deserialize_with = "in_jwt")]
    pub jwt: Option<Spanned<RawJwt>>,
    pub resource: Option<Str>,
    pub authorization_servers: Option<Vec<Str>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub issuer: Str,
    pub audience: Str,
    pub algorithms: Option<Vec<Str>>,
    pub secret: Option<Str>,
    pub public_key: Option<Str>,
    pub jwks: Option<Str>,
    pub client_claim: Option<Str>,
    pub leeway: Option<Spanned<Value>>,
}

/// One `[servers.NAME]` table. It holds the keys of every runtime; validation refuses the ones
/// that do not belong to the chosen runtime, with their location.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub runtime: Str,
    /// A string for `process`, an array for `docker`.
    pub command: Option<Spanned<Value>>,
    pub args: Option<Spanned<Vec<String>>>,
    pub env: Option<Spanned<StrMap>>,
    pub cwd: Option<Str>,
    pub image: Option<Str>,
    pub user: Option<Str>,
    /// A process server may run as uid 0 only with this set.
    pub allow_root: Option<Spanned<bool>>,
    #[serde(default, deserialize_with = "in_mounts")]
    pub mounts: Option<Spanned<Vec<RawMount>>>,
    pub pool: Option<Spanned<u64>>,
    pub url: Option<Str>,
    pub headers: Option<Spanned<StrMap>>,
    pub ca_file: Option<Str>,
    #[serde(default, deserialize_with = "in_oauth")]
    pub oauth: Option<Spanned<RawOAuth>>,
    pub protocol: Option<Str>,
    pub spec: Option<Str>,
    pub base_url: Option<Str>,
    #[serde(default, deserialize_with = "in_operations")]
    pub operations: Option<Spanned<RawPatterns>>,
    pub max_response_bytes: Option<Spanned<Value>>,
    pub lifecycle: Option<Str>,
    #[serde(default, deserialize_with = "in_egress")]
    pub egress: Option<RawEgress>,
    #[serde(default, deserialize_with = "in_limits")]
    pub limits: Option<RawLimits>,
    pub secrets: Option<StrMap>,
    /// `"120/min"` or `{ quota = "120/min", burst = 20 }`.
    pub rate: Option<Spanned<Value>>,
    #[serde(default, deserialize_with = "in_tools")]
    pub tools: Option<RawPatterns>,
    pub startup_timeout: Option<Spanned<Value>>,
    pub request_timeout: Option<Spanned<Value>>,
    pub tool_rates: Option<Spanned<BTreeMap<Str, Spanned<Value>>>>,
    pub max_in_flight: Option<Spanned<u64>>,
    pub queue_timeout: Option<Spanned<Value>>,
    pub max_message_bytes: Option<Spanned<Value>>,
    pub roots: Option<Vec<Str>>,
    pub client_capabilities: Option<Vec<Str>>,
    pub log_rate: Option<Spanned<Value>>,
    pub sanitize: Option<Str>,
}

/// `oauth = { ... }` of a remote server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOAuth {
    pub token_url: Str,
    pub client_id: Str,
    pub client_secret: Option<Str>,
    pub client_auth: Option<Str>,
    pub scope: Option<Str>,
    pub refresh_token: Option<Str>,
    pub audience: Option<Str>,
    pub resource: Option<Str>,
    pub issuer: Option<Str>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMount {
    pub source: Str,
    pub target: Str,
    pub read_only: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    pub allow: Option<Vec<Str>>,
    pub dns_rate: Option<Spanned<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgressSettings {
    pub upstream_resolvers: Option<Vec<Str>>,
    pub pin_ttl_min: Option<Spanned<Value>>,
    pub pin_ttl_max: Option<Spanned<Value>>,
    pub max_addresses_per_name: Option<Spanned<u64>>,
    pub network_pool: Option<Str>,
    pub allow_unconfined_process: Option<bool>,
    pub mode: Option<Str>,
    pub agent_image: Option<Str>,
    pub dns_rate: Option<Spanned<Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub memory: Option<Spanned<Value>>,
    pub cpus: Option<Spanned<Value>>,
    pub pids: Option<Spanned<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPatterns {
    pub allow: Option<Vec<Str>>,
    pub deny: Option<Vec<Str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub token_sha256: Option<Str>,
    pub jwt_subject: Option<Str>,
    pub rate: Option<Spanned<Value>>,
    pub max_sessions: Option<Spanned<u64>>,
    pub session_rate: Option<Spanned<Value>>,
    pub weight: Option<Spanned<u64>>,
    pub allow: Option<Vec<Str>>,
    pub deny: Option<Vec<Str>>,
    #[serde(default, deserialize_with = "in_rules")]
    pub rules: Option<Vec<Spanned<RawRule>>>,
    pub confirm_timeout: Option<Spanned<Value>>,
    pub max_waiting_approvals: Option<Spanned<u64>>,
}

/// `[[clients.NAME.rules]]`: one of `allow`, `deny`, `confirm`, and an optional `when`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub allow: Option<Vec<Str>>,
    pub deny: Option<Vec<Str>>,
    pub confirm: Option<Vec<Str>>,
    pub when: Option<Str>,
}

/// A table of named entries in document order, keeping each name's span.
#[derive(Debug)]
pub struct Named<T>(pub Vec<(Str, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of named entries")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = map.next_key::<Str>()? {
                    let value = within(name.get_ref(), || map.next_value::<T>())?;
                    out.push((name, value));
                }
                Ok(Named(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

thread_local! {
    static PATH: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `segment` appended to the current table path. The segment stays on failure:
/// deserialization stops at the first error, so what is left is the path of the failing table.
fn within<T, E>(segment: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    PATH.with(|p| p.borrow_mut().push(segment.to_string()));
    let r = f();
    if r.is_ok() {
        PATH.with(|p| {
            p.borrow_mut().pop();
        });
    }
    r
}

/// Deserializes a whole document, returning the table path at the point of failure with the error.
pub fn from_str(src: &str) -> Result<RawPolicy, (toml::de::Error, Vec<String>)> {
    PATH.with(|p| p.borrow_mut().clear());
    let r = toml::from_str::<RawPolicy>(src);
    let path = PATH.with(|p| std::mem::take(&mut *p.borrow_mut()));
    r.map_err(|e| (e, path))
}

macro_rules! in_table {
    ($name:ident, $segment:literal, $ty:ty) => {
        fn $name<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
            within($segment, || <$ty>::deserialize(d))
        }
    };
}

in_table!(in_gateway, "gateway", Option<RawGateway>);
in_table!(in_egress_settings, "egress", Option<RawEgressSettings>);
in_table!(in_servers, "servers", Named<RawServer>);
in_table!(in_clients, "clients", Named<RawClient>);
in_table!(in_audit, "audit", Option<RawAudit>);
in_table!(in_telemetry, "telemetry", Option<RawTelemetry>);
in_table!(in_workspace, "workspace", Option<RawEgress>);
in_table!(in_rules, "rules", Option<Vec<Spanned<RawRule>>>);
in_table!(in_sinks, "sinks", Option<Vec<RawSink>>);
in_table!(in_witness, "witness", Option<Vec<RawWitness>>);
in_table!(in_retention, "retention", Option<Spanned<RawRetention>>);
in_table!(in_mounts, "mounts", Option<Spanned<Vec<RawMount>>>);
in_table!(in_egress, "egress", Option<RawEgress>);
in_table!(in_limits, "limits", Option<RawLimits>);
in_table!(in_shared_limits, "limits", Option<RawSharedLimits>);
in_table!(in_auth, "auth", Option<RawAuth>);
in_table!(in_jwt, "jwt", Option<Spanned<RawJwt>>);
in_table!(in_tls, "tls", Option<Spanned<RawTls>>);
in_table!(in_tools, "tools", Option<RawPatterns>);
in_table!(in_oauth, "oauth", Option<Spanned<RawOAuth>>);
in_table!(in_operations, "operations", Option<Spanned<RawPatterns>>);
