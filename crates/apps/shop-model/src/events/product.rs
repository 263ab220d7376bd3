//! Events of the `product` aggregate (the catalog): listing, price, stock, delisting.

use serde::{Deserialize, Serialize};

use prism_events::DecodeError;
use crate::events::fields::bounds::{MAX_PRICE_CENTS, MAX_REASON_CHARS, MAX_STOCK};
use prism_events::fields::{range, text};
use crate::events::fields::sku;

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
