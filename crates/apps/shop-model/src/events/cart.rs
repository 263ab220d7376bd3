//! Events of the `cart` aggregate: a shopping cart from first item to checkout.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::fields::bounds::{MAX_LINE_QUANTITY, MAX_PRICE_CENTS};
use prism_events::fields::range;
use prism_events::DecodeError;

/// A cart was created for a user (emitted before its first item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartOpened {
    /// The owner of the cart.
    pub user_id: Uuid,
}

impl CartOpened {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// Units of a product were added; adding a product already in the cart raises its quantity
/// and sets its unit price to this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartItemAdded {
    /// The product added.
    pub product_id: Uuid,
    /// Units added.
    pub quantity: u32,
    /// The catalog price at the time of adding, in cents.
    pub unit_price_cents: i64,
}

impl CartItemAdded {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        range("payload.quantity", i64::from(self.quantity), 1, i64::from(MAX_LINE_QUANTITY))?;
        range("payload.unit_price_cents", self.unit_price_cents, 1, MAX_PRICE_CENTS)
    }
}

/// A product's line was removed from the cart entirely.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartItemRemoved {
    /// The product removed.
    pub product_id: Uuid,
}

impl CartItemRemoved {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// The cart was checked out into an order; it accepts no more changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartCheckedOut {
    /// The order placed from this cart.
    pub order_id: Uuid,
}

impl CartCheckedOut {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        Ok(())
    }
}
