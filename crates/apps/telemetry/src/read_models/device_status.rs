//! `device_status`: one row per device — where it is, what it is, whether it is online, its
//! latest reading of every metric, how many readings it sent and when it was last heard of.
//! Cached in Redis (kind `device`): dashboards read it all the time.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prism_events::Event;
use prism_projections::Unprojectable;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::telemetry_event;
use crate::events::TelemetryEvent;

/// Whether a device is reporting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Connectivity {
    /// Registered, or came back, and not gone offline since.
    Online,
    /// Went offline and has not come back.
    Offline,
}

/// The latest reading of one metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastReading {
    /// Its value.
    pub value: f64,
    /// When it was measured (the event's time for readings without one).
    pub measured_at: DateTime<Utc>,
}

/// One device as operators and dashboards see it. Field names are the columns of
/// `sql/device_status.sql`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The device (the aggregate id): the key.
    pub device_id: Uuid,
    /// The site it was registered at.
    pub site_id: String,
    /// Its hardware model.
    pub model: String,
    /// Its name.
    pub name: String,
    /// Online or offline.
    pub status: Connectivity,
    /// Why it went offline, while it is.
    pub offline_reason: Option<String>,
    /// When it went offline, while it is.
    pub went_offline_at: Option<DateTime<Utc>>,
    /// Readings received, of all metrics.
    pub reading_count: i64,
    /// The latest reading of each metric, by metric name: the one measured last (a buffered
    /// reading that arrives late does not replace a newer one; equal times: the later event).
    pub last_readings: BTreeMap<String, LastReading>,
    /// When the newest reading of any metric was measured.
    pub last_reading_at: Option<DateTime<Utc>>,
    /// When it was registered.
    pub registered_at: DateTime<Utc>,
    /// When anything was last heard of it (its latest event).
    pub last_seen_at: DateTime<Utc>,
}

/// Folds one device event into the device's status.
pub fn apply(view: Option<DeviceStatus>, event: &Event) -> Result<DeviceStatus, Unprojectable> {
    let at = event.meta.occurred_at;
    let refuse = |why: &str| {
        Unprojectable::new(format!(
            "{} at version {} of device {}: {why}",
            event.event_type(),
            event.meta.aggregate_version,
            event.meta.aggregate_id
        ))
    };
    let body = telemetry_event(event)?;
    let mut device = match (body, view) {
        (TelemetryEvent::DeviceRegistered(registered), None) => DeviceStatus {
            device_id: event.meta.aggregate_id,
            site_id: registered.site_id.clone(),
            model: registered.model.clone(),
            name: registered.name.clone(),
            status: Connectivity::Online,
            offline_reason: None,
            went_offline_at: None,
            reading_count: 0,
            last_readings: BTreeMap::new(),
            last_reading_at: None,
            registered_at: at,
            last_seen_at: at,
        },
        (TelemetryEvent::DeviceRegistered(_), Some(_)) => {
            return Err(refuse("the device is registered already"))
        }
        (_, None) => {
            return Err(refuse("the device was never registered (its first event must be DeviceRegistered)"))
        }
        (TelemetryEvent::ReadingReported(reading), Some(mut device)) => {
            let measured_at = reading.measured_or(at);
            let newer =
                device.last_readings.get(&reading.metric).is_none_or(|last| measured_at >= last.measured_at);
            if newer {
                device
                    .last_readings
                    .insert(reading.metric.clone(), LastReading { value: reading.value, measured_at });
            }
            device.last_reading_at =
                Some(device.last_reading_at.map_or(measured_at, |last| last.max(measured_at)));
            device.reading_count += 1;
            device
        }
        (TelemetryEvent::DeviceWentOffline(offline), Some(mut device)) => {
            if device.status == Connectivity::Offline {
                return Err(refuse("the device is offline already"));
            }
            device.status = Connectivity::Offline;
            device.offline_reason = Some(offline.reason.clone());
            device.went_offline_at = Some(at);
            device
        }
        (TelemetryEvent::DeviceCameBack(_), Some(mut device)) => {
            if device.status == Connectivity::Online {
                return Err(refuse("the device is online, it cannot come back"));
            }
            device.status = Connectivity::Online;
            device.offline_reason = None;
            device.went_offline_at = None;
            device
        }
    };
    device.last_seen_at = at;
    Ok(device)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use prism_events::EventPosition;

    use super::*;
    use crate::events::{DeviceCameBack, DeviceRegistered, DeviceWentOffline, ReadingReported};

    fn at(minute: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 10, minute, 0).single().expect("valid")
    }

    fn event(version: u64, minute: u32, body: impl Into<TelemetryEvent>) -> Event {
        let position = EventPosition {
            event_id: Uuid::new_v4(),
            aggregate_id: Uuid::from_u128(7),
            aggregate_version: version,
            occurred_at: at(minute),
            correlation_id: Uuid::nil(),
            causation_id: Uuid::nil(),
        };
        Event::new(position, body.into())
    }

    fn reading(metric: &str, value: f64, measured: Option<u32>) -> ReadingReported {
        ReadingReported { site_id: "b-1".into(), metric: metric.into(), value, measured_at: measured.map(at) }
    }

    fn fold(events: &[Event]) -> Result<Option<DeviceStatus>, Unprojectable> {
        events.iter().try_fold(None, |view, e| apply(view, e).map(Some))
    }

    fn registered() -> DeviceRegistered {
        DeviceRegistered { site_id: "b-1".into(), model: "TH-200".into(), name: "Lobby".into() }
    }

    #[test]
    fn keeps_the_latest_measured_reading_per_metric() {
        let device = fold(&[
            event(1, 0, registered()),
            event(2, 5, reading("temperature_c", 20.0, Some(4))),
            // Buffered: measured before the one above, reported after it.
            event(3, 6, reading("temperature_c", 18.0, Some(1))),
            // No clock: measured when it occurred.
            event(4, 7, reading("humidity_pct", 40.5, None)),
        ])
        .expect("folds")
        .expect("a row");
        assert_eq!(device.reading_count, 3);
        assert_eq!(device.last_readings["temperature_c"], LastReading { value: 20.0, measured_at: at(4) });
        assert_eq!(device.last_readings["humidity_pct"], LastReading { value: 40.5, measured_at: at(7) });
        assert_eq!(device.last_reading_at, Some(at(7)));
        assert_eq!((device.registered_at, device.last_seen_at), (at(0), at(7)));
    }

    #[test]
    fn goes_offline_and_comes_back() {
        let offline = fold(&[
            event(1, 0, registered()),
            event(2, 3, DeviceWentOffline { reason: "battery low".into() }),
        ])
        .expect("folds")
        .expect("a row");
        assert_eq!(offline.status, Connectivity::Offline);
        assert_eq!(
            (offline.offline_reason.as_deref(), offline.went_offline_at),
            (Some("battery low"), Some(at(3)))
        );
        let back = apply(Some(offline), &event(3, 9, DeviceCameBack {})).expect("folds");
        assert_eq!(
            (back.status, back.offline_reason, back.went_offline_at),
            (Connectivity::Online, None, None)
        );
        assert_eq!(back.last_seen_at, at(9));
    }

    #[test]
    fn refuses_streams_a_device_cannot_produce() {
        let unregistered = fold(&[event(1, 0, reading("t", 1.0, None))]).expect_err("no registration");
        assert!(unregistered.0.contains("never registered"), "{unregistered}");
        let twice = fold(&[event(1, 0, registered()), event(2, 1, registered())]).expect_err("twice");
        assert!(twice.0.contains("registered already"), "{twice}");
        let back_online =
            fold(&[event(1, 0, registered()), event(2, 1, DeviceCameBack {})]).expect_err("online");
        assert!(back_online.0.contains("version 2"), "{back_online}");
        let offline = DeviceWentOffline { reason: "x".into() };
        let twice_offline =
            fold(&[event(1, 0, registered()), event(2, 1, offline.clone()), event(3, 2, offline)])
                .expect_err("offline");
        assert!(twice_offline.0.contains("offline already"), "{twice_offline}");
    }
}
