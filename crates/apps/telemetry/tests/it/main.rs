//! Telemetry's guarantees against the real broker, PostgreSQL and Redis, with events from the
//! Python producer (`producer/produce.py`) — the same kinds of tests as the shop's:
//!
//! - [`pipeline`]: every row and cache entry equals the oracle's fold of what was produced
//!   (and every produced event follows the JSON Schemas);
//! - [`kill`]: workers killed with SIGKILL again and again while events flow, under both group
//!   protocols: nothing lost, nothing applied twice, nothing dead-lettered;
//! - [`rebuild`]: a blue/green rebuild of `device_status` under live traffic switches, and the
//!   new generation equals the oracle;
//! - [`query`]: every row read back through the engine's query service with telemetry's
//!   route equals the oracle;
//! - [`hostile`]: hostile messages are dead-lettered with a reason naming the problem, the
//!   devices behind them parked, everything else applied.
//! - [`redis_cluster`]: the cache on a Redis Cluster whose master is killed mid-run: every
//!   row and cache entry equals the oracle afterwards, and the query service reads and refills
//!   the cluster.
//!
//! Each test has its own topics, schema and key prefix (`prism_testkit::TestEnv`), and fails
//! with the command to run when a service is unreachable (`ops/dev-stack up`).

mod hostile;
mod kill;
mod oracle;
mod pipeline;
mod query;
mod rebuild;
mod redis_cluster;
mod support;
