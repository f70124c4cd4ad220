//! Egress enforcement: nftables rules per sandboxed server, the pinning resolver, networks.
//!
//! One [`Egress`] serves one gateway instance: its table, interfaces and namespaces are named
//! from the instance id ([`names::Names`], in [`EgressOptions::names`]), so several gateways
//! share a network namespace without touching each other's objects. The table is owned by the
//! service's one netlink socket when the kernel allows it ([`Protection`], see `table.rs`).
//!
//! How a runtime uses it (both the Docker and the process runtime), per server:
//! 1. `let subnet = egress.allocate_subnet(&server.name)?` — a /29 from `[egress] network_pool`
//!    that no interface of the namespace has an address in (see `subnets.rs`).
//! 2. Create the attachment on it: a Docker bridge network ([`network::create`]) or a network
//!    namespace with a veth pair ([`netns::ProcessNet::create`]).
//! 3. `let prepared = egress.prepare(server, attachment).await?` — programs the rules keyed by
//!    the host-side interface (atomically, read back and verified) and starts the resolver on
//!    the gateway address. **If this fails the sandbox must not be started** (fail closed).
//! 4. Start the sandbox with `prepared.resolver` as its only DNS server.
//! 5. When the last instance of the server is gone: `egress.release(&server.name).await`, then
//!    remove the attachment and `egress.free_subnet(&server.name)`.
//!
//! `prepare`/`release` are reference counted per server: each instance of a per-session server
//! calls `prepare` and `release` once; the rules and the resolver stay while any instance runs.
//! The runtimes do all of this through `sandbox::firewall::Firewall::attach`/`detach`, once per
//! server network (see `sandbox::leases`). [`Egress::reprogram`] applies changed rules to a
//! prepared server in place (policy reload).
//!
//! Events (denials, tamper restores, failed restores) arrive on [`Egress::take_events`]; the
//! gateway (`cli::egress_watch`) writes them to the audit log and stops the listed servers on
//! [`EgressEvent::RestoreFailed`]; [`Egress::is_enforcing`] stays false until the table is back,
//! and no sandbox starts meanwhile.

pub mod agent;
pub mod dns;
mod dns_allow;
mod dns_budget;
mod dns_cache;
mod dns_lookup;
mod dns_upstream;
mod event;
pub mod host_forward;
pub mod host_rules;
pub mod leftovers;
pub mod mode;
pub mod names;
pub mod netns;
pub mod network;
pub mod nflog;
pub mod nft;
pub mod plan;
pub mod ruleset;
mod service;
pub mod sets;
pub mod sidecar_rules;
pub mod subnets;
pub mod table;
pub mod workspace;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::sandbox::BoxFuture;
pub use event::EgressEvent;
pub use names::Names;
pub use nft::{NftError, Snapshot};
use ruleset::ServerNet;
pub use service::Egress;
pub use table::{Protection, Shape, Startup};

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress: cannot start the nftables worker: {0}")]
    Start(#[source] NftError),
    #[error("egress for server `{server}`: programming nftables failed, the sandbox must not start: {source}")]
    Program {
        server: String,
        #[source]
        source: NftError,
    },
    #[error("egress for server `{server}`: cannot start the resolver on {addr}: {source}")]
    Resolver {
        server: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("egress for server `{server}`: network_pool {pool} has no free /29 left ({why}); the sandbox does not start. Widen [egress] network_pool, or give each gateway of this network namespace a pool of its own")]
    PoolExhausted {
        server: String,
        pool: String,
        why: String,
    },
    #[error("egress for server `{server}`: interface `{iface}` is not a sandbox interface of this instance (names start with `{prefix}`)")]
    BadInterface {
        server: String,
        iface: String,
        prefix: String,
    },
    #[error("egress: table inet {table} is held by another live process (netlink port {owner}{}): that gateway runs this instance; stop it first, or give this gateway its own instance (`--instance` / [gateway] instance)", holder.as_ref().map(|h| format!(", which says \"{h}\"")).unwrap_or_default())]
    InUse {
        table: String,
        owner: u32,
        /// The table's comment (who created it).
        holder: Option<String>,
    },
    #[error("egress: instance `{ours}` and instance `{theirs}` (whose table is in this network namespace) would both name their interfaces `{prefix}*`, and each one's rules would then judge the other's sandboxes; give this gateway another instance id (`--instance` / [gateway] instance)")]
    NameClash {
        ours: String,
        theirs: String,
        prefix: String,
    },
    #[error("egress: the nftables worker is gone")]
    WorkerGone,
    #[error("egress for server `{server}`: already prepared on interface `{current}`, not `{asked}`; release it first")]
    OtherAttachment {
        server: String,
        current: String,
        asked: String,
    },
}

/// Where a server's sandbox attaches on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// A Docker bridge network created by [`network::create`].
    Bridge {
        iface: String,
        gateway: Ipv4Addr,
        subnet: (Ipv4Addr, u8),
    },
    /// A network namespace joined by a veth pair ([`netns::ProcessNet`]). Its subnet is
    /// masqueraded by the table (Docker does that for its bridges).
    Veth {
        iface: String,
        gateway: Ipv4Addr,
        subnet: (Ipv4Addr, u8),
    },
    /// Sidecar mode: the agent's own namespace, which the server's container joins; the
    /// resolver listens on its loopback.
    Sidecar,
}

impl Attachment {
    fn net(&self, server: &str) -> ServerNet {
        let (iface, gateway, masquerade) = match self {
            Attachment::Sidecar => ("lo".to_string(), sidecar_rules::RESOLVER, None),
            Attachment::Bridge { iface, gateway, .. } => (iface.clone(), *gateway, None),
            Attachment::Veth {
                iface,
                gateway,
                subnet,
            } => (iface.clone(), *gateway, Some(*subnet)),
        };
        ServerNet {
            server: server.to_string(),
            iface,
            gateway,
            masquerade,
        }
    }
}

/// What the runtime needs to start the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub server: String,
    pub iface: String,
    /// The only DNS server the sandbox may use (`gateway:53`).
    pub resolver: SocketAddr,
}

/// Where and as which instance the service runs.
#[derive(Debug, Clone)]
pub struct EgressOptions {
    /// Program the table and bind resolvers inside this network namespace (`/run/netns/NAME`)
    /// instead of the current one.
    pub netns: Option<PathBuf>,
    /// How often the table is read back (tamper watch) and counters are turned into events.
    pub watch_interval: Duration,
    pub resolver_port: u16,
    /// The instance whose objects this service makes.
    pub names: Names,
    /// Create the table with OWNER | PERSIST when the kernel has them (off only to exercise
    /// the fallback: `PORTCULLIS_EGRESS_TABLE_FLAGS=off`).
    pub table_flags: bool,
    /// The table's comment, naming who made it (see `instance::lock::comment_for`).
    pub comment: String,
    /// Host table or a sidecar agent's table.
    pub shape: Shape,
}

impl Default for EgressOptions {
    fn default() -> Self {
        EgressOptions {
            netns: None,
            watch_interval: Duration::from_secs(1),
            resolver_port: 53,
            names: Names::default(),
            table_flags: true,
            comment: format!("portcullis pid {}", std::process::id()),
            shape: Shape::Host,
        }
    }
}
