//! The telemetry read models: one module per read model with its row type and its feed, and
//! [`all`], their definitions for the engine. Tables are in `sql/` of this crate.
//!
//! Row field names are the PostgreSQL column names (the engine moves rows between Rust and SQL
//! as JSON), and the JSON Redis caches.

pub mod device_status;
pub mod site_hourly_readings;

pub use device_status::{Connectivity, DeviceStatus, LastReading};
pub use site_hourly_readings::SiteHourlyReadings;

use prism_events::Event;
use prism_projections::{ReadModel, Unprojectable};

use crate::events::{TelemetryEvent, DEVICE};

/// One row per device; cached (Redis key kind [`DEVICE_CACHE_KIND`]).
pub const DEVICE_STATUS: &str = "device_status";
/// Readings per site, metric and hour, fed by every device of the site.
pub const SITE_HOURLY_READINGS: &str = "site_hourly_readings";
/// The Redis key kind of `device_status` rows: `<prefix>g<generation>:device:<device id>`.
pub const DEVICE_CACHE_KIND: &str = "device";

/// The two read models, as the engine runs them.
pub fn all() -> Vec<ReadModel> {
    vec![
        ReadModel::new(DEVICE_STATUS)
            .table(include_str!("../../sql/device_status.sql"))
            .key(&["device_id"])
            .cached(DEVICE_CACHE_KIND)
            .fold(DEVICE, device_status::apply),
        ReadModel::new(SITE_HOURLY_READINGS)
            .table(include_str!("../../sql/site_hourly_readings.sql"))
            .key(&["site_id", "metric", "hour"])
            .sum(DEVICE, site_hourly_readings::AMOUNTS, site_hourly_readings::readings),
    ]
}

/// The telemetry body of an event, or why a fold cannot read it (an event of another
/// application reaching this projector).
pub fn telemetry_event(event: &Event) -> Result<&TelemetryEvent, Unprojectable> {
    event.body::<TelemetryEvent>().ok_or_else(|| {
        Unprojectable::new(format!(
            "{} {} is not a telemetry event",
            event.meta.aggregate_type,
            event.event_type()
        ))
    })
}
