use std::process::ExitCode;

use clap::Parser;
use portcullis::cli::{self, Cli, Command, FirewallCommand, PolicyCommand};

fn main() -> ExitCode {
    let args = Cli::parse();
    match args.command {
        Command::Policy(PolicyCommand::Check { file }) => cli::policy::check(&file),
        Command::Policy(PolicyCommand::Import { file }) => cli::policy::import(&file),
        Command::Policy(PolicyCommand::Show { file }) => cli::policy::show(&file),
        Command::Firewall(FirewallCommand::Plan { file }) => cli::firewall::plan(&file),
        Command::Firewall(FirewallCommand::Show) => cli::firewall::show(),
        Command::Serve(serve) => {
            cli::init_logging(args.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(cli::serve::run(serve)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
