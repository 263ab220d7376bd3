//! `order_summary`: one row per order, listed per user newest first.

use crate::events::{OrderLine, PaymentMethod};
use chrono::{DateTime, Utc};
use prism_events::Event;
use prism_projections::Unprojectable;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{absent, existing, shop_event, stored_version};
use crate::events::ShopEvent;

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    PaymentPending,
    Paid,
    PaymentFailed,
    Shipped,
    Cancelled,
}

/// One order as customers and support see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSummary {
    /// The order (the aggregate id).
    pub order_id: Uuid,
    /// The customer; orders are listed per user.
    pub user_id: Uuid,
    /// The cart the order was checked out from, if any.
    pub cart_id: Option<Uuid>,
    /// Where the order stands.
    pub status: OrderStatus,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// Units over all lines.
    pub item_count: i64,
    /// Order total, in cents.
    pub total_cents: i64,
    /// Chosen payment method, once payment was requested.
    pub payment_method: Option<PaymentMethod>,
    /// The provider's reference, once paid.
    pub payment_reference: Option<String>,
    /// The provider's reason for the latest declined payment.
    pub payment_failure_reason: Option<String>,
    /// Carrier, once shipped.
    pub carrier: Option<String>,
    /// Tracking code, once shipped.
    pub tracking_code: Option<String>,
    /// Why it was cancelled, if it was.
    pub cancel_reason: Option<String>,
    /// When it was placed (the list order).
    pub placed_at: DateTime<Utc>,
    /// When payment was last requested.
    pub payment_requested_at: Option<DateTime<Utc>>,
    /// When payment succeeded.
    pub paid_at: Option<DateTime<Utc>>,
    /// When it shipped.
    pub shipped_at: Option<DateTime<Utc>>,
    /// When it was cancelled.
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Time of the latest event applied.
    pub updated_at: DateTime<Utc>,
    /// The order's aggregate version this row reflects .
    pub version: i64,
}

/// Folds one order event into the order's summary.
pub fn apply(view: Option<OrderSummary>, event: &Event) -> Result<OrderSummary, Unprojectable> {
    let at = event.meta.occurred_at;
    let mut order = match shop_event(event)? {
        ShopEvent::OrderPlaced(placed) => {
            absent(&view, event)?;
            OrderSummary {
                order_id: event.meta.aggregate_id,
                user_id: placed.user_id,
                cart_id: placed.cart_id,
                status: OrderStatus::Placed,
                item_count: placed.lines.iter().map(|l| i64::from(l.quantity)).sum(),
                lines: placed.lines.clone(),
                total_cents: placed.total_cents,
                payment_method: None,
                payment_reference: None,
                payment_failure_reason: None,
                carrier: None,
                tracking_code: None,
                cancel_reason: None,
                placed_at: at,
                payment_requested_at: None,
                paid_at: None,
                shipped_at: None,
                cancelled_at: None,
                updated_at: at,
                version: 0,
            }
        }
        body => {
            let mut order = existing(view, event)?;
            match body {
                ShopEvent::OrderPaymentRequested(e) => {
                    order.status = OrderStatus::PaymentPending;
                    order.payment_method = Some(e.method);
                    order.payment_requested_at = Some(at);
                }
                ShopEvent::OrderPaymentSucceeded(e) => {
                    order.status = OrderStatus::Paid;
                    order.payment_reference = Some(e.payment_reference.clone());
                    order.paid_at = Some(at);
                }
                ShopEvent::OrderPaymentFailed(e) => {
                    order.status = OrderStatus::PaymentFailed;
                    order.payment_failure_reason = Some(e.reason.clone());
                }
                ShopEvent::OrderShipped(e) => {
                    order.status = OrderStatus::Shipped;
                    order.carrier = Some(e.carrier.clone());
                    order.tracking_code = Some(e.tracking_code.clone());
                    order.shipped_at = Some(at);
                }
                ShopEvent::OrderCancelled(e) => {
                    order.status = OrderStatus::Cancelled;
                    order.cancel_reason = Some(e.reason.clone());
                    order.cancelled_at = Some(at);
                }
                other => {
                    return Err(Unprojectable::new(format!("{} is not an order event", other.event_type())))
                }
            }
            order
        }
    };
    order.updated_at = at;
    order.version = stored_version(event);
    Ok(order)
}
