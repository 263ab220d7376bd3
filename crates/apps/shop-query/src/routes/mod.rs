//! The shop's routes, mounted on the engine's read path ([`prism_query::ReadPath`] is their
//! state).
//!
//! - [`entities`]: one order, product, cart or user profile by id (the engine's entity answer).
//! - [`lists`]: a user's orders, the listed products and a product's daily sales.

pub mod entities;
pub mod lists;

use axum::routing::get;
use axum::Router;
use prism_query::ReadPath;
use shop_model::read_models::{CART_VIEW, ORDER_SUMMARY, PRODUCT_CATALOG, USER_PROFILE};

/// Every route template of the shop (the metrics' `route` label values).
pub const ROUTES: [&str; 7] = [
    "/orders/{id}",
    "/users/{id}/orders",
    "/products/{id}",
    "/products",
    "/carts/{id}",
    "/users/{id}",
    "/products/{id}/sales",
];

/// The shop's routes.
pub fn routes() -> Router<ReadPath> {
    Router::new()
        .route(ROUTES[0], entities::entity(ORDER_SUMMARY, "order"))
        .route(ROUTES[1], get(lists::user_orders))
        .route(ROUTES[2], entities::entity(PRODUCT_CATALOG, "product"))
        .route(ROUTES[3], get(lists::products))
        .route(ROUTES[4], entities::entity(CART_VIEW, "cart"))
        .route(ROUTES[5], entities::entity(USER_PROFILE, "user"))
        .route(ROUTES[6], get(lists::product_sales))
}
