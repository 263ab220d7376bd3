//! The two error types of the domain: why a command is refused, and why an event cannot be
//! applied to a state.
//!
//! [`DomainError`] is the answer to a client: every variant is permanent for that command
//! (retrying the same command against the same state fails the same way), and each maps to
//! one HTTP status in the command service: [`DomainError::NotFound`] 404,
//! [`DomainError::Rejected`] 409, [`DomainError::InvalidField`] 400.
//!
//! [`EvolveError`] is not a client's fault: it means the stored event stream of an aggregate
//! does not fit the aggregate's rules (an event of another aggregate type, or one the state
//! cannot follow). It is permanent too — replaying the same stream fails the same way — and
//! the service should report it as an internal error naming the aggregate.
//!
//! Field validation is not written here: `validated` runs the event contract's own
//! [`ShopEvent::validate`] on the events a command would emit and translates its answer,
//! so the contract's rules exist once.

use prism_events::{AggregateType, DecodeError};

use crate::events::{EventType, ShopEvent};

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The aggregate does not exist (HTTP 404). Commands that create an aggregate never
    /// return it.
    #[error("{aggregate_type} not found")]
    NotFound {
        /// The kind of aggregate the command was addressed to.
        aggregate_type: AggregateType,
    },
    /// A business rule forbids the command in the current state (HTTP 409).
    #[error("{message} ({reason})")]
    Rejected {
        /// The rule that refused the command, as a stable machine-readable code.
        reason: Rejection,
        /// A sentence for a human; may change between releases, unlike `reason`.
        message: String,
    },
    /// A command field is malformed (HTTP 400).
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField {
        /// The command's field as the client sent it (`email`, `lines[1].quantity`); `body`
        /// when the command as a whole is malformed (e.g. a profile change with no field).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl DomainError {
    /// The field name used in [`DomainError::InvalidField`] when the problem is the command
    /// as a whole rather than one of its fields.
    pub const WHOLE_COMMAND: &'static str = "body";

    /// Shorthand for [`DomainError::NotFound`].
    pub fn not_found(aggregate_type: AggregateType) -> Self {
        Self::NotFound { aggregate_type }
    }

    /// Shorthand for [`DomainError::Rejected`].
    pub fn rejected(reason: Rejection, message: impl Into<String>) -> Self {
        Self::Rejected { reason, message: message.into() }
    }

    /// Shorthand for [`DomainError::InvalidField`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidField { field: field.into(), reason: reason.into() }
    }

    /// A short, stable code for response bodies and metric labels: `not_found`,
    /// `invalid_field`, or the [`Rejection`] code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not_found",
            Self::Rejected { reason, .. } => reason.as_str(),
            Self::InvalidField { .. } => "invalid_field",
        }
    }

    /// Translates the event contract's verdict on an event built from a command into the
    /// command's terms: `payload.lines[0].quantity` becomes `lines[0].quantity`.
    pub(crate) fn from_contract(err: DecodeError) -> Self {
        match err {
            DecodeError::InvalidValue { field, reason } => {
                Self::InvalidField { field: command_field(&field), reason }
            }
            // `validate()` only reports values; anything else would be a contract change
            // this crate has not caught up with, and still a malformed command.
            other => Self::invalid(Self::WHOLE_COMMAND, other.to_string()),
        }
    }
}

/// The contract names fields below `payload`; commands name them from their own root.
fn command_field(contract_field: &str) -> String {
    if contract_field == "payload" {
        return DomainError::WHOLE_COMMAND.to_owned();
    }
    contract_field.strip_prefix("payload.").unwrap_or(contract_field).to_owned()
}

/// Runs the event contract's validation on events a command would emit.
pub(crate) fn validated(events: Vec<ShopEvent>) -> Result<Vec<ShopEvent>, DomainError> {
    for event in &events {
        event.validate().map_err(DomainError::from_contract)?;
    }
    Ok(events)
}

macro_rules! rejections {
    ($($(#[doc = $doc:literal])+ $variant:ident => $code:literal,)+) => {
        /// The business rule behind a [`DomainError::Rejected`]. The codes are an API: clients
        /// branch on them, so a code is never renamed or reused.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rejection { $($(#[doc = $doc])+ $variant,)+ }

        impl Rejection {
            /// Every rejection, in declaration order.
            pub const ALL: &'static [Rejection] = &[$(Self::$variant,)+];

            /// The stable snake_case code.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $code,)+ }
            }
        }
    };
}

rejections! {
    /// user: `Register` on a user that already exists.
    AlreadyRegistered => "already_registered",
    /// user: `ChangeProfile` where every given field equals the current value.
    NoChange => "no_change",
    /// product: `List` on a product that was already listed (delisted ones included).
    AlreadyListed => "already_listed",
    /// product: a change to a product that was delisted.
    ProductDelisted => "product_delisted",
    /// product: `ChangePrice` to the current price.
    PriceUnchanged => "price_unchanged",
    /// product: `Restock` that would take the stock below zero.
    StockBelowZero => "stock_below_zero",
    /// product: `Restock` that would take the stock above `bounds::MAX_STOCK`.
    StockAboveMaximum => "stock_above_maximum",
    /// product: `Restock` (a correction) that would leave fewer units on hand than orders
    /// have reserved.
    StockBelowReserved => "stock_below_reserved",
    /// product: `Reserve` of more units than are available (on hand and not reserved); an
    /// order placed for more than the catalog can deliver.
    InsufficientStock => "insufficient_stock",
    /// product: `Reserve` for an order that already holds a reservation of this product.
    AlreadyReserved => "already_reserved",
    /// cart, order: `AddItem` or `Place` for a user id that was never registered.
    UserNotFound => "user_not_found",
    /// cart: `AddItem` by a user other than the cart's owner.
    NotCartOwner => "not_cart_owner",
    /// cart: `AddItem` of a product the catalog does not have.
    ProductNotFound => "product_not_found",
    /// cart: `AddItem` of a delisted product.
    ProductNotListed => "product_not_listed",
    /// cart: `AddItem` that would take a line above `bounds::MAX_LINE_QUANTITY` units.
    QuantityLimit => "quantity_limit",
    /// cart: `AddItem` of a new product to a cart that has `bounds::MAX_LINES` lines.
    TooManyLines => "too_many_lines",
    /// cart: `RemoveItem` of a product that is not in the cart.
    ItemNotInCart => "item_not_in_cart",
    /// cart: `CheckOut` of a cart with no lines.
    CartEmpty => "cart_empty",
    /// cart: any command on a cart that was checked out.
    CartCheckedOut => "cart_checked_out",
    /// order: `Place` on an order that already exists.
    AlreadyPlaced => "already_placed",
    /// order: payment, shipping or cancellation of a cancelled order.
    OrderCancelled => "order_cancelled",
    /// order: `RequestPayment` or `Cancel` while a payment is pending.
    PaymentInProgress => "payment_in_progress",
    /// order: `RequestPayment` on an order that was paid (shipped ones included), or
    /// `Cancel` of a paid order.
    OrderAlreadyPaid => "order_already_paid",
    /// order: a payment result when no payment is pending.
    NoPaymentPending => "no_payment_pending",
    /// order: `Ship` of an order that is not paid.
    OrderNotPaid => "order_not_paid",
    /// order: `Ship` or `Cancel` of an order that was shipped.
    OrderShipped => "order_shipped",
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an event cannot be applied to an aggregate's state: the stored stream is not one this
/// aggregate could have produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvolveError {
    /// The event belongs to another aggregate type.
    #[error("event `{event_type}` belongs to aggregate type `{actual}`, not `{expected}`")]
    WrongAggregate {
        /// The aggregate type being rehydrated.
        expected: AggregateType,
        /// The aggregate type the event belongs to.
        actual: AggregateType,
        /// The event's type.
        event_type: EventType,
    },
    /// The event cannot follow the events before it (e.g. an item added to a cart that was
    /// never opened, a shipment of an unpaid order).
    #[error("event `{event_type}` cannot be applied to this {aggregate_type}: {reason}")]
    Inconsistent {
        /// The aggregate type being rehydrated.
        aggregate_type: AggregateType,
        /// The event's type.
        event_type: EventType,
        /// What about the state forbids it.
        reason: String,
    },
}

impl EvolveError {
    /// `event` belongs to another aggregate type than `expected`.
    pub(crate) fn wrong_aggregate(expected: AggregateType, event: &ShopEvent) -> Self {
        Self::WrongAggregate { expected, actual: event.aggregate_type(), event_type: event.event_type() }
    }

    /// `event` does not fit the state it is applied to.
    pub(crate) fn inconsistent(event: &ShopEvent, reason: impl Into<String>) -> Self {
        Self::Inconsistent {
            aggregate_type: event.aggregate_type(),
            event_type: event.event_type(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn rejection_codes_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for rejection in Rejection::ALL {
            let code = rejection.as_str();
            assert!(seen.insert(code), "duplicate code {code}");
            assert!(
                !code.is_empty()
                    && code.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && !code.starts_with('_')
                    && !code.ends_with('_'),
                "{code} is not snake_case"
            );
            assert_eq!(rejection.to_string(), code);
        }
    }

    #[test]
    fn contract_fields_lose_their_payload_prefix() {
        assert_eq!(command_field("payload.lines[0].quantity"), "lines[0].quantity");
        assert_eq!(command_field("payload.email"), "email");
        assert_eq!(command_field("payload"), "body");
        assert_eq!(command_field("aggregate_version"), "aggregate_version");
    }

    #[test]
    fn errors_have_stable_codes_and_readable_messages() {
        let rejected = DomainError::rejected(Rejection::CartEmpty, "the cart has no items");
        assert_eq!(rejected.code(), "cart_empty");
        assert_eq!(rejected.to_string(), "the cart has no items (cart_empty)");
        let missing = DomainError::not_found(crate::aggregates::ORDER);
        assert_eq!((missing.code(), missing.to_string().as_str()), ("not_found", "order not found"));
        let invalid = DomainError::from_contract(DecodeError::invalid("payload.sku", "too long"));
        assert_eq!(invalid, DomainError::invalid("sku", "too long"));
        assert_eq!(invalid.code(), "invalid_field");
    }
}
