//! The list routes: a user's orders (newest first), the listed products (by name), and a
//! product's daily sales over a date range. Served from PostgreSQL through the engine's
//! [`ReadPath::query_rows`] (the views of the active generations): a page is one index range
//! scan, and caching pages would need invalidation the projector does not do.
//!
//! A user with no orders gets an empty list rather than 404: orders and users arrive on separate
//! topics, so "no orders yet" is a normal state, not an unknown id.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prism_query::{ApiError, PathIds, QueryParams, ReadPath};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use shop_model::read_models::{
    OrderSummary, ProductCatalogEntry, ProductSalesDaily, ORDER_SUMMARY, PRODUCT_CATALOG, PRODUCT_SALES_DAILY,
};

use crate::cursor::{OrdersCursor, ProductsCursor};

/// `GET /users/{id}/orders?limit=&cursor=`.
#[tracing::instrument(skip_all)]
pub async fn user_orders(
    State(read): State<ReadPath>,
    path: PathIds,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let user_id = path.uuid("id")?;
    let query = query.only(&["limit", "cursor"])?;
    let limit = query.limit(read.config().default_page_size, read.config().max_page_size)?;
    let after = query
        .get("cursor")
        .map(OrdersCursor::decode)
        .transpose()
        .map_err(|err| ApiError::invalid_parameter("cursor", err.to_string()))?;
    let placed_at = after.map(|c| c.placed_at);
    let order_id = after.map(|c| c.order_id);
    let fetch = page_fetch(limit);
    let rows = read
        .query_rows(
            ORDER_SUMMARY,
            include_str!("../../sql/orders_by_user.sql"),
            &[&user_id, &placed_at, &order_id, &fetch],
        )
        .await?;
    page(rows, limit, |last| {
        let last: OrderSummary = typed(last)?;
        Ok(OrdersCursor { placed_at: last.placed_at, order_id: last.order_id }.encode())
    })
}

/// `GET /products?limit=&cursor=`: listed products only.
#[tracing::instrument(skip_all)]
pub async fn products(State(read): State<ReadPath>, query: QueryParams) -> Result<Response, ApiError> {
    let query = query.only(&["limit", "cursor"])?;
    let limit = query.limit(read.config().default_page_size, read.config().max_page_size)?;
    let after = query
        .get("cursor")
        .map(ProductsCursor::decode)
        .transpose()
        .map_err(|err| ApiError::invalid_parameter("cursor", err.to_string()))?;
    let (name, product_id) = match after {
        Some(cursor) => (Some(cursor.name), Some(cursor.product_id)),
        None => (None, None),
    };
    let fetch = page_fetch(limit);
    let rows = read
        .query_rows(
            PRODUCT_CATALOG,
            include_str!("../../sql/listed_products.sql"),
            &[&name, &product_id, &fetch],
        )
        .await?;
    page(rows, limit, |last| {
        let last: ProductCatalogEntry = typed(last)?;
        Ok(ProductsCursor { name: last.name, product_id: last.product_id }.encode())
    })
}

/// `GET /products/{id}/sales?from=YYYY-MM-DD&to=YYYY-MM-DD`: days with sales in the range,
/// oldest first, and their totals. 404 when neither the catalog nor the sales know the
/// product.
#[tracing::instrument(skip_all)]
pub async fn product_sales(
    State(read): State<ReadPath>,
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
    let max_days = read.config().max_sales_days;
    if span > i64::from(max_days) {
        return Err(ApiError::invalid_parameter(
            "to",
            format!("the range covers {span} days; at most {max_days} are allowed"),
        ));
    }
    let days = read
        .query_rows(
            PRODUCT_SALES_DAILY,
            include_str!("../../sql/product_sales.sql"),
            &[&product_id, &from, &to],
        )
        .await?;
    if days.is_empty() && read.entity(PRODUCT_CATALOG, &product_id.to_string(), None).await?.row.is_none() {
        return Err(ApiError::not_found("product"));
    }
    let typed_days: Vec<ProductSalesDaily> = days.iter().map(typed).collect::<Result<_, _>>()?;
    Ok(Json(json!({
        "product_id": product_id,
        "from": from,
        "to": to,
        "days": days,
        "totals": totals(&typed_days),
    }))
    .into_response())
}

fn totals(days: &[ProductSalesDaily]) -> Value {
    let (units, revenue, orders) = days.iter().fold((0i64, 0i64, 0i64), |(u, r, o), d| {
        (u.saturating_add(d.units), r.saturating_add(d.revenue_cents), o.saturating_add(d.order_count))
    });
    json!({ "units": units, "revenue_cents": revenue, "order_count": orders })
}

/// A row as the shop's row type (a row this build cannot read is a 500, logged).
fn typed<T: DeserializeOwned>(row: &Value) -> Result<T, ApiError> {
    serde_json::from_value(row.clone()).map_err(|err| {
        tracing::error!(error = %err, row_type = std::any::type_name::<T>(), "a stored row does not read as its type");
        ApiError::internal()
    })
}

/// Rows to fetch for a page of `limit`: one more, to know whether a next page exists.
fn page_fetch(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX - 1).saturating_add(1)
}

/// `{"items", "next_cursor"}` from up to `limit + 1` rows.
fn page(
    mut rows: Vec<Value>,
    limit: usize,
    cursor_of: impl Fn(&Value) -> Result<String, ApiError>,
) -> Result<Response, ApiError> {
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_cursor = match rows.last() {
        Some(last) if more => Some(cursor_of(last)?),
        _ => None,
    };
    Ok(Json(json!({ "items": rows, "next_cursor": next_cursor })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn pages_know_whether_more_follow() {
        let rows = vec![json!(1), json!(2), json!(3)];
        let got = body(page(rows, 2, |n| Ok(n.to_string())).expect("page")).await;
        assert_eq!(got, json!({"items": [1, 2], "next_cursor": "2"}));
        let got = body(page(vec![json!(1), json!(2)], 2, |n| Ok(n.to_string())).expect("page")).await;
        assert_eq!(got, json!({"items": [1, 2], "next_cursor": null}));
        assert_eq!(page_fetch(200), 201);
    }
}
