//! `product_sales_daily`: units and revenue per product per day (UTC), counted when an
//! order's payment succeeds. Fed by every order: rows are only ever incremented.

use chrono::NaiveDate;
use prism_events::{DomainEvent, Event};
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
    /// Change counter of the row.
    pub revision: i64,
}

/// What one paid order line adds to a (product, day) row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SalesDelta {
    /// Units sold.
    pub units: i64,
    /// Revenue, in cents.
    pub revenue_cents: i64,
    /// Orders counted.
    pub order_count: i64,
}

impl SalesDelta {
    /// Adds another delta.
    pub fn add(&mut self, other: Self) {
        self.units += other.units;
        self.revenue_cents += other.revenue_cents;
        self.order_count += other.order_count;
    }
}

/// The (product, day) rows a paid order adds to; empty for other events.
pub fn deltas(event: &Event) -> Vec<((Uuid, NaiveDate), SalesDelta)> {
    let DomainEvent::OrderPaymentSucceeded(paid) = &event.body else {
        return Vec::new();
    };
    let day = event.meta.occurred_at.date_naive();
    paid.lines
        .iter()
        .map(|line| {
            (
                (line.product_id, day),
                SalesDelta {
                    units: i64::from(line.quantity),
                    revenue_cents: line.line_total_cents(),
                    order_count: 1,
                },
            )
        })
        .collect()
}
