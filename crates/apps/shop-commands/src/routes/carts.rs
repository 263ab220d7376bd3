//! The carts context: `POST /carts/{id}/items` (add, for a registered user; opens the cart),
//! `DELETE /carts/{id}/items/{product_id}`, `POST /carts/{id}/checkout` (also places the
//! order and reserves its units, in the same transaction).

use axum::extract::State;
use axum::response::Response;
use axum::routing::{delete, post};
use axum::Router;
use serde::Deserialize;
use shop_model::domain::{CartCommand, CartState};
use tracing::field::{display, Empty};
use uuid::Uuid;

use crate::error::api_error;
use crate::service::{self, RequestedItem};
use prism_commands::http::{respond, tracked, ApiError, ApiState, CommandHeaders, JsonBody, PathIds};

/// `POST /carts/{id}/items`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddItem {
    /// The user adding (the owner of the cart).
    pub user_id: Uuid,
    /// The product.
    pub product_id: Uuid,
    /// Units to add.
    pub quantity: u32,
}

/// `POST /carts/{id}/checkout`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckOut {
    /// The id of the order to place; generated when absent.
    #[serde(default)]
    pub order_id: Option<Uuid>,
}

/// The routes of this context.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/carts/{id}/items", tracked("add_cart_item", post(add_item)))
        .route("/carts/{id}/items/{product_id}", tracked("remove_cart_item", delete(remove_item)))
        .route("/carts/{id}/checkout", tracked("check_out_cart", post(check_out)))
}

#[tracing::instrument(skip_all, fields(command = "add_cart_item", cart_id = Empty))]
async fn add_item(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<AddItem>,
) -> Result<Response, ApiError> {
    let cart_id = path.uuid("id")?;
    tracing::Span::current().record("cart_id", display(cart_id));
    let AddItem { user_id, product_id, quantity } = body.value;
    let item = RequestedItem { product_id, quantity };
    let reply = service::add_cart_item(&app.service, cart_id, user_id, item, &headers.meta(&body.digest))
        .await
        .map_err(api_error)?;
    Ok(respond(reply))
}

#[tracing::instrument(skip_all, fields(command = "remove_cart_item", cart_id = Empty))]
async fn remove_item(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
) -> Result<Response, ApiError> {
    let cart_id = path.uuid("id")?;
    let product_id = path.uuid("product_id")?;
    tracing::Span::current().record("cart_id", display(cart_id));
    let command = CartCommand::RemoveItem { product_id };
    let reply = app
        .service
        .execute::<CartState>(cart_id, command, &headers.meta_without_body())
        .await
        .map_err(api_error)?;
    Ok(respond(reply))
}

#[tracing::instrument(skip_all, fields(command = "check_out_cart", cart_id = Empty, order_id = Empty))]
async fn check_out(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<CheckOut>,
) -> Result<Response, ApiError> {
    let cart_id = path.uuid("id")?;
    let order_id = body.value.order_id.unwrap_or_else(Uuid::new_v4);
    let span = tracing::Span::current();
    span.record("cart_id", display(cart_id));
    span.record("order_id", display(order_id));
    let reply = service::check_out(&app.service, cart_id, order_id, &headers.meta(&body.digest))
        .await
        .map_err(api_error)?;
    Ok(respond(reply))
}
