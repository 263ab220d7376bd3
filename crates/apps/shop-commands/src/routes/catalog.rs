//! The catalog context: `POST /products` (list), `POST /products/{id}/price`,
//! `POST /products/{id}/restock`, `POST /products/{id}/delist`.

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use shop_model::domain::{ProductCommand, ProductState};
use tracing::field::{display, Empty};
use uuid::Uuid;

use crate::error::api_error;
use prism_commands::http::{respond, tracked, ApiError, ApiState, CommandHeaders, JsonBody, PathIds};

/// `POST /products`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListProduct {
    /// The new product's id; generated when absent.
    #[serde(default)]
    pub product_id: Option<Uuid>,
    /// Stock-keeping unit.
    pub sku: String,
    /// Catalog name.
    pub name: String,
    /// Unit price, in cents.
    pub price_cents: i64,
    /// Units on hand.
    pub stock: i64,
}

/// `POST /products/{id}/price`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePrice {
    /// New unit price, in cents.
    pub price_cents: i64,
}

/// `POST /products/{id}/restock`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Restock {
    /// Units added (negative: a correction that removes units).
    pub quantity: i64,
}

/// `POST /products/{id}/delist`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delist {
    /// Why; empty when absent.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The routes of this context.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/products", tracked("list_product", post(list)))
        .route("/products/{id}/price", tracked("change_product_price", post(change_price)))
        .route("/products/{id}/restock", tracked("restock_product", post(restock)))
        .route("/products/{id}/delist", tracked("delist_product", post(delist)))
}

#[tracing::instrument(skip_all, fields(command = "list_product", product_id = Empty))]
async fn list(
    State(app): State<ApiState>,
    headers: CommandHeaders,
    body: JsonBody<ListProduct>,
) -> Result<Response, ApiError> {
    let ListProduct { product_id, sku, name, price_cents, stock } = body.value;
    let product_id = product_id.unwrap_or_else(Uuid::new_v4);
    tracing::Span::current().record("product_id", display(product_id));
    let command = ProductCommand::List { sku, name, price_cents, stock };
    let reply = app
        .service
        .execute::<ProductState>(product_id, command, &headers.meta(&body.digest))
        .await
        .map_err(api_error)?;
    Ok(respond(reply))
}

/// Runs `command` against the product named in the path.
async fn on_product(
    app: &ApiState,
    path: &PathIds,
    headers: &CommandHeaders,
    digest: &str,
    command: ProductCommand,
) -> Result<Response, ApiError> {
    let product_id = path.uuid("id")?;
    tracing::Span::current().record("product_id", display(product_id));
    let reply = app
        .service
        .execute::<ProductState>(product_id, command, &headers.meta(digest))
        .await
        .map_err(api_error)?;
    Ok(respond(reply))
}

#[tracing::instrument(skip_all, fields(command = "change_product_price", product_id = Empty))]
async fn change_price(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<ChangePrice>,
) -> Result<Response, ApiError> {
    let command = ProductCommand::ChangePrice { price_cents: body.value.price_cents };
    on_product(&app, &path, &headers, &body.digest, command).await
}

#[tracing::instrument(skip_all, fields(command = "restock_product", product_id = Empty))]
async fn restock(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<Restock>,
) -> Result<Response, ApiError> {
    let command = ProductCommand::Restock { quantity: body.value.quantity };
    on_product(&app, &path, &headers, &body.digest, command).await
}

#[tracing::instrument(skip_all, fields(command = "delist_product", product_id = Empty))]
async fn delist(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<Delist>,
) -> Result<Response, ApiError> {
    let command = ProductCommand::Delist { reason: body.value.reason.unwrap_or_default() };
    on_product(&app, &path, &headers, &body.digest, command).await
}
