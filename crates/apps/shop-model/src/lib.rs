//! The reference shop's model, built on the Prism engine's public API: an online shop split into
//! bounded contexts — users, catalog, carts, orders — as pure values and functions.
//!
//! - [`aggregates`]: the shop's aggregate types (one Kafka topic each).
//! - [`events`]: its events, their schema versions and upcasters, registered with the engine
//!   as [`events::ShopEvent`]; their JSON Schemas are in `schemas/` of this crate.
//! - [`domain`]: its aggregates as the engine's pure `decide`/`evolve` pairs.
//! - [`read_models`]: its five read models — their rows, their folds, and their definitions
//!   for the engine ([`read_models::all`]).
//!
//! Nothing here does I/O; the HTTP APIs, the binaries and the load generator are in the `shop`
//! crate.

pub mod aggregates;
pub mod domain;
pub mod events;
pub mod read_models;

pub use events::{registry, EventType, ShopEvent};

/// The shop as the engine runs it: its events and its five read models.
pub fn application() -> prism_projections::Application {
    prism_projections::Application::new("shop", registry(), read_models::all())
        .unwrap_or_else(|err| panic!("the shop's read models do not check: {err}"))
}
