//! Events of the `product` aggregate (the catalog): listing, price, stock, delisting, and the
//! units orders hold.
//!
//! Stock has two parts. `stock` (in `ProductListed`, `ProductRestocked`) counts the units on
//! hand in the warehouse. Of those, some are *reserved*: set aside for orders that were placed
//! and neither shipped nor cancelled yet. Only the rest, `stock - reserved`, is *available* to
//! new orders. Placing an order reserves its units (`StockReserved`), cancelling it gives them
//! back (`StockReleased`), shipping it takes them out of the warehouse (`StockShipped`: on hand
//! and reserved both drop). Each of these names the order, so a product knows which order
//! holds what.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::fields::bounds::{MAX_LINE_QUANTITY, MAX_PRICE_CENTS, MAX_REASON_CHARS, MAX_STOCK};
use crate::events::fields::sku;
use prism_events::fields::{range, text};
use prism_events::DecodeError;

/// A product was put on sale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductListed {
    /// The merchant's stock-keeping unit.
    pub sku: String,
    /// The name shown in the catalog.
    pub name: String,
    /// Price of one unit, in cents.
    pub price_cents: i64,
    /// Units on hand at listing.
    pub stock: i64,
}

impl ProductListed {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        sku("payload.sku", &self.sku)?;
        text("payload.name", &self.name, 1, 200)?;
        range("payload.price_cents", self.price_cents, 1, MAX_PRICE_CENTS)?;
        range("payload.stock", self.stock, 0, MAX_STOCK)
    }
}

/// The unit price changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductPriceChanged {
    /// The new price of one unit, in cents.
    pub price_cents: i64,
    /// The price it replaced, so a consumer can show the change without history.
    pub previous_price_cents: i64,
}

impl ProductPriceChanged {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        range("payload.price_cents", self.price_cents, 1, MAX_PRICE_CENTS)?;
        range("payload.previous_price_cents", self.previous_price_cents, 1, MAX_PRICE_CENTS)
    }
}

/// Stock was adjusted: a delivery (positive) or a correction (negative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductRestocked {
    /// The change in units on hand; never zero.
    pub quantity: i64,
    /// Units on hand after the change; never negative.
    pub stock_after: i64,
}

impl ProductRestocked {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        range("payload.quantity", self.quantity, -MAX_STOCK, MAX_STOCK)?;
        if self.quantity == 0 {
            return Err(DecodeError::invalid("payload.quantity", "must not be zero"));
        }
        range("payload.stock_after", self.stock_after, 0, MAX_STOCK)
    }
}

/// The product was taken off sale for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductDelisted {
    /// Why, in the merchant's words.
    pub reason: String,
}

impl ProductDelisted {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        text("payload.reason", &self.reason, 0, MAX_REASON_CHARS)
    }
}

/// The units of one order line, as the stock events carry them: an order line's quantity,
/// `1..=bounds::MAX_LINE_QUANTITY`.
fn line_quantity(quantity: u32) -> Result<(), DecodeError> {
    range("payload.quantity", i64::from(quantity), 1, i64::from(MAX_LINE_QUANTITY))
}

/// Units were set aside for an order as it was placed: still on hand, no longer available.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockReserved {
    /// The order that holds the units; a product holds at most one reservation per order.
    pub order_id: Uuid,
    /// Units reserved: the order line's quantity.
    pub quantity: u32,
}

impl StockReserved {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        line_quantity(self.quantity)
    }
}

/// The order holding units was cancelled: its reservation ends and the units are available
/// again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockReleased {
    /// The order whose reservation ends.
    pub order_id: Uuid,
    /// Units released: exactly what the order had reserved.
    pub quantity: u32,
}

impl StockReleased {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        line_quantity(self.quantity)
    }
}

/// The order holding units was shipped: its reservation ends and the units leave the
/// warehouse (stock on hand and reserved both drop by `quantity`; available is unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StockShipped {
    /// The order that was shipped.
    pub order_id: Uuid,
    /// Units shipped: exactly what the order had reserved.
    pub quantity: u32,
}

impl StockShipped {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        line_quantity(self.quantity)
    }
}
