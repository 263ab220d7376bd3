//! The `prism-projector` binary: load configuration, then [`prism_projector::run`] until
//! SIGTERM or Ctrl-C. Exits 0 after a clean shutdown.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Keeps Prism's read models in PostgreSQL and Redis up to date from the event topics.
#[derive(Debug, Parser)]
#[command(name = "prism-projector", version, about)]
struct Cli {
    /// Extra configuration file (repeatable; later files win; PRISM__SECTION__KEY variables win over all).
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    prism_runtime::service::main("prism-projector", cli.config, |config| {
        prism_projector::run(config, prism_runtime::Health::new(), prism_runtime::shutdown::signal())
    })
}
