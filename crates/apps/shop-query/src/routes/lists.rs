//! The list routes: a user's orders (newest first), the listed products (by name), and a
//! product's daily sales over a date range. Served from PostgreSQL (through the views): a
//! page is one index range scan, and caching pages would need invalidation the projector
//! does not do.
//!
//! A user with no orders gets an empty list rather than 404: orders and users arrive on
//! separate topics, so "no orders yet" is a normal state, not an unknown id.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prism_projections::views::ProductSalesDaily;
use serde_json::json;

use crate::cursor::{OrdersCursor, ProductsCursor};
use crate::error::ApiError;
use crate::http::AppState;
use crate::params::{PathIds, QueryParams};

/// `GET /users/{id}/orders?limit=&cursor=`.
#[tracing::instrument(skip_all)]
pub async fn user_orders(
    State(app): State<AppState>,
    path: PathIds,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let user_id = path.uuid("id")?;
    let query = query.only(&["limit", "cursor"])?;
    let limit = query.limit(app.limits.default_page_size, app.limits.max_page_size)?;
    let after = query
        .get("cursor")
        .map(OrdersCursor::decode)
        .transpose()
        .map_err(|err| ApiError::invalid_parameter("cursor", err.to_string()))?;
    let page = app.reads.user_orders(user_id, after, limit).await?;
    Ok(Json(json!({ "items": page.items, "next_cursor": page.next_cursor })).into_response())
}

/// `GET /products?limit=&cursor=`: listed products only.
#[tracing::instrument(skip_all)]
pub async fn products(State(app): State<AppState>, query: QueryParams) -> Result<Response, ApiError> {
    let query = query.only(&["limit", "cursor"])?;
    let limit = query.limit(app.limits.default_page_size, app.limits.max_page_size)?;
    let after = query
        .get("cursor")
        .map(ProductsCursor::decode)
        .transpose()
        .map_err(|err| ApiError::invalid_parameter("cursor", err.to_string()))?;
    let page = app.reads.listed_products(after, limit).await?;
    Ok(Json(json!({ "items": page.items, "next_cursor": page.next_cursor })).into_response())
}

/// `GET /products/{id}/sales?from=YYYY-MM-DD&to=YYYY-MM-DD`: days with sales in the range,
/// oldest first, and their totals. 404 when neither the catalog nor the sales know the
/// product.
#[tracing::instrument(skip_all)]
pub async fn product_sales(
    State(app): State<AppState>,
    path: PathIds,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let product_id = path.uuid("id")?;
    let query = query.only(&["from", "to"])?;
    let from = query.date("from")?;
    let to = query.date("to")?;
    if to < from {
        return Err(ApiError::invalid_parameter("to", "`to` must not be before `from`"));
    }
    let span = (to - from).num_days() + 1;
    if span > i64::from(app.limits.max_sales_days) {
        return Err(ApiError::invalid_parameter(
            "to",
            format!("the range covers {span} days; at most {} are allowed", app.limits.max_sales_days),
        ));
    }
    let days =
        app.reads.product_sales(product_id, from, to).await?.ok_or_else(|| ApiError::not_found("product"))?;
    let totals = totals(&days);
    Ok(Json(json!({
        "product_id": product_id,
        "from": from,
        "to": to,
        "days": days,
        "totals": totals,
    }))
    .into_response())
}

fn totals(days: &[ProductSalesDaily]) -> serde_json::Value {
    let (units, revenue, orders) = days.iter().fold((0i64, 0i64, 0i64), |(u, r, o), d| {
        (u.saturating_add(d.units), r.saturating_add(d.revenue_cents), o.saturating_add(d.order_count))
    });
    json!({ "units": units, "revenue_cents": revenue, "order_count": orders })
}
