//! Upcasters: lift a payload written under an older schema version to the current one, so
//! read models only ever see current versions. The engine chains the steps
//! ([`prism_events::EventRegistry::upcast`]) and refuses an older version without one.
//!
//! Adding a schema version means: its JSON Schema under `schemas/events/device/`, the version
//! bumped in [`super::EventType`], one step here, and the producer taught to write it.

use prism_events::{UpcastContext, Upcaster};
use serde_json::{Map, Value};

/// Every upcasting step of the telemetry events.
pub const UPCASTERS: &[Upcaster] =
    &[Upcaster { event_type: "ReadingReported", from_version: 1, apply: reading_reported_v1_to_v2 }];

/// Version 1 readings had no measurement time: the device reported what it had just
/// measured, so the reading was measured when the event occurred.
fn reading_reported_v1_to_v2(
    context: &UpcastContext<'_>,
    mut payload: Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    if payload.contains_key("measured_at") {
        return Err("a version 1 payload must not contain the version 2 field `measured_at`".to_owned());
    }
    let occurred_at = context.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    payload.insert("measured_at".to_owned(), Value::String(occurred_at));
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::events::{registry, EventType};

    fn upcast(
        version: u32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, prism_events::DecodeError> {
        let registry = registry();
        let info = registry.event_type(EventType::ReadingReported.as_str()).expect("registered");
        let context = prism_events::UpcastContext {
            event_type: info.name,
            aggregate_id: uuid::Uuid::nil(),
            aggregate_version: 1,
            occurred_at: "2026-03-01T12:00:00.123456Z".parse().expect("time"),
        };
        registry.upcast(&info, version, &context, payload)
    }

    #[test]
    fn a_v1_reading_becomes_v2_measured_when_it_occurred() {
        let v1 = json!({"site_id": "berlin-01", "metric": "temperature_c", "value": 21.5});
        let v2 = upcast(1, v1).expect("upcast");
        assert_eq!(
            v2,
            json!({"site_id": "berlin-01", "metric": "temperature_c", "value": 21.5, "measured_at": "2026-03-01T12:00:00.123456Z"})
        );
    }

    #[test]
    fn a_v1_reading_with_a_v2_field_is_refused_naming_it() {
        let err = upcast(
            1,
            json!({"site_id": "s", "metric": "m", "value": 1, "measured_at": "2026-01-01T00:00:00Z"}),
        )
        .expect_err("refused");
        assert_eq!(err.kind(), "upcast_failed");
        assert!(err.to_string().contains("measured_at"), "{err}");
    }

    #[test]
    fn the_current_version_passes_and_unknown_versions_are_refused() {
        let v2 = json!({"site_id": "s", "metric": "m", "value": 1, "measured_at": null});
        assert_eq!(upcast(2, v2.clone()).expect("as is"), v2);
        for version in [0, 3] {
            assert_eq!(
                upcast(version, v2.clone()).expect_err("refused").kind(),
                "unsupported_schema_version"
            );
        }
    }
}
