//! `site_hourly_readings`: how many readings of each metric every site received per hour, and
//! their sum — fed by every device of the site, so many aggregates add to one row. The hour is
//! the reading's measurement time (the event's time for readings without one) truncated to the
//! hour, in UTC.
//!
//! Sums are kept in thousandths of the metric's unit, as integers (`value_sum_milli`): the
//! engine adds rows from different partitions and batches in whatever order they land, and
//! integer addition gives the same total in every order where floating-point addition does not.
//! The mean of an hour is `value_sum_milli / 1000.0 / reading_count`.

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};
use prism_events::Event;
use serde::{Deserialize, Serialize};

use crate::events::TelemetryEvent;

/// One site's readings of one metric in one hour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteHourlyReadings {
    /// The site (stamped on each reading by its gateway).
    pub site_id: String,
    /// The metric.
    pub metric: String,
    /// The hour, in UTC (column type `timestamp`: no zone, so it reads the same whatever the
    /// session's time zone).
    pub hour: NaiveDateTime,
    /// Readings measured in that hour.
    pub reading_count: i64,
    /// Their values added up, in thousandths of the metric's unit.
    pub value_sum_milli: i64,
}

/// The additive columns.
pub const AMOUNTS: &[&str] = &["reading_count", "value_sum_milli"];

/// The (site, metric, hour) row a reading adds to; nothing for other events.
pub fn readings(event: &Event) -> Vec<SiteHourlyReadings> {
    let Some(TelemetryEvent::ReadingReported(reading)) = event.body::<TelemetryEvent>() else {
        return Vec::new();
    };
    vec![SiteHourlyReadings {
        site_id: reading.site_id.clone(),
        metric: reading.metric.clone(),
        hour: hour_of(reading.measured_or(event.meta.occurred_at)),
        reading_count: 1,
        value_sum_milli: milli(reading.value),
    }]
}

/// The UTC hour `at` falls in.
pub fn hour_of(at: DateTime<Utc>) -> NaiveDateTime {
    let naive = at.naive_utc();
    naive.date().and_hms_opt(naive.hour(), 0, 0).unwrap_or(naive)
}

/// A value in thousandths of its unit, rounded half away from zero. Values are bounded by
/// validation (|value| ≤ 10⁹), so this never saturates.
pub fn milli(value: f64) -> i64 {
    (value * 1000.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn hours_truncate_in_utc_and_values_round_to_thousandths() {
        let at = Utc.with_ymd_and_hms(2026, 3, 1, 23, 59, 59).single().expect("valid");
        assert_eq!(hour_of(at).to_string(), "2026-03-01 23:00:00");
        assert_eq!(milli(21.5), 21_500);
        assert_eq!(milli(-0.0005), -1);
        assert_eq!(milli(0.1 + 0.2), 300);
        assert_eq!(milli(1.0e9), 1_000_000_000_000);
    }
}
