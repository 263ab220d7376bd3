//! The shop's query API end to end: `shop_query::serve` (the engine's read path with the shop's
//! routes) against a real projector, PostgreSQL, Redis and broker, each test in its own
//! environment. One test binary; each file under `query/` is a module.
//!
//! - `routes`: every shop route against the oracle, and the 400/404 answers.
//! - `read_models`: the engine's generic `/read-models/{name}/{key}` route on the shop's read
//!   models, and JSON 405 answers.
//! - `cache`: cache-aside — miss, refill, hit, compare-and-set, blue/green keys.
//! - `read_your_writes`: `min_version` waits, stale answers, end to end after commands, and
//!   the listener's reconnection.
//! - `degraded`: readiness and reads while Redis is down; not ready while PostgreSQL is.
//! - `binary`: the `shop-query` binary as operators run it.

#[path = "query/support.rs"]
mod support;

#[path = "query/binary.rs"]
mod binary;
#[path = "query/cache.rs"]
mod cache;
#[path = "query/degraded.rs"]
mod degraded;
#[path = "query/read_models.rs"]
mod read_models;
#[path = "query/read_your_writes.rs"]
mod read_your_writes;
#[path = "query/routes.rs"]
mod routes;
