//! The body of every long-running binary's `main` (`prism-commands`, `prism-projector`,
//! `prism-query`), so they agree on configuration loading, logging and exit codes:
//! 0 after a clean shutdown on SIGTERM or Ctrl-C, 1 when the service failed, 2 for bad
//! configuration.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use prism_config::{ConfigSources, PrismConfig};

/// Loads the configuration (defaults, `PRISM_ENV`'s file, `config_files`, `PRISM__`
/// variables), sets up logging, then runs `service` on a multi-threaded runtime. `service`
/// gets the configuration and should return when [`crate::shutdown::signal`] resolves.
pub fn main<Fut>(name: &str, config_files: Vec<PathBuf>, service: impl FnOnce(PrismConfig) -> Fut) -> ExitCode
where
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match PrismConfig::load(&ConfigSources::from_process(config_files)) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    crate::logging::init(&config.log);
    match crate::allocator::settings() {
        Ok(allocator) => tracing::info!(
            arenas = allocator.arenas,
            dirty_decay_ms = allocator.dirty_decay_ms,
            "memory allocator: jemalloc"
        ),
        Err(err) => tracing::warn!(error = %err, "jemalloc's settings could not be read"),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(service(config)) {
        Ok(()) => {
            tracing::info!("{name} stopped cleanly");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{name} failed");
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
