//! `prism-relay`: the outbox relay alone, with `/metrics`, `/healthz` and `/readyz` on
//! `commands.listen`, until SIGTERM or Ctrl-C. It publishes whatever the outbox holds, so it
//! needs no application code: run it beside a command service written in another language that
//! appends through the event store's documented contract (`prism-event-store/CONTRACT.md`).
//!
//! Exit codes: 0 after a clean shutdown, 1 when the relay failed, 2 for bad arguments or
//! configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Publish Prism's outbox to Kafka.
#[derive(Debug, Parser)]
#[command(name = "prism-relay", version, about)]
struct Cli {
    /// Extra configuration file, layered over config/default.toml and PRISM_ENV's file
    /// (repeatable; later files win). Environment variables PRISM__SECTION__KEY win over all.
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    prism_runtime::service::main("prism-relay", cli.config, |config| {
        prism_commands::run_relay(config, prism_runtime::shutdown::signal())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flag_repeats() {
        let cli =
            Cli::try_parse_from(["prism-relay", "--config", "a.toml", "--config", "b.toml"]).expect("parses");
        assert_eq!(cli.config, vec![PathBuf::from("a.toml"), PathBuf::from("b.toml")]);
        assert!(Cli::try_parse_from(["prism-relay", "--bogus"]).is_err());
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
