//! The read side of Prism as pure functions: what each read model looks like and how events
//! change it, and which events may change it at all.
//!
//! - [`projection`]: [`ProjectionName`], the five read models, with the aggregate types each
//!   one is fed by, and [`ProjectionInstance`] (a projection at one generation).
//! - [`gate`]: the version gate and the batch planner — duplicates skipped, gaps detected,
//!   aggregates parked behind dead letters — as a pure function over a batch, property-tested.
//! - [`views`]: one module per read model: its row type (field names are the PostgreSQL
//!   column names and the JSON served to clients) and its fold.
//! - [`error`]: [`Unprojectable`], an event the fold cannot apply (a permanent error).
//!
//! Two kinds of read models: *entity* views keyed by the aggregate that feeds them
//! (`order_summary`, `product_catalog`, `cart_view`, the account part of `user_profile`),
//! folded from their current row; and *totals* fed by many aggregates (`user_profile` order
//! totals, `product_sales_daily`), folded into additive deltas that the store applies as
//! atomic increments, so concurrent partitions never lose an update.
//!
//! Nothing here does I/O.

pub mod error;
pub mod gate;
pub mod projection;
pub mod views;

pub use error::Unprojectable;
pub use gate::{AggregateKey, GapPolicy, GateState, ItemOutcome, PlannedItem};
pub use projection::{ProjectionInstance, ProjectionName};
