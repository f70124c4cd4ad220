use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{self, Cli, Command, FirewallCommand, PolicyCommand, TokenCommand};

// glibc malloc took ~12 % of the gateway's CPU under load (arena locks between the runtime's
// worker threads, consolidation); the A/B figures are in the commit that added it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // The confinement helper of process servers (see `sandbox::confine`): dispatched before
    // argument parsing, logging or the async runtime, since it must stay single-threaded and
    // its environment is the server's, not the gateway's.
    let mut argv = std::env::args_os().skip(1);
    if argv
        .next()
        .is_some_and(|a| a == portcullis::sandbox::confine::SUBCOMMAND)
    {
        std::process::exit(portcullis::sandbox::confine::run(argv.collect()));
    }
    let args = Cli::parse();
    match args.command {
        Command::Policy(PolicyCommand::Check { file, pubkey }) => {
            cli::policy::check(&file, pubkey.as_deref())
        }
        Command::Policy(PolicyCommand::Keygen { out }) => cli::policy_sign::keygen(&out),
        Command::Policy(PolicyCommand::Sign { key, file }) => cli::policy_sign::sign(&key, &file),
        Command::Policy(PolicyCommand::Import { file }) => cli::policy::import(&file),
        Command::Policy(PolicyCommand::Show { file }) => cli::policy::show(&file),
        Command::Policy(PolicyCommand::Test {
            file,
            client,
            call,
            expect,
        }) => cli::policy_test::run(&file, &client, &call, expect),
        Command::Audit(cmd) => cli::audit::run(cmd),
        Command::Token(TokenCommand::New { client }) => cli::token_new(&client),
        Command::ClientConfig(args) => cli::client_config::run(args),
        Command::Init(cmd) => cli::init::run(cmd),
        Command::Doctor(doctor) => match async_runtime() {
            Ok(rt) => rt.block_on(cli::doctor::run(doctor)),
            Err(code) => code,
        },
        Command::Health(health) => cli::health::run(health),
        // Before any runtime or logging thread: it changes its uid and capabilities first.
        Command::EgressAgent(a) => {
            use portcullis::egress::agent::{connect, standalone};
            match (a.connect, a.rules) {
                (Some(path), _) if a.check => connect::check(&path),
                (Some(path), _) => connect::main(&path),
                (None, Some(rules)) => {
                    let opts = standalone::Options {
                        rules,
                        instance: a.instance,
                        accept_tcp: a.accept_tcp,
                        table_flags: std::env::var(cli::instance::TABLE_FLAGS_ENV)
                            .map_or(true, |v| v != "off"),
                    };
                    if a.check {
                        standalone::check::main(&opts)
                    } else {
                        standalone::main(&opts)
                    }
                }
                (None, None) if a.check => {
                    eprintln!("egress-agent --check needs --connect or --rules");
                    std::process::ExitCode::from(2)
                }
                (None, None) => portcullis::egress::agent::main(),
            }
        }
        Command::Firewall(FirewallCommand::Plan {
            file,
            instance,
            mode,
        }) => cli::firewall::plan(&file, instance.as_deref(), mode.as_deref()),
        Command::Firewall(FirewallCommand::Show { instance }) => {
            cli::firewall::show(instance.as_deref())
        }
        Command::Tools(cmd) => {
            cli::init_logging(args.log_format);
            cli::tools::run(cmd)
        }
        Command::Serve(serve) => {
            cli::init_logging(args.log_format);
            let runtime = match async_runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match runtime.block_on(cli::serve::run(serve)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    // Policy diagnostics already read `FILE:LINE:COL: error: ...`, one per line.
                    if e.downcast_ref::<portcullis::policy::PolicyError>()
                        .is_some()
                    {
                        eprintln!("{e}");
                    } else {
                        eprintln!("error: {e:#}");
                    }
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn async_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}
