//! The command line: argument parsing and the commands themselves, at the binary's edge.

pub mod firewall;
pub mod policy;
pub mod serve;

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
    /// Show the nftables egress rules: planned for a policy, or live.
    #[command(subcommand)]
    Firewall(FirewallCommand),
}

#[derive(Debug, Subcommand)]
pub enum FirewallCommand {
    /// Print the rule set a policy would program, in `nft` syntax.
    Plan { file: PathBuf },
    /// Print the live `table inet portcullis` with pinned addresses and remaining timeouts.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file; errors are printed as FILE:LINE:COLUMN.
    Check { file: PathBuf },
    /// Convert a Claude `.mcp.json` or a `servers.json` into a policy (printed to stdout).
    Import { file: PathBuf },
    /// Print the effective policy with every default filled in.
    Show { file: PathBuf },
}

/// Sets up logging to stderr; `RUST_LOG` overrides the default `info` filter.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
