//! `cart_view`: one row per cart — lines, totals, and the order it became.

use chrono::{DateTime, Utc};
use prism_events::Event;
use prism_projections::Unprojectable;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{absent, existing, shop_event, stored_version};
use crate::events::ShopEvent;

/// Whether the cart still takes changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    Open,
    CheckedOut,
}

/// One product line of a cart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLineView {
    /// The product.
    pub product_id: Uuid,
    /// Units in the cart.
    pub quantity: i64,
    /// Unit price when last added, in cents.
    pub unit_price_cents: i64,
}

/// One cart as its owner sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartView {
    /// The cart (the aggregate id).
    pub cart_id: Uuid,
    /// Its owner.
    pub user_id: Uuid,
    /// Whether it still takes changes.
    pub status: CartStatus,
    /// Lines in the order products were first added.
    pub lines: Vec<CartLineView>,
    /// Units over all lines.
    pub item_count: i64,
    /// Sum of quantity × unit price, in cents.
    pub total_cents: i64,
    /// The order it was checked out into.
    pub order_id: Option<Uuid>,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
    /// When it was checked out.
    pub checked_out_at: Option<DateTime<Utc>>,
    /// Time of the latest event applied.
    pub updated_at: DateTime<Utc>,
    /// The cart's aggregate version this row reflects .
    pub version: i64,
}

/// Folds one cart event into the cart's view.
pub fn apply(view: Option<CartView>, event: &Event) -> Result<CartView, Unprojectable> {
    let at = event.meta.occurred_at;
    let mut cart = match shop_event(event)? {
        ShopEvent::CartOpened(opened) => {
            absent(&view, event)?;
            CartView {
                cart_id: event.meta.aggregate_id,
                user_id: opened.user_id,
                status: CartStatus::Open,
                lines: Vec::new(),
                item_count: 0,
                total_cents: 0,
                order_id: None,
                opened_at: at,
                checked_out_at: None,
                updated_at: at,
                version: 0,
            }
        }
        body => {
            let mut cart = existing(view, event)?;
            match body {
                ShopEvent::CartItemAdded(e) => {
                    match cart.lines.iter_mut().find(|l| l.product_id == e.product_id) {
                        Some(line) => {
                            line.quantity += i64::from(e.quantity);
                            line.unit_price_cents = e.unit_price_cents;
                        }
                        None => cart.lines.push(CartLineView {
                            product_id: e.product_id,
                            quantity: i64::from(e.quantity),
                            unit_price_cents: e.unit_price_cents,
                        }),
                    }
                }
                ShopEvent::CartItemRemoved(e) => {
                    let before = cart.lines.len();
                    cart.lines.retain(|l| l.product_id != e.product_id);
                    if cart.lines.len() == before {
                        return Err(Unprojectable::new(format!(
                            "CartItemRemoved at version {} removes product {} which cart {} does not hold",
                            event.meta.aggregate_version, e.product_id, cart.cart_id
                        )));
                    }
                }
                ShopEvent::CartCheckedOut(e) => {
                    cart.status = CartStatus::CheckedOut;
                    cart.order_id = Some(e.order_id);
                    cart.checked_out_at = Some(at);
                }
                other => {
                    return Err(Unprojectable::new(format!("{} is not a cart event", other.event_type())))
                }
            }
            cart.item_count = cart.lines.iter().map(|l| l.quantity).sum();
            cart.total_cents = cart.lines.iter().map(|l| l.quantity * l.unit_price_cents).sum();
            cart
        }
    };
    cart.updated_at = at;
    cart.version = stored_version(event);
    Ok(cart)
}
