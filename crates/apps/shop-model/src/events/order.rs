//! Events of the `order` aggregate: placement, payment, shipping, cancellation.
//!
//! `OrderPaymentSucceeded` carries the user and the lines of the order: the projections fed
//! by many orders (`user_profile` totals, `product_sales_daily`) then need no lookup of
//! earlier events, and their folds stay pure and set-based.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::fields::bounds::{MAX_LINES, MAX_LINE_QUANTITY, MAX_PRICE_CENTS, MAX_REASON_CHARS};
use prism_events::fields::{range, text};
use prism_events::DecodeError;

/// One product line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// The product ordered.
    pub product_id: Uuid,
    /// Units ordered.
    pub quantity: u32,
    /// Price of one unit when the order was placed, in cents.
    pub unit_price_cents: i64,
}

impl OrderLine {
    /// Quantity times unit price.
    pub fn line_total_cents(&self) -> i64 {
        i64::from(self.quantity) * self.unit_price_cents
    }
}

/// Checks a list of lines: 1 to 100 of them, each product once, ranges respected; returns
/// their total.
pub(crate) fn validate_lines(field: &str, lines: &[OrderLine]) -> Result<i64, DecodeError> {
    if lines.is_empty() || lines.len() > MAX_LINES {
        return Err(DecodeError::invalid(
            field,
            format!("has {} lines, expected 1..={MAX_LINES}", lines.len()),
        ));
    }
    let mut seen = HashSet::with_capacity(lines.len());
    let mut total = 0_i64;
    for (i, line) in lines.iter().enumerate() {
        range(&format!("{field}[{i}].quantity"), i64::from(line.quantity), 1, i64::from(MAX_LINE_QUANTITY))?;
        range(&format!("{field}[{i}].unit_price_cents"), line.unit_price_cents, 1, MAX_PRICE_CENTS)?;
        if !seen.insert(line.product_id) {
            return Err(DecodeError::invalid(
                format!("{field}[{i}].product_id"),
                format!("product {} appears in more than one line", line.product_id),
            ));
        }
        total += line.line_total_cents();
    }
    Ok(total)
}

/// An order was placed, from a cart or from a list of items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPlaced {
    /// The customer.
    pub user_id: Uuid,
    /// The cart it was checked out from, if any.
    #[serde(default)]
    pub cart_id: Option<Uuid>,
    /// What was ordered.
    pub lines: Vec<OrderLine>,
    /// Sum of the line totals, in cents.
    pub total_cents: i64,
}

impl OrderPlaced {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        let sum = validate_lines("payload.lines", &self.lines)?;
        if sum != self.total_cents {
            return Err(DecodeError::invalid(
                "payload.total_cents",
                format!("is {} but the lines add up to {sum}", self.total_cents),
            ));
        }
        Ok(())
    }
}

/// How the customer pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Card,
    BankTransfer,
    Wallet,
}

impl PaymentMethod {
    /// The name on the wire and in read models.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Card => "card",
            Self::BankTransfer => "bank_transfer",
            Self::Wallet => "wallet",
        }
    }
}

/// Payment of the order total was started with a payment provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPaymentRequested {
    /// The amount requested, in cents: the order total.
    pub amount_cents: i64,
    /// The payment method chosen.
    pub method: PaymentMethod,
}

impl OrderPaymentRequested {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        range("payload.amount_cents", self.amount_cents, 1, i64::MAX / 4)
    }
}

/// The payment provider confirmed the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPaymentSucceeded {
    /// The provider's reference for the payment.
    pub payment_reference: String,
    /// The customer (carried so per-user totals need no lookup).
    pub user_id: Uuid,
    /// The amount captured, in cents.
    pub amount_cents: i64,
    /// The lines paid for (carried so per-product sales need no lookup).
    pub lines: Vec<OrderLine>,
}

impl OrderPaymentSucceeded {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        text("payload.payment_reference", &self.payment_reference, 1, 64)?;
        let sum = validate_lines("payload.lines", &self.lines)?;
        if sum != self.amount_cents {
            return Err(DecodeError::invalid(
                "payload.amount_cents",
                format!("is {} but the lines add up to {sum}", self.amount_cents),
            ));
        }
        Ok(())
    }
}

/// The payment provider declined the payment; the order can be paid again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderPaymentFailed {
    /// The provider's reason.
    pub reason: String,
}

impl OrderPaymentFailed {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        text("payload.reason", &self.reason, 1, MAX_REASON_CHARS)
    }
}

/// The order left the warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderShipped {
    /// The carrier's name.
    pub carrier: String,
    /// The carrier's tracking code.
    pub tracking_code: String,
}

impl OrderShipped {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        text("payload.carrier", &self.carrier, 1, 64)?;
        text("payload.tracking_code", &self.tracking_code, 1, 64)
    }
}

/// The order was cancelled before it was paid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderCancelled {
    /// Why, in the customer's or operator's words.
    pub reason: String,
}

impl OrderCancelled {
    pub(crate) fn validate(&self) -> Result<(), DecodeError> {
        text("payload.reason", &self.reason, 1, MAX_REASON_CHARS)
    }
}
