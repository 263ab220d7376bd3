//! The engine's projector guarantees, run through the shop (its five read models, fed by four
//! aggregate types, with folds, sums and caches), against the real broker, PostgreSQL and Redis.
//! One test binary; each file under `projector/` is a module.
//!
//! - `pipeline`: a realistic workload lands exactly; the operations endpoints and metrics.
//! - `kill`: workers SIGKILLed again and again lose and duplicate nothing.
//! - `membership`: a killed member's partitions move within the session timeout; static members.
//! - `rebalance`: leaving workers commit what they landed (periodic commits off).
//! - `stall`: a partition that lands nothing shows in readiness, metrics and lag.
//! - `hostile`, `injection`: poison messages, duplicates, replays and version gaps.
//! - `broker_faults`, `postgres_faults`, `redis_faults`: dependencies failing under load.

#[path = "projector/support.rs"]
mod support;

#[path = "projector/broker_faults.rs"]
mod broker_faults;
#[path = "projector/hostile.rs"]
mod hostile;
#[path = "projector/injection.rs"]
mod injection;
#[path = "projector/kill.rs"]
mod kill;
#[path = "projector/membership.rs"]
mod membership;
#[path = "projector/pipeline.rs"]
mod pipeline;
#[path = "projector/postgres_faults.rs"]
mod postgres_faults;
#[path = "projector/rebalance.rs"]
mod rebalance;
#[path = "projector/redis_faults.rs"]
mod redis_faults;
#[path = "projector/stall.rs"]
mod stall;
