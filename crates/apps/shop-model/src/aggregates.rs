//! The shop's aggregate types: one per bounded context, each publishing to its own topic
//! (`user.events`, `product.events`, `cart.events`, `order.events`).

use prism_events::AggregateType;

/// A registered customer.
pub const USER: AggregateType = AggregateType::new("user");
/// A product of the catalog.
pub const PRODUCT: AggregateType = AggregateType::new("product");
/// A shopping cart.
pub const CART: AggregateType = AggregateType::new("cart");
/// An order.
pub const ORDER: AggregateType = AggregateType::new("order");

/// Every aggregate type of the shop, in a stable order.
pub const ALL: [AggregateType; 4] = [USER, PRODUCT, CART, ORDER];
