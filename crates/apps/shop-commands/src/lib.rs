//! The shop's HTTP command API, built on the Prism engine's command library
//! (`prism-commands`): the routes of the four bounded contexts — users, catalog, carts,
//! orders — turning requests into the shop's commands, run by the engine's
//! [`CommandService`](prism_commands::CommandService) against the shop's aggregates
//! (`shop-model`).
//!
//! - [`routes`]: one module per context: request bodies and handlers.
//! - [`service`]: the commands that touch more than one aggregate (a cart reading the user
//!   and the catalog, a checkout placing an order in the same transaction, an order priced
//!   from the catalog, the stock an order reserves, releases or ships).
//! - [`error`]: the shop's refusals as HTTP errors.
//! - [`settings`]: `[application] contexts`, which contexts a process serves.
//! - this file: [`serve`] / [`run`] (the engine's command service with the shop's routes and
//!   the outbox relay) and [`main`], the `shop-commands` binary.
//!
//! Every success answers `{"aggregate_type", "aggregate_id", "version", "events"}` (201 when
//! the command created the aggregate); errors follow the engine's table (`400` names the
//! `field`, `404`, `409` with a `reason`, `405`, `413`, `415`, `422`, `503`).
//!
//! `404` is for the aggregate the path names (`/orders/{id}/pay` of an unknown order). An id
//! in the request *body* that names nothing is a rule, `409` `rejected` with a `reason`:
//! `user_not_found` (a cart or an order for a user id that was never registered),
//! `product_not_found`, `product_not_listed`.
//!
//! Stock rules (the shop's rules kept by the command side, see [`service`]):
//!
//! | command | stock effect, in the command's transaction | refused with `409` `reason` |
//! |---|---|---|
//! | `POST /orders`, `POST /carts/{id}/checkout` | each line's units reserved with its product (`StockReserved`): on hand, no longer available | `insufficient_stock` (message: the line, the product, units requested and available), `product_not_listed` (a cart line delisted since it was added) |
//! | `POST /orders/{id}/cancel` | the order's reservations released (`StockReleased`): available again | the order's own rules |
//! | `POST /orders/{id}/ship` | the order's reserved units shipped (`StockShipped`): on hand and reserved both drop | the order's own rules |
//! | `POST /products/{id}/restock` with a negative quantity | — | `stock_below_zero`, `stock_below_reserved` (fewer on hand than orders hold) |
//!
//! Those commands also answer each product's outcome under `products[<line>]`, next to the
//! order's. Two orders racing for the last units never both succeed: the product streams are
//! appended under optimistic concurrency, and the loser is decided again against the new
//! stock. The query side shows `stock`, `reserved` and `available` per product
//! (`product_catalog`).

#![warn(missing_docs)]

pub mod error;
pub mod routes;
pub mod service;
pub mod settings;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use prism_commands::CommandApi;
use prism_config::{ConfigSources, PrismConfig};
use tokio::net::TcpListener;

use crate::settings::Settings;

/// The service's name in logs and on its PostgreSQL connections.
pub const NAME: &str = "shop-commands";

/// The shop's command API for the contexts `settings` names.
pub fn api(settings: &Settings) -> CommandApi {
    CommandApi { events: shop_model::registry(), routes: routes::router(&settings.contexts), name: NAME }
}

/// Serves the shop's command API (the contexts of `[application] contexts`) and, when
/// `relay.enabled`, the outbox relay on `listener`, until `shutdown` resolves.
pub async fn serve(
    config: PrismConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let settings = Settings::from_config(&config).context("the shop's settings")?;
    let contexts: Vec<&str> = settings.contexts.iter().map(|c| c.as_str()).collect();
    tracing::info!(?contexts, "shop command contexts");
    prism_commands::serve(config, api(&settings), listener, shutdown).await
}

/// Binds `commands.listen` and serves until `shutdown` resolves (see [`serve`]).
pub async fn run(
    config: PrismConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.commands.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.commands.listen))?;
    serve(config, listener, shutdown).await
}

/// Serve the shop's HTTP command API and (when `relay.enabled`) the outbox relay.
#[derive(Debug, Parser)]
#[command(name = "shop-commands", version, about)]
struct Cli {
    /// Extra configuration file, layered over config/default.toml and PRISM_ENV's file
    /// (repeatable; later files win). Environment variables PRISM__SECTION__KEY win over all.
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
}

/// The `shop-commands` binary: loads configuration, sets up logging and serves until SIGTERM
/// or Ctrl-C, then drains and exits 0. Exit codes: 0 after a clean shutdown, 1 when the
/// service failed, 2 for bad arguments or configuration (the shop's `[application]` settings
/// included).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The shop's own settings are configuration too: a mistake in them exits 2 before anything
    // starts. (A configuration that does not load at all is reported by the engine's main.)
    if let Ok(config) = PrismConfig::load(&ConfigSources::from_process(cli.config.clone())) {
        if let Err(err) = Settings::from_config(&config) {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    }
    prism_runtime::service::main(NAME, cli.config, |config| run(config, prism_runtime::shutdown::signal()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_flag_repeats() {
        let cli = Cli::try_parse_from(["shop-commands", "--config", "a.toml", "--config", "b.toml"])
            .expect("parses");
        assert_eq!(cli.config, vec![PathBuf::from("a.toml"), PathBuf::from("b.toml")]);
        assert!(Cli::try_parse_from(["shop-commands", "--bogus"]).is_err());
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
