//! The reference shop end to end, through its HTTP APIs and its operations assets, against the
//! real broker, PostgreSQL and Redis. One test binary; each file under `end_to_end/` is a
//! module.
//!
//! - `pipeline`: the README's main job at a small size — commands through the API, the relay,
//!   two projector workers and the query service; `shop::verify` finds every read-model row and
//!   cache entry equal to the fold of the event store, and fails on a corrupted row.
//! - `load`: the load generator (`shop::load`) against the command service; the event store
//!   holds exactly what the API reported.
//! - `broker_cluster`: the whole pipeline on a private three-node Kafka cluster whose busiest
//!   leader and active controller are killed mid-run, under both group protocols.
//! - `ops_assets`: `docker-compose.yml`, `ops/Dockerfile`, `ops/k8s/`, the scripts, the alert
//!   rules and the dashboard checked against the workspace's binaries, the configuration
//!   loader and the metrics the services export.

#[path = "end_to_end/support.rs"]
mod support;

#[path = "end_to_end/broker_cluster.rs"]
mod broker_cluster;
#[path = "end_to_end/load.rs"]
mod load;
#[path = "end_to_end/ops_assets.rs"]
mod ops_assets;
#[path = "end_to_end/pipeline.rs"]
mod pipeline;
