//! The HTTP query API.
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
//! Entity routes take `?min_version=N` or `X-Prism-Min-Version: N` (read-your-writes, see
//! [`entities`]) and answer with `X-Prism-Version`. Lists answer `{"items", "next_cursor"}`;
//! pass `next_cursor` back as `cursor` for the next page (it is opaque).
//!
//! - [`entities`]: the four entity routes and the stale answer.
//! - [`lists`]: the paginated lists and the sales range.

pub mod entities;
pub mod lists;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use prism_config::QueryConfig;

use crate::error::ApiError;
use crate::reader::ReadModels;

/// `X-Prism-Version`: the version of the row served.
pub const VERSION_HEADER: &str = "x-prism-version";
/// `X-Prism-Stale: true`: the row served is older than the `min_version` asked for.
pub const STALE_HEADER: &str = "x-prism-stale";

/// Every route template (the metrics' `route` label values).
pub const ROUTES: [&str; 7] = [
    "/orders/{id}",
    "/users/{id}/orders",
    "/products/{id}",
    "/products",
    "/carts/{id}",
    "/users/{id}",
    "/products/{id}/sales",
];

/// The limits requests are held to, from `[query]`.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest read-your-writes wait.
    pub min_version_wait: Duration,
    /// Largest `limit`.
    pub max_page_size: usize,
    /// `limit` when absent.
    pub default_page_size: usize,
    /// Widest sales range, in days.
    pub max_sales_days: u32,
    /// `Retry-After` of stale answers, in seconds.
    pub retry_after_seconds: u64,
}

impl From<&QueryConfig> for Limits {
    fn from(config: &QueryConfig) -> Self {
        Self {
            min_version_wait: Duration::from_millis(config.min_version_wait_ms),
            max_page_size: config.max_page_size,
            default_page_size: config.default_page_size,
            max_sales_days: config.max_sales_days,
            retry_after_seconds: config.retry_after_seconds,
        }
    }
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The readers.
    pub reads: ReadModels,
    /// Request limits.
    pub limits: Arc<Limits>,
}

/// The API routes (without the operations endpoints), each counted and timed.
pub fn router(state: AppState) -> Router {
    use prism_projections::views::{CartView, OrderSummary, ProductCatalogEntry, UserProfile};
    Router::new()
        .route("/orders/{id}", get(entities::entity::<OrderSummary>))
        .route("/users/{id}/orders", get(lists::user_orders))
        .route("/products/{id}", get(entities::entity::<ProductCatalogEntry>))
        .route("/products", get(lists::products))
        .route("/carts/{id}", get(entities::entity::<CartView>))
        .route("/users/{id}", get(entities::entity::<UserProfile>))
        .route("/products/{id}/sales", get(lists::product_sales))
        .fallback(|| async { ApiError::no_route() })
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(state)
}
