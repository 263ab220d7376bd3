//! The shop's HTTP query API, built on the Prism engine's read path (`prism-query`): the
//! engine reads any read model by key (Redis first, PostgreSQL on a miss, read-your-writes with
//! `min_version`) and serves `/read-models/{name}/{key}`, `/metrics`, `/healthz` and `/readyz`;
//! this crate adds the shop's REST routes on top.
//!
//! | route | read model | source |
//! |---|---|---|
//! | `GET /orders/{id}` | `order_summary` | Redis, PostgreSQL on a miss |
//! | `GET /users/{id}/orders?limit=&cursor=` | `order_summary`, newest first | PostgreSQL |
//! | `GET /products/{id}` | `product_catalog` | Redis, PostgreSQL on a miss |
//! | `GET /products?limit=&cursor=` | listed products by name | PostgreSQL |
//! | `GET /carts/{id}` | `cart_view` | Redis, PostgreSQL on a miss |
//! | `GET /users/{id}` | `user_profile` (with order totals) | Redis, PostgreSQL on a miss |
//! | `GET /products/{id}/sales?from=&to=` | `product_sales_daily`, inclusive dates | PostgreSQL |
//!
//! Entity routes take `?min_version=N` or `X-Prism-Min-Version: N` (read-your-writes) and answer
//! with `X-Prism-Version` (see `prism_query::http`). Lists answer `{"items", "next_cursor"}`;
//! pass `next_cursor` back as `cursor` for the next page (it is opaque).
//!
//! - [`mod@routes`]: the routes ([`routes::entities`], [`routes::lists`]) and [`routes()`], which mounts them.
//! - [`cursor`]: the opaque keyset cursors of the lists.
//! - this file: [`serve`] and [`main`] (the `shop-query` binary).
//!
//! SQL of the lists lives in `sql/*.sql`; entity reads use the engine's statements.

#![warn(missing_docs)]

pub mod cursor;
pub mod routes;

use std::future::Future;
use std::process::ExitCode;

use prism_config::PrismConfig;
use tokio::net::TcpListener;

pub use routes::{routes, ROUTES};

/// Serves the shop's query API on `listener` until `shutdown` resolves, then drains (see
/// `prism_query::serve`).
pub async fn serve(
    config: PrismConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    prism_query::metrics::declare_routes(&ROUTES);
    prism_query::serve(config, shop_model::application(), routes(), listener, shutdown).await
}

/// The `shop-query` binary: `shop-query [--config FILE]…` serves `query.listen` until SIGTERM or
/// Ctrl-C. Exits 0 after a clean shutdown, 1 when the service failed, 2 for bad arguments or
/// configuration.
pub fn main() -> ExitCode {
    prism_query::metrics::declare_routes(&ROUTES);
    prism_query::main(shop_model::application(), routes())
}
