//! The shop's routes, one module per bounded context: request bodies and handlers. Each
//! route is wrapped in the engine's request metrics under its command name.
//!
//! - [`users`]: `POST /users`, `PATCH /users/{id}`.
//! - [`catalog`]: `POST /products`, `POST /products/{id}/price|restock|delist`.
//! - [`carts`]: `POST /carts/{id}/items`, `DELETE /carts/{id}/items/{product_id}`,
//!   `POST /carts/{id}/checkout`.
//! - [`orders`]: `POST /orders`, `POST /orders/{id}/pay|payment|ship|cancel`.

pub mod carts;
pub mod catalog;
pub mod orders;
pub mod users;

use axum::Router;
use prism_commands::ApiState;

use crate::settings::Context;

/// The routes of the given contexts.
pub fn router(contexts: &[Context]) -> Router<ApiState> {
    let mut router = Router::new();
    let mut merged = Vec::new();
    for context in contexts {
        // Naming a context twice in configuration serves it once.
        if merged.contains(context) {
            continue;
        }
        merged.push(*context);
        router = router.merge(match context {
            Context::Users => users::routes(),
            Context::Catalog => catalog::routes(),
            Context::Carts => carts::routes(),
            Context::Orders => orders::routes(),
        });
    }
    router
}
