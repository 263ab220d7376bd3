//! Test support for the shop, used by its tests, `shop-bench verify` and the benchmark.
//!
//! - [`oracle`]: the shop's independent fold of events into expected read-model rows.
//! - [`workload`]: realistic, valid shop event streams generated through the real aggregates.

pub mod oracle;
pub mod workload;
