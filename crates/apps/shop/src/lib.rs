//! Prism's load generator and benchmark drivers.
//!
//! - [`load`]: drives a realistic mix of shop commands over the HTTP command API against
//!   many aggregates, with a small share of deliberately invalid commands, and reports what
//!   happened (per route and status, throughput, and the last version the API reported for
//!   every aggregate it touched, so a caller can check the event store against it).
//! - [`verify`]: waits until a running pipeline has drained and checks every read-model row
//!   and cache entry against the fold of the event store.

pub mod load;
pub mod verify;
