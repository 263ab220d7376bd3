//! `shop-bench`: load generation against a running shop, and the convergence check.
//!
//! `shop-bench load --target http://127.0.0.1:8080 --commands 10000 --concurrency 16 --seed 1`
//! `shop-bench verify --wait 120`
//!
//! Exit codes of `load`: 0 when every valid command succeeded and every invalid one was
//! refused, 1 otherwise, 2 for bad arguments. Of `verify`: 0 when the read models equal the
//! fold of the event store, 1 when they differ or never converged, 2 when it cannot run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use shop::load::{self, LoadConfig};
use shop::verify::{self, VerifyConfig};

/// Drive load against Prism.
#[derive(Debug, Parser)]
#[command(name = "shop-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send a realistic mix of commands to the HTTP command API.
    Load {
        /// Base URL of the command API.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        target: String,
        /// Stop after this many commands.
        #[arg(long, required_unless_present = "duration")]
        commands: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        duration: Option<u64>,
        /// Commands in flight at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Seed of the random choices and generated ids.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Percentage of deliberately invalid commands.
        #[arg(long, default_value_t = 3.0)]
        invalid_percent: f64,
        /// Print the report as JSON (with every aggregate's last version).
        #[arg(long)]
        json: bool,
    },
    /// Publish a realistic workload of shop events straight to the event topics (bypassing
    /// the command side), e.g. to load a projector for profiling or a rebuild.
    Publish {
        /// Configuration file layered over the defaults (repeatable); PRISM__ variables win.
        #[arg(long, value_name = "FILE")]
        config: Vec<PathBuf>,
        /// Events to generate (about; whole aggregate histories).
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Seed of the generated histories.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Wait until the pipeline drained, then check every read-model row (PostgreSQL) and
    /// cache entry (Redis) against the fold of the event store.
    Verify {
        /// Configuration file layered over the defaults (repeatable); PRISM__ variables win.
        #[arg(long, value_name = "FILE")]
        config: Vec<PathBuf>,
        /// Give up after this many seconds without convergence.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        wait: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// No progress lines while waiting.
        #[arg(long)]
        quiet: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Load { target, commands, duration, concurrency, seed, invalid_percent, json } => {
            if !(0.0..=100.0).contains(&invalid_percent) {
                eprintln!("error: --invalid-percent must be between 0 and 100");
                return ExitCode::from(2);
            }
            let config = LoadConfig {
                target,
                commands,
                duration: duration.map(Duration::from_secs),
                concurrency,
                seed,
                invalid_share: invalid_percent / 100.0,
            };
            let report = match runtime.block_on(load::run(&config)) {
                Ok(report) => report,
                Err(err) => {
                    eprintln!("error: {err}");
                    return ExitCode::from(2);
                }
            };
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
            }
            if report.unexpected == 0
                && report.transport_errors == 0
                && report.invalid_refused == report.invalid_sent
            {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Command::Publish { config, events, seed } => {
            let Some(config) = load_config(config) else { return ExitCode::from(2) };
            let events = shop::testing::workload::Workload::generate(seed, events);
            let published = runtime.block_on(async {
                let producer = prism_testkit::kafka::producer(&config)?;
                prism_testkit::kafka::publish_events(&producer, &config.topics.prefix, &events).await
            });
            match published {
                Ok(_) => {
                    println!("published {} events to {}*.events", events.len(), config.topics.prefix);
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: publishing to {}: {err:#}", config.kafka.bootstrap_servers);
                    ExitCode::FAILURE
                }
            }
        }
        Command::Verify { config, wait, json, quiet } => {
            let Some(config) = load_config(config) else { return ExitCode::from(2) };
            let settings = VerifyConfig { wait: Duration::from_secs(wait), progress: !quiet };
            match runtime.block_on(verify::run(&config, &settings)) {
                Ok(report) => {
                    if json {
                        println!("{}", report.to_json());
                    } else {
                        println!("{report}");
                    }
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The deployment's configuration from `files` and the process's environment; `None` after
/// printing why it could not be read.
fn load_config(files: Vec<std::path::PathBuf>) -> Option<prism_config::PrismConfig> {
    match prism_config::PrismConfig::load(&prism_config::ConfigSources::from_process(files)) {
        Ok(config) => Some(config),
        Err(err) => {
            eprintln!("error: {err}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_load_command() {
        let cli = Cli::try_parse_from([
            "shop-bench",
            "load",
            "--target",
            "http://h:1",
            "--commands",
            "5",
            "--seed",
            "9",
        ])
        .expect("parses");
        let Command::Load { target, commands, seed, concurrency, .. } = cli.command else {
            panic!("parsed as another command")
        };
        assert_eq!((target.as_str(), commands, seed, concurrency), ("http://h:1", Some(5), 9, 8));
        assert!(Cli::try_parse_from(["shop-bench", "load"]).is_err(), "needs --commands or --duration");
        let verify = Cli::try_parse_from(["shop-bench", "verify", "--wait", "5", "--json"]).expect("parses");
        assert!(matches!(verify.command, Command::Verify { wait: 5, json: true, quiet: false, .. }));
        assert!(Cli::try_parse_from(["shop-bench", "verify", "--wait", "soon"]).is_err());
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
