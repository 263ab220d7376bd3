//! The reference shop on the Prism engine: what runs it and what proves it.
//!
//! The shop's model (events, aggregates, read models) is in `shop-model`, its HTTP command API
//! in `shop-commands`, its query API in `shop-query`. This crate has the binaries that run them
//! (`shop-commands`, `shop-projector`, `shop-query`, `shop-bench`), and:
//!
//! - [`load`]: drives a realistic mix of shop commands over the HTTP command API against
//!   many aggregates, with a small share of deliberately invalid commands, and reports what
//!   happened (per route and status, throughput, and the last version the API reported for
//!   every aggregate it touched, so a caller can check the event store against it).
//! - [`verify`]: waits until a running pipeline has drained and checks every read-model row
//!   and cache entry against the fold of the event store.
//! - [`testing`]: the shop's oracle (an independent fold of shop events into what every read
//!   model must hold) and realistic event streams generated through the real aggregates, for
//!   the tests, `verify` and the benchmark.
//!
//! The integration tests (`tests/`) run every guarantee of the engine through the shop.

pub mod load;
pub mod testing;
pub mod verify;
