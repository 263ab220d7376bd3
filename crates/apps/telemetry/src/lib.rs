//! IoT telemetry on the Prism engine: the second application, of a different domain than the
//! shop, built only on the engine's public API — and a worked example of writing one.
//!
//! Devices are registered at sites, report readings (a metric and a value, with the time they
//! were measured), go offline and come back. Their events come from outside Rust: device
//! gateways publish them straight to Kafka following the JSON Schemas of this crate;
//! `producer/produce.py` is such a gateway (Python, `confluent-kafka`).
//!
//! What lives where:
//! - [`events`]: the one aggregate type, [`events::DEVICE`], its four event types, their
//!   field rules ([`events::fields`]) and the upcaster of `ReadingReported` v1
//!   ([`events::upcast`]), registered with the engine as [`events::TelemetryEvent`]
//!   ([`events::registry`]).
//! - [`read_models`]: `device_status` (one row per device, folded, cached in Redis) and
//!   `site_hourly_readings` (per site, metric and hour, summed from every device of the site):
//!   their rows, their pure feeds, and their definitions for the engine ([`read_models::all`]).
//! - [`application`]: all of it as the engine runs it.
//! - [`query`]: the query route of `site_hourly_readings` (composite key), mounted on the
//!   engine's query service next to its generic by-key route.
//! - `sql/`: the two tables (`{table}` stands for the generation's table name).
//! - `schemas/`: JSON Schemas (draft 2020-12) of every event type and schema version, and
//!   `events.schema.json`, the engine's envelope with these event types: the producers'
//!   contract.
//! - `src/bin/telemetry-projector.rs`: the projector binary, `telemetry-projector
//!   [run|migrate]` — the engine's projector with this application; `telemetry-query`, the
//!   engine's query service with it.
//! - `producer/produce.py`: the Python producer (realistic device streams for N devices over M
//!   sites, deterministic per seed; hostile messages on request; writes what it produced as
//!   JSON lines for the tests' oracle).
//! - `tests/`: the schemas against the Rust types (`schemas.rs`), and the guarantees against
//!   the real broker, PostgreSQL and Redis (`it/`): oracle equality, workers killed with
//!   SIGKILL, a blue/green rebuild under live traffic, hostile payloads dead-lettered.
//!
//! Events and read models are pure (no I/O); the binaries and the query route are the
//! engine's services with this application. Nothing in the engine names this crate.

#![warn(missing_docs)]

pub mod events;
pub mod query;
pub mod read_models;

pub use events::{registry, EventType, TelemetryEvent, DEVICE};

/// The application's name: in the read-model registry, client ids and logs.
pub const NAME: &str = "telemetry";

/// Telemetry as the engine runs it: its events and its two read models.
pub fn application() -> prism_projections::Application {
    prism_projections::Application::new(NAME, registry(), read_models::all())
        .unwrap_or_else(|err| panic!("the telemetry read models do not check: {err}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_application_checks() {
        let app = super::application();
        let names: Vec<&str> = app.read_models().iter().map(|m| m.name()).collect();
        assert_eq!(names, ["device_status", "site_hourly_readings"]);
        assert_eq!(app.aggregate_types(), &[super::DEVICE]);
    }
}
