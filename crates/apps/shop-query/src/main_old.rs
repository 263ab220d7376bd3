//! `prism-query`: loads configuration, sets up logging and runs the query service until
//! SIGTERM or Ctrl-C, then drains and exits 0.
//!
//! Exit codes: 0 after a clean shutdown, 1 when the service failed, 2 for bad arguments or
//! configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Serve Prism's HTTP query API over the read models.
#[derive(Debug, Parser)]
#[command(name = "prism-query", version, about)]
struct Cli {
    /// Extra configuration file, layered over config/default.toml and PRISM_ENV's file
    /// (repeatable; later files win). Environment variables PRISM__SECTION__KEY win over all.
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    prism_runtime::service::main("prism-query", cli.config, |config| {
        prism_query::run(config, prism_runtime::shutdown::signal())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flag_repeats() {
        let cli =
            Cli::try_parse_from(["prism-query", "--config", "a.toml", "--config", "b.toml"]).expect("parses");
        assert_eq!(cli.config, vec![PathBuf::from("a.toml"), PathBuf::from("b.toml")]);
        assert!(Cli::try_parse_from(["prism-query", "--bogus"]).is_err());
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
