//! The write side of the shop: its aggregates as plain functions over values, implementing
//! the engine's [`Aggregate`].
//!
//! Each aggregate has a state, a command enum and two functions (the [`Aggregate`] trait):
//!
//! - `decide(&state, &command) -> Result<Vec<ShopEvent>, DomainError>` says what happens
//!   when a command meets the current state. It returns payload bodies only; the command
//!   service wraps them in envelopes (ids, versions, timestamps), so deciding needs no clock,
//!   no ids and no I/O.
//! - `evolve(&mut state, &event)` applies one event. Events are facts: an event that
//!   `decide` produced always applies. A stream that does not fit (another aggregate's event,
//!   an event the state cannot follow) is an [`EvolveError`], never a silent skip.
//!
//! The command service loads an aggregate's events, folds them with [`rehydrate`], calls
//! `decide`, appends the events with the next versions, and (optionally) evolves its copy.
//!
//! Modules:
//! - [`error`]: [`DomainError`] (what a client gets back: not found, rejected with a stable
//!   [`Rejection`] code, invalid field) and [`EvolveError`].
//! - [`user`]: registration and profile changes.
//! - [`product`]: the catalog — listing, price, stock, delisting, and the units open orders
//!   hold (reserved when an order is placed, released when it is cancelled, shipped with it).
//! - [`cart`]: a shopping cart from the first item to checkout.
//! - [`order`]: the order's status machine from placement through payment to shipping.
//!
//! Rules across aggregates are kept by the command service, which reads and appends several
//! streams in one transaction: a cart or an order only for a registered user (the service
//! reads the user and tells the cart or order, which refuse with `user_not_found`); an order
//! only within stock (placing it appends `OrderPlaced` and each product's `StockReserved`
//! together, under each stream's optimistic concurrency check, so two orders racing for the
//! last units cannot both win).
//!
//! Checks run in the same order in every aggregate: existence ([`DomainError::NotFound`]),
//! then rules about the aggregate's lifecycle ([`DomainError::Rejected`]), then the field
//! rules of the event contract ([`DomainError::InvalidField`]: the events are built and
//! `ShopEvent::validate` from [`crate::events`] judges them, so those rules exist only
//! there), then rules comparing the new values with the state ([`DomainError::Rejected`]).
//!
//! This crate is pure: no I/O, no runtime, no database or broker types.

pub mod cart;
pub mod error;
pub mod order;
pub mod product;
pub mod user;

#[cfg(test)]
mod testing;

pub use cart::{Cart, CartCommand, CartLine, CartState, ProductSnapshot};
pub use error::{DomainError, EvolveError, Rejection};
pub use order::{Order, OrderCommand, OrderState, OrderStatus, Shipment};
pub use prism_events::{rehydrate, Aggregate};
pub use product::{Product, ProductCommand, ProductState};
pub use user::{UserCommand, UserProfile, UserState};

use crate::events::ShopEvent;

/// A shop aggregate: the engine's [`Aggregate`] over shop events and errors.
pub trait ShopAggregate:
    Aggregate<Event = ShopEvent, Error = DomainError, EvolveError = EvolveError> + PartialEq
{
}

impl<A> ShopAggregate for A where
    A: Aggregate<Event = ShopEvent, Error = DomainError, EvolveError = EvolveError> + PartialEq
{
}

#[cfg(test)]
mod tests {
    use crate::events::{CartOpened, UserRegistered};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn rehydrate_folds_in_order_and_stops_at_a_foreign_event() {
        let registered: ShopEvent = UserRegistered {
            email: "ada@example.com".into(),
            display_name: "Ada".into(),
            marketing_opt_in: false,
        }
        .into();
        let state: UserState = rehydrate([&registered]).expect("own events fold");
        assert!(state.exists());
        assert!(!rehydrate::<UserState>([]).expect("empty stream folds").exists());

        let foreign: ShopEvent = CartOpened { user_id: Uuid::nil() }.into();
        let err = rehydrate::<UserState>([&registered, &foreign]).expect_err("cart event");
        assert!(matches!(err, EvolveError::WrongAggregate { expected: crate::aggregates::USER, .. }));
    }
}
