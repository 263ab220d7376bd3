//! The `product` aggregate: one catalog entry, its price and its stock.
//!
//! A product is created by [`ProductCommand::List`]; while listed its price and stock can
//! change; [`ProductCommand::Delist`] takes it off sale for good (listing it again is
//! `already_listed`: a new offer is a new product).
//!
//! Stock rules: [`ProductCommand::Restock`] carries a signed delta (a delivery or a
//! correction). The delta itself is judged by the event contract (non-zero, within
//! `±bounds::MAX_STOCK`: `InvalidField`); whether the resulting stock fits `0..=MAX_STOCK`
//! depends on the state and is therefore a rejection (`stock_below_zero`,
//! `stock_above_maximum`). A listing with a stock outside that range is an `InvalidField`,
//! since it depends on the field alone.
//!
//! Reservations: `stock` counts the units on hand; [`Product::reserved`] of them are held by
//! orders that were placed and neither shipped nor cancelled, one reservation per order
//! ([`Product::reservations`]); the rest, [`Product::available`], is what new orders can
//! take. The command service places an order and reserves its lines in one transaction:
//! [`ProductCommand::Reserve`] refuses more than is available (`insufficient_stock`, naming
//! the requested and available units) and products that were delisted. Cancelling the order
//! [`ProductCommand::Release`]s its reservation, shipping it [`ProductCommand::ShipReserved`]
//! (the units leave: on hand and reserved both drop). Both are no-ops for an order that holds
//! nothing here (an order placed before reservations existed), and both still work after
//! the product was delisted: the units were promised before. A correction may not take the
//! stock on hand below what is reserved (`stock_below_reserved`), so `0 <= reserved <=
//! stock` always holds and available is never negative.

use std::collections::BTreeMap;

use crate::events::fields::bounds::MAX_STOCK;
use crate::events::{
    ProductDelisted, ProductListed, ProductPriceChanged, ProductRestocked, StockReleased, StockReserved,
    StockShipped,
};
use prism_events::AggregateType;
use uuid::Uuid;

use crate::aggregates;
use crate::events::ShopEvent;

use crate::domain::error::{validated, DomainError, EvolveError, Rejection};
use crate::domain::Aggregate;

/// What a merchant can ask of a product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProductCommand {
    /// Put a new product on sale; creates the product.
    List {
        /// The merchant's stock-keeping unit.
        sku: String,
        /// The name shown in the catalog.
        name: String,
        /// Price of one unit, in cents.
        price_cents: i64,
        /// Units on hand.
        stock: i64,
    },
    /// Set a new unit price.
    ChangePrice {
        /// The new price of one unit, in cents.
        price_cents: i64,
    },
    /// Adjust the stock by a delta: positive for a delivery, negative for a correction.
    Restock {
        /// Units to add (or remove, when negative); never zero.
        quantity: i64,
    },
    /// Take the product off sale for good.
    Delist {
        /// Why, in the merchant's words (may be empty).
        reason: String,
    },
    /// Set units aside for an order being placed.
    Reserve {
        /// The order being placed.
        order_id: Uuid,
        /// Units of its line for this product.
        quantity: u32,
    },
    /// Give back what a cancelled order reserved (nothing, if it reserved nothing here).
    Release {
        /// The cancelled order.
        order_id: Uuid,
    },
    /// Send what a shipped order reserved out of the warehouse (nothing, if it reserved
    /// nothing here).
    ShipReserved {
        /// The shipped order.
        order_id: Uuid,
    },
}

/// A listed (or formerly listed) product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    /// The merchant's stock-keeping unit.
    pub sku: String,
    /// The name shown in the catalog.
    pub name: String,
    /// Current price of one unit, in cents; a price change must differ from it.
    pub price_cents: i64,
    /// Units on hand; restocking keeps it within `reserved..=bounds::MAX_STOCK`.
    pub stock: i64,
    /// `false` once delisted; a delisted product accepts no more changes (but its
    /// reservations are still released or shipped).
    pub listed: bool,
    /// Units of `stock` held by open orders: the sum of `reservations`.
    pub reserved: i64,
    /// Units held per open order: releasing or shipping an order moves exactly what it holds.
    pub reservations: BTreeMap<Uuid, u32>,
}

impl Product {
    /// Units new orders can take: on hand and not reserved.
    pub fn available(&self) -> i64 {
        self.stock - self.reserved
    }
}

/// The state of one product: nothing until listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductState {
    /// The catalog entry; `None` until `ProductListed`.
    product: Option<Product>,
}

impl ProductState {
    /// The catalog entry, if the product was ever listed.
    pub fn product(&self) -> Option<&Product> {
        self.product.as_ref()
    }

    /// The product, if it exists and is still on sale; the refusal otherwise.
    fn on_sale(&self) -> Result<&Product, DomainError> {
        let product = self.product.as_ref().ok_or(DomainError::not_found(Self::TYPE))?;
        if !product.listed {
            return Err(DomainError::rejected(
                Rejection::ProductDelisted,
                "the product was delisted and accepts no more changes",
            ));
        }
        Ok(product)
    }

    fn restock(&self, quantity: i64) -> Result<Vec<ShopEvent>, DomainError> {
        let product = self.on_sale()?;
        let stock_after = product.stock.saturating_add(quantity);
        // The contract judges the client's `quantity` first; `stock_after` is derived from the
        // state, so it is checked here as a rule with the real value. Clamped, it cannot make
        // validation fail, and once the checks below pass it equals the real value.
        let events =
            validated(vec![
                ProductRestocked { quantity, stock_after: stock_after.clamp(0, MAX_STOCK) }.into()
            ])?;
        if stock_after < 0 {
            return Err(DomainError::rejected(
                Rejection::StockBelowZero,
                format!("stock is {} units; a change of {quantity} would take it below zero", product.stock),
            ));
        }
        if stock_after > MAX_STOCK {
            return Err(DomainError::rejected(
                Rejection::StockAboveMaximum,
                format!(
                    "stock is {} units; a change of {quantity} would take it above the maximum of {MAX_STOCK}",
                    product.stock
                ),
            ));
        }
        if stock_after < product.reserved {
            return Err(DomainError::rejected(
                Rejection::StockBelowReserved,
                format!(
                    "stock is {} units, {} of them reserved for orders; a change of {quantity} would leave {stock_after}, fewer than are reserved",
                    product.stock, product.reserved
                ),
            ));
        }
        Ok(events)
    }

    fn reserve(&self, order_id: Uuid, quantity: u32) -> Result<Vec<ShopEvent>, DomainError> {
        let product = self.on_sale()?;
        if let Some(held) = product.reservations.get(&order_id) {
            return Err(DomainError::rejected(
                Rejection::AlreadyReserved,
                format!("order {order_id} already holds {held} units of this product"),
            ));
        }
        let events = validated(vec![StockReserved { order_id, quantity }.into()])?;
        let available = product.available();
        if i64::from(quantity) > available {
            return Err(DomainError::rejected(
                Rejection::InsufficientStock,
                format!(
                    "{quantity} units requested, {available} available ({} on hand, {} reserved by other orders)",
                    product.stock, product.reserved
                ),
            ));
        }
        Ok(events)
    }

    /// The units `order_id` holds here, if any.
    fn held_by(&self, order_id: Uuid) -> Option<u32> {
        self.product.as_ref().and_then(|product| product.reservations.get(&order_id).copied())
    }
}

impl Aggregate for ProductState {
    const TYPE: AggregateType = aggregates::PRODUCT;
    type Command = ProductCommand;
    type Event = ShopEvent;
    type Error = DomainError;
    type EvolveError = EvolveError;

    fn evolve(&mut self, event: &ShopEvent) -> Result<(), EvolveError> {
        if let ShopEvent::ProductListed(listed) = event {
            if self.product.is_some() {
                return Err(EvolveError::inconsistent(event, "the product is already listed"));
            }
            self.product = Some(Product {
                sku: listed.sku.clone(),
                name: listed.name.clone(),
                price_cents: listed.price_cents,
                stock: listed.stock,
                listed: true,
                reserved: 0,
                reservations: BTreeMap::new(),
            });
            return Ok(());
        }
        if event.aggregate_type() != Self::TYPE {
            return Err(EvolveError::wrong_aggregate(Self::TYPE, event));
        }
        let Some(product) = self.product.as_mut() else {
            return Err(EvolveError::inconsistent(event, "the product was never listed"));
        };
        // Reservations made while it was listed still end after delisting.
        let ends_reservation = matches!(event, ShopEvent::StockReleased(_) | ShopEvent::StockShipped(_));
        if !product.listed && !ends_reservation {
            return Err(EvolveError::inconsistent(event, "the product was delisted"));
        }
        match event {
            ShopEvent::ProductPriceChanged(changed) => {
                if changed.previous_price_cents != product.price_cents {
                    return Err(EvolveError::inconsistent(
                        event,
                        format!(
                            "previous price {} is not the current price {}",
                            changed.previous_price_cents, product.price_cents
                        ),
                    ));
                }
                product.price_cents = changed.price_cents;
            }
            ShopEvent::ProductRestocked(restocked) => {
                if product.stock.checked_add(restocked.quantity) != Some(restocked.stock_after) {
                    return Err(EvolveError::inconsistent(
                        event,
                        format!(
                            "stock {} changed by {} is not {}",
                            product.stock, restocked.quantity, restocked.stock_after
                        ),
                    ));
                }
                if restocked.stock_after < product.reserved {
                    return Err(EvolveError::inconsistent(
                        event,
                        format!(
                            "stock after ({}) is below the {} units reserved",
                            restocked.stock_after, product.reserved
                        ),
                    ));
                }
                product.stock = restocked.stock_after;
            }
            ShopEvent::ProductDelisted(_) => product.listed = false,
            ShopEvent::StockReserved(reserved) => {
                if product.reservations.contains_key(&reserved.order_id) {
                    return Err(EvolveError::inconsistent(
                        event,
                        format!("order {} already holds a reservation", reserved.order_id),
                    ));
                }
                if i64::from(reserved.quantity) > product.available() {
                    return Err(EvolveError::inconsistent(
                        event,
                        format!(
                            "{} units reserved but only {} available",
                            reserved.quantity,
                            product.available()
                        ),
                    ));
                }
                product.reservations.insert(reserved.order_id, reserved.quantity);
                product.reserved += i64::from(reserved.quantity);
            }
            ShopEvent::StockReleased(StockReleased { order_id, quantity })
            | ShopEvent::StockShipped(StockShipped { order_id, quantity }) => {
                let held = product.reservations.get(order_id).copied();
                if held != Some(*quantity) {
                    return Err(EvolveError::inconsistent(
                        event,
                        format!(
                            "order {order_id} holds {} units, not {quantity}",
                            held.map_or_else(|| "no".to_owned(), |units| units.to_string())
                        ),
                    ));
                }
                product.reservations.remove(order_id);
                product.reserved -= i64::from(*quantity);
                if matches!(event, ShopEvent::StockShipped(_)) {
                    product.stock -= i64::from(*quantity);
                }
            }
            _ => return Err(EvolveError::wrong_aggregate(Self::TYPE, event)),
        }
        Ok(())
    }

    fn decide(&self, command: &ProductCommand) -> Result<Vec<ShopEvent>, DomainError> {
        match command {
            ProductCommand::List { sku, name, price_cents, stock } => {
                if self.product.is_some() {
                    return Err(DomainError::rejected(
                        Rejection::AlreadyListed,
                        "this product is already listed",
                    ));
                }
                validated(vec![ProductListed {
                    sku: sku.clone(),
                    name: name.clone(),
                    price_cents: *price_cents,
                    stock: *stock,
                }
                .into()])
            }
            ProductCommand::ChangePrice { price_cents } => {
                let product = self.on_sale()?;
                let events = validated(vec![ProductPriceChanged {
                    price_cents: *price_cents,
                    previous_price_cents: product.price_cents,
                }
                .into()])?;
                if *price_cents == product.price_cents {
                    return Err(DomainError::rejected(
                        Rejection::PriceUnchanged,
                        format!("the price is already {price_cents} cents"),
                    ));
                }
                Ok(events)
            }
            ProductCommand::Restock { quantity } => self.restock(*quantity),
            ProductCommand::Delist { reason } => {
                self.on_sale()?;
                validated(vec![ProductDelisted { reason: reason.clone() }.into()])
            }
            ProductCommand::Reserve { order_id, quantity } => self.reserve(*order_id, *quantity),
            // Nothing held here, nothing to give back or send: a successful no-op, so an order
            // placed before reservations existed can still be cancelled or shipped.
            ProductCommand::Release { order_id } => Ok(self
                .held_by(*order_id)
                .map(|quantity| StockReleased { order_id: *order_id, quantity }.into())
                .into_iter()
                .collect()),
            ProductCommand::ShipReserved { order_id } => Ok(self
                .held_by(*order_id)
                .map(|quantity| StockShipped { order_id: *order_id, quantity }.into())
                .into_iter()
                .collect()),
        }
    }

    fn exists(&self) -> bool {
        self.product.is_some()
    }
}

#[cfg(test)]
mod tests;
