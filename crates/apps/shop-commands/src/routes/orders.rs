//! The orders context: `POST /orders` (place from items, reserving their units),
//! `POST /orders/{id}/pay`, `POST /orders/{id}/payment` (the provider's result),
//! `POST /orders/{id}/ship` (the reserved units leave the stock), `POST /orders/{id}/cancel`
//! (the reserved units are available again). Placing, shipping and cancelling append to the
//! order and to its products in one transaction ([`crate::service`]).

use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use serde::Deserialize;
use shop_model::domain::{OrderCommand, OrderState};
use shop_model::events::PaymentMethod;
use tracing::field::{display, Empty};
use uuid::Uuid;

use crate::error::api_error;
use crate::service::{self, RequestedItem};
use prism_commands::http::{respond, tracked, ApiError, ApiState, CommandHeaders, JsonBody, PathIds};

/// One requested line of `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    /// The product.
    pub product_id: Uuid,
    /// Units.
    pub quantity: u32,
}

/// `POST /orders`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrder {
    /// The new order's id; generated when absent.
    #[serde(default)]
    pub order_id: Option<Uuid>,
    /// The customer.
    pub user_id: Uuid,
    /// What to order; prices come from the catalog.
    pub items: Vec<Item>,
}

/// `POST /orders/{id}/pay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pay {
    /// How the customer pays.
    pub method: PaymentMethod,
}

/// The provider's verdict in `POST /orders/{id}/payment`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentOutcome {
    /// Paid; `payment_reference` is required.
    Succeeded,
    /// Declined; `reason` is required.
    Failed,
}

/// `POST /orders/{id}/payment`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentResult {
    /// Succeeded or failed.
    pub outcome: PaymentOutcome,
    /// The provider's reference (with `succeeded`).
    #[serde(default)]
    pub payment_reference: Option<String>,
    /// The provider's reason (with `failed`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST /orders/{id}/ship`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ship {
    /// Carrier name.
    pub carrier: String,
    /// Carrier's tracking code.
    pub tracking_code: String,
}

/// `POST /orders/{id}/cancel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// Why.
    pub reason: String,
}

/// The routes of this context.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/orders", tracked("place_order", post(place)))
        .route("/orders/{id}/pay", tracked("request_payment", post(pay)))
        .route("/orders/{id}/payment", tracked("record_payment", post(payment)))
        .route("/orders/{id}/ship", tracked("ship_order", post(ship)))
        .route("/orders/{id}/cancel", tracked("cancel_order", post(cancel)))
}

#[tracing::instrument(skip_all, fields(command = "place_order", order_id = Empty))]
async fn place(
    State(app): State<ApiState>,
    headers: CommandHeaders,
    body: JsonBody<PlaceOrder>,
) -> Result<Response, ApiError> {
    let PlaceOrder { order_id, user_id, items } = body.value;
    let order_id = order_id.unwrap_or_else(Uuid::new_v4);
    tracing::Span::current().record("order_id", display(order_id));
    let items: Vec<RequestedItem> = items
        .iter()
        .map(|item| RequestedItem { product_id: item.product_id, quantity: item.quantity })
        .collect();
    let reply = service::place_order(&app.service, order_id, user_id, &items, &headers.meta(&body.digest))
        .await
        // The domain speaks of an order's `lines`; the request calls them `items`.
        .map_err(|err| api_error(err).rename_field("lines", "items"))?;
    Ok(respond(reply))
}

/// Runs `command` against the order named in the path.
async fn on_order(
    app: &ApiState,
    path: &PathIds,
    headers: &CommandHeaders,
    digest: &str,
    command: OrderCommand,
) -> Result<Response, ApiError> {
    let order_id = path.uuid("id")?;
    tracing::Span::current().record("order_id", display(order_id));
    let reply = app
        .service
        .execute::<OrderState>(order_id, command, &headers.meta(digest))
        .await
        .map_err(api_error)?;
    Ok(respond(reply))
}

#[tracing::instrument(skip_all, fields(command = "request_payment", order_id = Empty))]
async fn pay(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<Pay>,
) -> Result<Response, ApiError> {
    let command = OrderCommand::RequestPayment { method: body.value.method };
    on_order(&app, &path, &headers, &body.digest, command).await
}

#[tracing::instrument(skip_all, fields(command = "record_payment", order_id = Empty))]
async fn payment(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<PaymentResult>,
) -> Result<Response, ApiError> {
    let PaymentResult { outcome, payment_reference, reason } = body.value;
    let command = match outcome {
        PaymentOutcome::Succeeded => {
            if reason.is_some() {
                return Err(ApiError::invalid_field("reason", "`reason` goes with outcome `failed` only"));
            }
            let payment_reference = payment_reference.ok_or_else(|| {
                ApiError::invalid_field(
                    "payment_reference",
                    "outcome `succeeded` needs a `payment_reference`",
                )
            })?;
            OrderCommand::RecordPaymentSucceeded { payment_reference }
        }
        PaymentOutcome::Failed => {
            if payment_reference.is_some() {
                return Err(ApiError::invalid_field(
                    "payment_reference",
                    "`payment_reference` goes with outcome `succeeded` only",
                ));
            }
            let reason = reason
                .ok_or_else(|| ApiError::invalid_field("reason", "outcome `failed` needs a `reason`"))?;
            OrderCommand::RecordPaymentFailed { reason }
        }
    };
    on_order(&app, &path, &headers, &body.digest, command).await
}

#[tracing::instrument(skip_all, fields(command = "ship_order", order_id = Empty))]
async fn ship(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<Ship>,
) -> Result<Response, ApiError> {
    let order_id = path.uuid("id")?;
    tracing::Span::current().record("order_id", display(order_id));
    let Ship { carrier, tracking_code } = body.value;
    let reply =
        service::ship_order(&app.service, order_id, carrier, tracking_code, &headers.meta(&body.digest))
            .await
            .map_err(api_error)?;
    Ok(respond(reply))
}

#[tracing::instrument(skip_all, fields(command = "cancel_order", order_id = Empty))]
async fn cancel(
    State(app): State<ApiState>,
    path: PathIds,
    headers: CommandHeaders,
    body: JsonBody<Cancel>,
) -> Result<Response, ApiError> {
    let order_id = path.uuid("id")?;
    tracing::Span::current().record("order_id", display(order_id));
    let reply = service::cancel_order(&app.service, order_id, body.value.reason, &headers.meta(&body.digest))
        .await
        .map_err(api_error)?;
    Ok(respond(reply))
}
