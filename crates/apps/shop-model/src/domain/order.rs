//! The `order` aggregate: an order's life from placement through payment to shipping.
//!
//! The status machine ([`OrderStatus::after`] is its one table, which `evolve` follows):
//!
//! ```text
//! Placed ──RequestPayment──▶ PaymentPending ──RecordPaymentSucceeded──▶ Paid ──Ship──▶ Shipped
//!   │                          │        ▲
//!   │       RecordPaymentFailed│        │RequestPayment
//!   │                          ▼        │
//!   │                        PaymentFailed
//!   │                              │
//!   └─────Cancel────▶ Cancelled ◀──┘ Cancel
//! ```
//!
//! `decide` refuses every command the table does not allow from the current status with a
//! stable [`Rejection`] code that says why (`order_not_paid`,
//! `payment_in_progress`, `order_cancelled`, …). The amount of a payment is always the order
//! total fixed at placement; `OrderPaymentSucceeded` repeats the user and lines so
//! projections fed by many orders need no lookup. Line rules (1 to `bounds::MAX_LINES` lines,
//! quantities, prices, each product once) are the event contract's, checked by validating
//! `OrderPlaced`.
//!
//! An order is for a registered user: the command service reads the user aggregate and says
//! so in [`OrderCommand::Place`]; anyone else is refused with `user_not_found` (a rejection,
//! 409, like the cart's `product_not_found`: the id is in the request body, and a 404 would
//! read as "no such order"). Stock is the catalog's: the service reserves each line's units
//! with the product aggregate (`ProductCommand::Reserve`) in the transaction that places the
//! order, releases them in the one that cancels it and ships them in the one that ships it
//! (see [`crate::domain::product`]).

use crate::events::{
    OrderCancelled, OrderLine, OrderPaymentFailed, OrderPaymentRequested, OrderPaymentSucceeded, OrderPlaced,
    OrderShipped, PaymentMethod,
};
use prism_events::AggregateType;

use crate::aggregates;
use crate::events::{EventType, ShopEvent};
use uuid::Uuid;

use crate::domain::error::{validated, DomainError, EvolveError, Rejection};
use crate::domain::Aggregate;

/// What a client (or the payment provider, or the warehouse) can ask of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderCommand {
    /// Place the order; creates it.
    Place {
        /// The customer.
        user_id: Uuid,
        /// Whether `user_id` is a registered user, as the service read it from the user
        /// aggregate; an order for anyone else is refused (`user_not_found`).
        user_registered: bool,
        /// The cart it comes from, if any.
        cart_id: Option<Uuid>,
        /// What is ordered, with unit prices fixed now.
        lines: Vec<OrderLine>,
    },
    /// Start paying the order total.
    RequestPayment {
        /// The payment method chosen.
        method: PaymentMethod,
    },
    /// The payment provider confirmed the pending payment.
    RecordPaymentSucceeded {
        /// The provider's reference for the payment.
        payment_reference: String,
    },
    /// The payment provider declined the pending payment.
    RecordPaymentFailed {
        /// The provider's reason.
        reason: String,
    },
    /// Hand the paid order to a carrier.
    Ship {
        /// The carrier's name.
        carrier: String,
        /// The carrier's tracking code.
        tracking_code: String,
    },
    /// Cancel an order that is not paid and has no payment pending.
    Cancel {
        /// Why, in the customer's or operator's words.
        reason: String,
    },
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Placed, no payment started.
    Placed,
    /// A payment was requested and its result is awaited.
    PaymentPending,
    /// The last payment attempt was declined; it can be paid again or cancelled.
    PaymentFailed,
    /// Paid in full.
    Paid,
    /// Handed to a carrier (only after being paid).
    Shipped,
    /// Cancelled before payment; final.
    Cancelled,
}

impl OrderStatus {
    /// The snake_case name used in read models and responses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::PaymentPending => "payment_pending",
            Self::PaymentFailed => "payment_failed",
            Self::Paid => "paid",
            Self::Shipped => "shipped",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status after an event of type `event` in this status, or `None` when the machine
    /// has no such transition. `OrderPlaced` has none: it starts the machine.
    pub fn after(self, event: EventType) -> Option<OrderStatus> {
        use OrderStatus::*;
        match (self, event) {
            (Placed | PaymentFailed, EventType::OrderPaymentRequested) => Some(PaymentPending),
            (PaymentPending, EventType::OrderPaymentSucceeded) => Some(Paid),
            (PaymentPending, EventType::OrderPaymentFailed) => Some(PaymentFailed),
            (Paid, EventType::OrderShipped) => Some(Shipped),
            (Placed | PaymentFailed, EventType::OrderCancelled) => Some(Cancelled),
            _ => None,
        }
    }
}

impl std::fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a shipped order went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipment {
    /// The carrier's name.
    pub carrier: String,
    /// The carrier's tracking code.
    pub tracking_code: String,
}

/// A placed order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// The customer; repeated in `OrderPaymentSucceeded`.
    pub user_id: Uuid,
    /// The cart it came from, if any.
    pub cart_id: Option<Uuid>,
    /// What was ordered; repeated in `OrderPaymentSucceeded`.
    pub lines: Vec<OrderLine>,
    /// Sum of the line totals, in cents: the amount every payment asks for.
    pub total_cents: i64,
    /// Where the order is in its life.
    pub status: OrderStatus,
    /// The method of the latest payment request, if any.
    pub payment_method: Option<PaymentMethod>,
    /// The provider's reference, once paid.
    pub payment_reference: Option<String>,
    /// The carrier and tracking code, once shipped.
    pub shipment: Option<Shipment>,
}

/// The state of one order: nothing until placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderState {
    /// The order; `None` until `OrderPlaced`.
    order: Option<Order>,
}

impl OrderState {
    /// The order, if it was placed.
    pub fn order(&self) -> Option<&Order> {
        self.order.as_ref()
    }

    /// The order's status, if it was placed.
    pub fn status(&self) -> Option<OrderStatus> {
        self.order.as_ref().map(|order| order.status)
    }

    /// The order, if it was placed; `NotFound` otherwise.
    fn placed(&self) -> Result<&Order, DomainError> {
        self.order.as_ref().ok_or(DomainError::not_found(Self::TYPE))
    }

    /// The order, if a payment is pending; the refusal of a payment result otherwise.
    fn payment_pending(&self) -> Result<&Order, DomainError> {
        let order = self.placed()?;
        if order.status != OrderStatus::PaymentPending {
            return Err(DomainError::rejected(
                Rejection::NoPaymentPending,
                format!("no payment is pending (the order is {})", order.status),
            ));
        }
        Ok(order)
    }

    fn place(
        &self,
        user_id: Uuid,
        user_registered: bool,
        cart_id: Option<Uuid>,
        lines: &[OrderLine],
    ) -> Result<Vec<ShopEvent>, DomainError> {
        if self.order.is_some() {
            return Err(DomainError::rejected(Rejection::AlreadyPlaced, "this order was already placed"));
        }
        if !user_registered {
            return Err(DomainError::rejected(
                Rejection::UserNotFound,
                format!("user {user_id} is not registered"),
            ));
        }
        // Saturating: the lines are not validated yet; validation rejects any line whose
        // numbers are out of range before it compares this total.
        let total_cents = lines.iter().fold(0_i64, |sum, line| {
            sum.saturating_add(i64::from(line.quantity).saturating_mul(line.unit_price_cents))
        });
        validated(vec![OrderPlaced { user_id, cart_id, lines: lines.to_vec(), total_cents }.into()])
    }
}

/// Refuses a payment request unless the order is `Placed` or `PaymentFailed`.
fn refuse_payment_request(status: OrderStatus) -> Result<(), DomainError> {
    let (reason, message) = match status {
        OrderStatus::Placed | OrderStatus::PaymentFailed => return Ok(()),
        OrderStatus::PaymentPending => (Rejection::PaymentInProgress, "a payment is in progress"),
        OrderStatus::Paid | OrderStatus::Shipped => {
            (Rejection::OrderAlreadyPaid, "the order is already paid")
        }
        OrderStatus::Cancelled => (Rejection::OrderCancelled, "the order was cancelled"),
    };
    Err(DomainError::rejected(reason, message))
}

/// Refuses a cancellation unless the order is `Placed` or `PaymentFailed`.
fn refuse_cancel(status: OrderStatus) -> Result<(), DomainError> {
    let (reason, message) = match status {
        OrderStatus::Placed | OrderStatus::PaymentFailed => return Ok(()),
        OrderStatus::PaymentPending => {
            (Rejection::PaymentInProgress, "a payment is in progress; wait for its result before cancelling")
        }
        OrderStatus::Paid => (Rejection::OrderAlreadyPaid, "the order is already paid"),
        OrderStatus::Shipped => (Rejection::OrderShipped, "the order was already shipped"),
        OrderStatus::Cancelled => (Rejection::OrderCancelled, "the order was already cancelled"),
    };
    Err(DomainError::rejected(reason, message))
}

/// Refuses shipping an order that is not `Paid`.
fn refuse_ship(status: OrderStatus) -> Result<(), DomainError> {
    let (reason, message) = match status {
        OrderStatus::Paid => return Ok(()),
        OrderStatus::Shipped => (Rejection::OrderShipped, "the order was already shipped"),
        OrderStatus::Cancelled => (Rejection::OrderCancelled, "the order was cancelled"),
        OrderStatus::Placed | OrderStatus::PaymentPending | OrderStatus::PaymentFailed => {
            (Rejection::OrderNotPaid, "the order is not paid yet")
        }
    };
    Err(DomainError::rejected(reason, message))
}

impl Aggregate for OrderState {
    const TYPE: AggregateType = aggregates::ORDER;
    type Command = OrderCommand;
    type Event = ShopEvent;
    type Error = DomainError;
    type EvolveError = EvolveError;

    fn evolve(&mut self, event: &ShopEvent) -> Result<(), EvolveError> {
        if let ShopEvent::OrderPlaced(placed) = event {
            if self.order.is_some() {
                return Err(EvolveError::inconsistent(event, "the order was already placed"));
            }
            self.order = Some(Order {
                user_id: placed.user_id,
                cart_id: placed.cart_id,
                lines: placed.lines.clone(),
                total_cents: placed.total_cents,
                status: OrderStatus::Placed,
                payment_method: None,
                payment_reference: None,
                shipment: None,
            });
            return Ok(());
        }
        if event.aggregate_type() != Self::TYPE {
            return Err(EvolveError::wrong_aggregate(Self::TYPE, event));
        }
        let Some(order) = self.order.as_mut() else {
            return Err(EvolveError::inconsistent(event, "the order was never placed"));
        };
        let Some(next) = order.status.after(event.event_type()) else {
            return Err(EvolveError::inconsistent(
                event,
                format!("an order in status {} cannot take it", order.status),
            ));
        };
        match event {
            ShopEvent::OrderPaymentRequested(requested) => {
                order.payment_method = Some(requested.method);
            }
            ShopEvent::OrderPaymentSucceeded(succeeded) => {
                order.payment_reference = Some(succeeded.payment_reference.clone());
            }
            ShopEvent::OrderShipped(shipped) => {
                order.shipment = Some(Shipment {
                    carrier: shipped.carrier.clone(),
                    tracking_code: shipped.tracking_code.clone(),
                });
            }
            _ => {}
        }
        order.status = next;
        Ok(())
    }

    fn decide(&self, command: &OrderCommand) -> Result<Vec<ShopEvent>, DomainError> {
        let event: ShopEvent = match command {
            OrderCommand::Place { user_id, user_registered, cart_id, lines } => {
                return self.place(*user_id, *user_registered, *cart_id, lines);
            }
            OrderCommand::RequestPayment { method } => {
                let order = self.placed()?;
                refuse_payment_request(order.status)?;
                OrderPaymentRequested { amount_cents: order.total_cents, method: *method }.into()
            }
            OrderCommand::RecordPaymentSucceeded { payment_reference } => {
                let order = self.payment_pending()?;
                OrderPaymentSucceeded {
                    payment_reference: payment_reference.clone(),
                    user_id: order.user_id,
                    amount_cents: order.total_cents,
                    lines: order.lines.clone(),
                }
                .into()
            }
            OrderCommand::RecordPaymentFailed { reason } => {
                self.payment_pending()?;
                OrderPaymentFailed { reason: reason.clone() }.into()
            }
            OrderCommand::Ship { carrier, tracking_code } => {
                refuse_ship(self.placed()?.status)?;
                OrderShipped { carrier: carrier.clone(), tracking_code: tracking_code.clone() }.into()
            }
            OrderCommand::Cancel { reason } => {
                refuse_cancel(self.placed()?.status)?;
                OrderCancelled { reason: reason.clone() }.into()
            }
        };
        validated(vec![event])
    }

    fn exists(&self) -> bool {
        self.order.is_some()
    }
}

#[cfg(test)]
mod tests;
