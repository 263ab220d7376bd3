//! The shop operated with `prismctl` (the engine's generic operator CLI, run as a child
//! process) against the real broker, PostgreSQL and Redis, each test in its own environment,
//! with the shop's projector workers running in this process where a command needs them. One
//! test binary; each file under `ops/` is a module.
//!
//! - `offsets`: `lag` and `offsets reset` under both group protocols — dry runs, refusals while
//!   workers run, exact targets, a replay to the oracle without double-applying.
//! - `offsets_mock`: what a real broker does only in a race or failure (a group it cannot
//!   describe, a commit answered with a rebalance error), on librdkafka's mock cluster.
//! - `dlq`: dead letters listed, shown, redriven by the application's workers after a fix, and
//!   discarded; every read model equal to the oracle afterwards.
//! - `rebuild`: in-place and blue/green rebuilds under live traffic, with a reader that watches
//!   the blue/green switch for a missing row or a version going backwards.

#[path = "ops/support.rs"]
mod support;

#[path = "ops/dlq.rs"]
mod dlq;
#[path = "ops/offsets.rs"]
mod offsets;
#[path = "ops/offsets_mock.rs"]
mod offsets_mock;
#[path = "ops/rebuild.rs"]
mod rebuild;
