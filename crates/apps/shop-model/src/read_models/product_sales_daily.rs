//! `product_sales_daily`: units and revenue per product per day (UTC), counted when an
//! order's payment succeeds. Fed by every order: rows are only ever incremented.

use chrono::NaiveDate;
use prism_events::Event;

use crate::events::ShopEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One product's sales on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSalesDaily {
    /// The product.
    pub product_id: Uuid,
    /// The UTC day the payments succeeded on.
    pub day: NaiveDate,
    /// Units sold.
    pub units: i64,
    /// Revenue, in cents.
    pub revenue_cents: i64,
    /// Paid orders containing the product.
    pub order_count: i64,
}

/// The additive columns.
pub const AMOUNTS: &[&str] = &["units", "revenue_cents", "order_count"];

/// The (product, day) rows a paid order adds to, one per line; nothing for other events.
pub fn sales(event: &Event) -> Vec<ProductSalesDaily> {
    let Some(ShopEvent::OrderPaymentSucceeded(paid)) = event.body::<ShopEvent>() else {
        return Vec::new();
    };
    let day = event.meta.occurred_at.date_naive();
    paid.lines
        .iter()
        .map(|line| ProductSalesDaily {
            product_id: line.product_id,
            day,
            units: i64::from(line.quantity),
            revenue_cents: line.line_total_cents(),
            order_count: 1,
        })
        .collect()
}
