//! The `cart` aggregate: a user's shopping cart from the first item to checkout.
//!
//! A cart is created by its first [`CartCommand::AddItem`], which emits `CartOpened` and then
//! `CartItemAdded`. Adding a product that is already in the cart raises its quantity and
//! takes the new unit price (as `CartItemAdded` documents). [`CartCommand::CheckOut`] freezes
//! the cart; the command service then places the order from [`CartState::order_lines`].
//!
//! The catalog is another aggregate, so the cart cannot read it: the service looks the
//! product up first and passes a [`ProductSnapshot`]. A product that does not exist is passed
//! as `None` and refused with `product_not_found` (a rejection, 409, rather than
//! `NotFound`, 404: the product id is in the request body, and a 404 would read as "no such
//! cart"). The same goes for the user: the service reads the user aggregate and says whether
//! `user_id` is registered; a cart accepts items only from a registered user
//! (`user_not_found`, 409, for anyone else). Who may touch a cart beyond `AddItem`'s owner
//! check is the service's authorisation, not a rule here.

use crate::events::fields::bounds::{MAX_LINES, MAX_LINE_QUANTITY};
use crate::events::{CartCheckedOut, CartItemAdded, CartItemRemoved, CartOpened, OrderLine};
use prism_events::AggregateType;

use crate::aggregates;
use crate::events::ShopEvent;
use uuid::Uuid;

use crate::domain::error::{validated, DomainError, EvolveError, Rejection};
use crate::domain::Aggregate;

/// What the service read from the catalog about a product before adding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProductSnapshot {
    /// Whether the product is on sale; delisted products cannot be added.
    pub listed: bool,
    /// The current unit price, in cents; it becomes the line's unit price. A catalog price
    /// never breaks the contract's range; if one did, `AddItem` would be refused as an
    /// invalid `unit_price_cents`.
    pub price_cents: i64,
}

/// What a client can ask of a cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CartCommand {
    /// Add units of a product; opens the cart if it does not exist yet.
    AddItem {
        /// The user adding; becomes the owner of a new cart, must be the owner otherwise.
        user_id: Uuid,
        /// Whether `user_id` is a registered user, as the service read it from the user
        /// aggregate; nobody else may open or fill a cart (`user_not_found`).
        user_registered: bool,
        /// The product to add.
        product_id: Uuid,
        /// Units to add.
        quantity: u32,
        /// The product as the catalog has it; `None` when the catalog has no such product.
        product: Option<ProductSnapshot>,
    },
    /// Remove a product's line entirely.
    RemoveItem {
        /// The product whose line goes.
        product_id: Uuid,
    },
    /// Freeze the cart because an order is being placed from it.
    CheckOut {
        /// The order placed from this cart.
        order_id: Uuid,
    },
}

/// One product line of a cart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CartLine {
    /// The product.
    pub product_id: Uuid,
    /// Units in the cart, `1..=bounds::MAX_LINE_QUANTITY` for lines `decide` built.
    pub quantity: u32,
    /// Unit price when the product was last added, in cents.
    pub unit_price_cents: i64,
}

impl CartLine {
    /// The line as an order line, for placing an order from the cart.
    pub fn to_order_line(&self) -> OrderLine {
        OrderLine {
            product_id: self.product_id,
            quantity: self.quantity,
            unit_price_cents: self.unit_price_cents,
        }
    }
}

/// An opened cart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cart {
    /// The user who opened it; only they may add to it.
    pub owner: Uuid,
    /// Its lines, one per product, in the order products were first added.
    pub lines: Vec<CartLine>,
    /// The order it was checked out into; once set, the cart accepts no more commands.
    pub checked_out_into: Option<Uuid>,
}

/// The state of one cart: nothing until its first item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CartState {
    /// The cart; `None` until `CartOpened`.
    cart: Option<Cart>,
}

impl CartState {
    /// The cart, if it was opened.
    pub fn cart(&self) -> Option<&Cart> {
        self.cart.as_ref()
    }

    /// The owner, if the cart was opened.
    pub fn owner(&self) -> Option<Uuid> {
        self.cart.as_ref().map(|cart| cart.owner)
    }

    /// The lines in insertion order (empty for a cart that does not exist).
    pub fn lines(&self) -> &[CartLine] {
        self.cart.as_ref().map_or(&[], |cart| cart.lines.as_slice())
    }

    /// The lines as order lines, for `OrderCommand::Place`.
    pub fn order_lines(&self) -> Vec<OrderLine> {
        self.lines().iter().map(CartLine::to_order_line).collect()
    }

    /// The order this cart was checked out into, if it was.
    pub fn checked_out_into(&self) -> Option<Uuid> {
        self.cart.as_ref().and_then(|cart| cart.checked_out_into)
    }

    /// The cart, if it exists and still accepts changes; the refusal otherwise.
    fn open_cart(&self) -> Result<&Cart, DomainError> {
        let cart = self.cart.as_ref().ok_or(DomainError::not_found(Self::TYPE))?;
        not_checked_out(cart)?;
        Ok(cart)
    }

    fn add_item(
        &self,
        user_id: Uuid,
        user_registered: bool,
        product_id: Uuid,
        quantity: u32,
        product: Option<ProductSnapshot>,
    ) -> Result<Vec<ShopEvent>, DomainError> {
        if let Some(cart) = &self.cart {
            not_checked_out(cart)?;
            if cart.owner != user_id {
                return Err(DomainError::rejected(
                    Rejection::NotCartOwner,
                    "this cart belongs to another user",
                ));
            }
        }
        if !user_registered {
            return Err(DomainError::rejected(
                Rejection::UserNotFound,
                format!("user {user_id} is not registered"),
            ));
        }
        let product = product.ok_or_else(|| {
            DomainError::rejected(Rejection::ProductNotFound, "the catalog has no such product")
        })?;
        if !product.listed {
            return Err(DomainError::rejected(
                Rejection::ProductNotListed,
                "the product was delisted and cannot be added",
            ));
        }
        let mut events = Vec::with_capacity(2);
        if self.cart.is_none() {
            events.push(CartOpened { user_id }.into());
        }
        events.push(CartItemAdded { product_id, quantity, unit_price_cents: product.price_cents }.into());
        let events = validated(events)?;
        let lines = self.lines();
        match lines.iter().find(|line| line.product_id == product_id) {
            Some(line) if line.quantity.saturating_add(quantity) > MAX_LINE_QUANTITY => {
                Err(DomainError::rejected(
                    Rejection::QuantityLimit,
                    format!(
                        "the cart has {} of this product; adding {quantity} would exceed the limit of {MAX_LINE_QUANTITY}",
                        line.quantity
                    ),
                ))
            }
            None if lines.len() >= MAX_LINES => Err(DomainError::rejected(
                Rejection::TooManyLines,
                format!("the cart already has the maximum of {MAX_LINES} different products"),
            )),
            _ => Ok(events),
        }
    }
}

fn not_checked_out(cart: &Cart) -> Result<(), DomainError> {
    match cart.checked_out_into {
        Some(order_id) => Err(DomainError::rejected(
            Rejection::CartCheckedOut,
            format!("the cart was checked out into order {order_id}"),
        )),
        None => Ok(()),
    }
}

impl Aggregate for CartState {
    const TYPE: AggregateType = aggregates::CART;
    type Command = CartCommand;
    type Event = ShopEvent;
    type Error = DomainError;
    type EvolveError = EvolveError;

    fn evolve(&mut self, event: &ShopEvent) -> Result<(), EvolveError> {
        if let ShopEvent::CartOpened(opened) = event {
            if self.cart.is_some() {
                return Err(EvolveError::inconsistent(event, "the cart is already open"));
            }
            self.cart = Some(Cart { owner: opened.user_id, lines: Vec::new(), checked_out_into: None });
            return Ok(());
        }
        if event.aggregate_type() != Self::TYPE {
            return Err(EvolveError::wrong_aggregate(Self::TYPE, event));
        }
        let Some(cart) = self.cart.as_mut() else {
            return Err(EvolveError::inconsistent(event, "the cart was never opened"));
        };
        if cart.checked_out_into.is_some() {
            return Err(EvolveError::inconsistent(event, "the cart was checked out"));
        }
        match event {
            ShopEvent::CartItemAdded(added) => {
                match cart.lines.iter_mut().find(|line| line.product_id == added.product_id) {
                    Some(line) => {
                        line.quantity = line.quantity.saturating_add(added.quantity);
                        line.unit_price_cents = added.unit_price_cents;
                    }
                    None => cart.lines.push(CartLine {
                        product_id: added.product_id,
                        quantity: added.quantity,
                        unit_price_cents: added.unit_price_cents,
                    }),
                }
            }
            ShopEvent::CartItemRemoved(removed) => {
                let before = cart.lines.len();
                cart.lines.retain(|line| line.product_id != removed.product_id);
                if cart.lines.len() == before {
                    return Err(EvolveError::inconsistent(event, "the product is not in the cart"));
                }
            }
            ShopEvent::CartCheckedOut(checked_out) => {
                cart.checked_out_into = Some(checked_out.order_id);
            }
            _ => return Err(EvolveError::wrong_aggregate(Self::TYPE, event)),
        }
        Ok(())
    }

    fn decide(&self, command: &CartCommand) -> Result<Vec<ShopEvent>, DomainError> {
        match command {
            CartCommand::AddItem { user_id, user_registered, product_id, quantity, product } => {
                self.add_item(*user_id, *user_registered, *product_id, *quantity, *product)
            }
            CartCommand::RemoveItem { product_id } => {
                let cart = self.open_cart()?;
                if !cart.lines.iter().any(|line| line.product_id == *product_id) {
                    return Err(DomainError::rejected(
                        Rejection::ItemNotInCart,
                        format!("product {product_id} is not in the cart"),
                    ));
                }
                validated(vec![CartItemRemoved { product_id: *product_id }.into()])
            }
            CartCommand::CheckOut { order_id } => {
                let cart = self.open_cart()?;
                if cart.lines.is_empty() {
                    return Err(DomainError::rejected(Rejection::CartEmpty, "the cart has no items"));
                }
                validated(vec![CartCheckedOut { order_id: *order_id }.into()])
            }
        }
    }

    fn exists(&self) -> bool {
        self.cart.is_some()
    }
}

#[cfg(test)]
mod tests;
