//! `prismctl`, the operator CLI. Each subcommand lives in its own module under `commands/`;
//! this file parses arguments, loads configuration and maps failures to exit codes.
//!
//! Every command first prints, to stderr, the deployment it acts on ([`deployment::header`]):
//! stdout stays the command's own output (JSON with `--output json`).
//!
//! Exit codes: 0 success, 1 the operation failed or found a problem, 2 bad arguments or
//! configuration (clap's convention).

mod cli;
mod commands;
mod deployment;

use std::process::ExitCode;

use clap::Parser;
use prism_config::{ConfigSources, PrismConfig};

use crate::cli::{Cli, Command, OffsetsCommand, TopicsCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match PrismConfig::load(&ConfigSources::from_process(cli.config.clone())) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(if cli.verbose { "info" } else { "warn" })
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    eprintln!("{}", deployment::header(&config));
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Migrate => commands::migrate::run(&config).await,
            Command::ReadModels { output } => commands::read_models::list(&config, output).await,
            Command::Topics { command: TopicsCommand::Ensure } => commands::topics::ensure(&config).await,
            Command::Lag(args) => commands::lag::run(&config, &args).await,
            Command::Offsets { command: OffsetsCommand::Reset(args) } => {
                commands::offsets::reset(&config, &args).await
            }
            Command::Dlq { command } => commands::dlq::run(&config, &command).await,
            Command::Rebuild(args) => commands::rebuild::run(&config, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
