//! The command line: argument parsing and the commands themselves, at the binary's edge.

pub mod audit;
mod audit_report;
pub mod client_config;
pub mod container_listener;
pub mod doctor;
pub mod egress_watch;
pub mod firewall;
pub mod health;
pub mod init;
pub mod instance;
pub mod policy;
pub mod policy_gate;
pub mod policy_sign;
pub mod policy_test;
pub mod serve;
pub mod tools;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about = "A security-hardened MCP gateway", long_about = None)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty, env = "PORTCULLIS_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Validate, import or show policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Audit log: keys, offline verification, tail, inclusion proofs, export.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Client bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the command or JSON that connects a client (claude, cursor, vscode).
    ClientConfig(client_config::ClientConfigArgs),
    /// Write a deployment kit: `init devcontainer [DIR]` (the locked-down devcontainer).
    #[command(subcommand)]
    Init(init::InitCommand),
    /// Check that what a policy needs (policy, Docker engine, images, nftables, audit directory)
    /// is present, with a fix for each problem.
    Doctor(doctor::DoctorArgs),
    /// Probe a running gateway's /health; exit 0 when it answers 200 (container HEALTHCHECKs).
    Health(health::HealthArgs),
    /// Show the nftables egress rules: planned for a policy, or live.
    #[command(subcommand)]
    Firewall(FirewallCommand),
    /// Egress enforcement of one server in sidecar mode (run by the gateway in a container of
    /// its own; speaks a line protocol on stdin/stdout), or with --connect of the devcontainer
    /// kit's workspace (started by compose; speaks it over the gateway's Unix socket).
    EgressAgent(EgressAgentArgs),
    /// Pin what servers offer: write the lock file of approved tool definitions, or show what
    /// changed since.
    #[command(subcommand)]
    Tools(tools::ToolsCommand),
}

#[derive(Debug, clap::Args)]
pub struct EgressAgentArgs {
    /// The gateway's workspace agent socket (`serve --workspace-agent-socket`): connect to it
    /// instead of reading stdin; the config that arrives is the policy's `[workspace]`.
    #[arg(long, env = "PORTCULLIS_AGENT_CONNECT")]
    pub connect: Option<PathBuf>,
    /// Standalone (Kubernetes): take the server's rules from this file (`[egress]` and one
    /// server with its `egress.allow`) instead of a gateway; it is re-read every second and a
    /// changed, valid file is applied in place.
    #[arg(long, env = "PORTCULLIS_AGENT_RULES", conflicts_with = "connect")]
    pub rules: Option<PathBuf>,
    /// With --rules: the instance that names the table (`inet portcullis_<instance>`).
    #[arg(long, env = "PORTCULLIS_AGENT_INSTANCE", requires = "rules", conflicts_with = "connect",
          default_value = crate::egress::agent::standalone::DEFAULT_INSTANCE)]
    pub instance: String,
    /// With --rules: accept new inbound TCP connections to these ports (the gateway's, to the
    /// server's streamable HTTP port); all other inbound stays dropped.
    #[arg(long = "accept-tcp", env = "PORTCULLIS_AGENT_ACCEPT_TCP", requires = "rules", conflicts_with = "connect",
          value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    pub accept_tcp: Vec<u16>,
    /// With --connect: exit 0 only if the gateway has this agent's verified table (the
    /// container's healthcheck; compose starts the workspace after it passes). With --rules:
    /// exit 0 only if this namespace's live table is the one the file programs and the
    /// resolver answers (a Kubernetes startupProbe).
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Print the rule set a policy would program, in `nft` syntax.
    Plan {
        file: PathBuf,
        /// The gateway instance to plan for (default: the policy's [gateway] instance, or the
        /// one derived from its state directory, as `serve` does).
        #[arg(long)]
        instance: Option<String>,
        /// The egress mode to plan for: `host` (the gateway's one table) or `sidecar` (one
        /// table per docker server, programmed by its egress agent). Default: the policy's
        /// `[egress] mode`, with `auto` planned as host.
        #[arg(long, value_parser = ["host", "sidecar"])]
        mode: Option<String>,
    },
    /// Print an instance's live table (`inet portcullis_<instance>`) with pinned addresses and
    /// remaining timeouts. Without --instance: the only Portcullis table of this network
    /// namespace (several: they are listed).
    Show {
        #[arg(long, env = "PORTCULLIS_INSTANCE")]
        instance: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh client token and the hash to put in the policy.
    New {
        /// The client name used in the printed policy snippet.
        #[arg(long, default_value = "my-client")]
        client: String,
    },
}

/// `portcullis token new`: the token goes to the client, only its hash into the policy.
pub fn token_new(client: &str) -> std::process::ExitCode {
    match crate::access::token::generate() {
        Ok(token) => {
            let hash = crate::access::token::hash(&token);
            println!("token:        {token}");
            println!("token_sha256: {hash}");
            println!();
            println!("# policy: give the token to the client, keep only the hash here");
            println!("[clients.{client}]");
            println!("token_sha256 = \"{hash}\"");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: no randomness from the operating system: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file; errors are printed as FILE:LINE:COLUMN.
    Check {
        file: PathBuf,
        /// Also verify FILE.sig against this key (64 hex digits or a `.pub` file), as a gateway
        /// started with --policy-pubkey would.
        #[arg(long, value_name = "KEY")]
        pubkey: Option<String>,
    },
    /// Write an Ed25519 policy signing key: PATH (private, 0600) and PATH.pub (hex), the key
    /// for `serve --policy-pubkey`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a policy file: writes FILE.sig, an Ed25519 signature over its exact bytes. The
    /// policy must be valid and carry `[gateway] serial`.
    Sign {
        /// The private key from `portcullis policy keygen`.
        #[arg(long)]
        key: PathBuf,
        file: PathBuf,
    },
    /// Convert a Claude `.mcp.json` or a `servers.json` into a policy (printed to stdout).
    Import { file: PathBuf },
    /// Print the effective policy with every default filled in.
    Show { file: PathBuf },
    /// Decide one sample call offline: prints allow, confirm (with the rule) or deny (with the
    /// reason and the rule). CALL is a JSON-RPC request (`method`, `params`), optionally with
    /// `claims` and `server`.
    Test {
        file: PathBuf,
        #[arg(long)]
        client: String,
        #[arg(long, value_name = "CALL.json")]
        call: PathBuf,
        /// Exit with status 1 unless the decision is this one.
        #[arg(long, value_enum)]
        expect: Option<policy_test::Expect>,
    },
}

/// Sets up logging to stderr; `RUST_LOG` overrides the default `info` filter. When the systemd
/// journal's socket exists, operational logs also go to journald (structured fields kept);
/// without it, or if connecting fails, stderr alone is used.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a terminal: container logs and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    // Every line names the replica (`--replica`) when the gateway runs as one.
    let fmt = match format {
        LogFormat::Pretty => fmt
            .event_format(crate::fleet::replica::WithReplica {
                inner: tracing_subscriber::fmt::format().with_ansi(ansi),
                json: false,
            })
            .boxed(),
        LogFormat::Json => fmt
            .json()
            .event_format(crate::fleet::replica::WithReplica {
                inner: tracing_subscriber::fmt::format().json(),
                json: true,
            })
            .boxed(),
    };
    let journald = if std::path::Path::new(JOURNALD_SOCKET).exists() {
        tracing_journald::layer()
            .ok()
            .map(|l| l.with_syslog_identifier("portcullis".into()))
    } else {
        None
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(journald)
        .try_init();
}

const JOURNALD_SOCKET: &str = "/run/systemd/journal/socket";
