//! Telemetry's oracle: what every `device_status` and `site_hourly_readings` row must be,
//! folded in memory from the events that were produced, with code of its own (JSON built
//! directly, not the read models' row types or folds, so a bug there cannot hide itself). The
//! test kit compares the result with every row in PostgreSQL and every entry in Redis
//! ([`prism_testkit::oracle::check_expected`]).
//!
//! Per device the oracle applies versions 1, 2, 3, … once each, stopping at the first missing
//! one ([`applicable`]): exactly what the projector must converge to.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use prism_events::Event;
use prism_testkit::oracle::{applicable, Expected};
use serde_json::{json, Value};
use telemetry::read_models::{DEVICE_STATUS, SITE_HOURLY_READINGS};
use telemetry::TelemetryEvent;

fn ts(at: DateTime<Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// Folds `events` into the rows both read models must hold.
pub fn fold(events: &[Event]) -> Expected {
    let mut out = Expected::for_read_models(&[DEVICE_STATUS, SITE_HOURLY_READINGS]);
    for event in applicable(events) {
        out.count(event);
        apply(&mut out, event);
    }
    out
}

fn rows<'a>(out: &'a mut Expected, read_model: &'static str) -> &'a mut BTreeMap<String, Value> {
    out.rows.entry(read_model).or_default()
}

fn apply(out: &mut Expected, e: &Event) {
    let id = e.meta.aggregate_id.to_string();
    let at = e.meta.occurred_at;
    let Some(body) = e.body::<TelemetryEvent>() else { return };
    if let TelemetryEvent::DeviceRegistered(r) = body {
        rows(out, DEVICE_STATUS).insert(
            id.clone(),
            json!({"device_id": id, "site_id": r.site_id, "model": r.model, "name": r.name, "status": "online",
                   "offline_reason": null, "went_offline_at": null, "reading_count": 0, "last_readings": {},
                   "last_reading_at": null, "registered_at": ts(at), "last_seen_at": ts(at)}),
        );
        return;
    }
    // The producer writes only streams that start with a registration; a device without a row
    // here would be a bug in the producer, which the comparison then reports.
    let Some(device) = rows(out, DEVICE_STATUS).get_mut(&id) else { return };
    device["last_seen_at"] = ts(at);
    match body {
        TelemetryEvent::ReadingReported(reading) => {
            let measured = reading.measured_at.unwrap_or(at);
            let count = device["reading_count"].as_i64().unwrap_or(0) + 1;
            device["reading_count"] = json!(count);
            let previous = device["last_readings"][&reading.metric]["measured_at"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            if previous.is_none_or(|p| measured >= p) {
                device["last_readings"][&reading.metric] =
                    json!({"value": reading.value, "measured_at": ts(measured)});
            }
            let newest = device["last_reading_at"]
                .as_str()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            device["last_reading_at"] = ts(newest.map_or(measured, |n| n.max(measured)));

            let hour = format!("{}T{:02}:00:00", measured.date_naive(), measured.hour());
            let key = format!("{}/{}/{hour}", reading.site_id, reading.metric);
            let row = rows(out, SITE_HOURLY_READINGS).entry(key).or_insert_with(|| {
                json!({"site_id": reading.site_id, "metric": reading.metric, "hour": hour, "reading_count": 0, "value_sum_milli": 0})
            });
            row["reading_count"] = json!(row["reading_count"].as_i64().unwrap_or(0) + 1);
            let milli = (reading.value * 1000.0).round() as i64;
            row["value_sum_milli"] = json!(row["value_sum_milli"].as_i64().unwrap_or(0) + milli);
        }
        TelemetryEvent::DeviceWentOffline(offline) => {
            device["status"] = json!("offline");
            device["offline_reason"] = json!(offline.reason);
            device["went_offline_at"] = ts(at);
        }
        TelemetryEvent::DeviceCameBack(_) => {
            device["status"] = json!("online");
            device["offline_reason"] = Value::Null;
            device["went_offline_at"] = Value::Null;
        }
        TelemetryEvent::DeviceRegistered(_) => {}
    }
}
