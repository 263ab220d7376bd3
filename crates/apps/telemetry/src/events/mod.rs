//! The telemetry events and their registration with the engine.
//!
//! One aggregate type, [`DEVICE`] (topic `<prefix>device.events`, key = the device id), with
//! four event types ([`EventType`]). [`TelemetryEvent`] holds a decoded payload of any of them
//! and implements the engine's [`EventSet`], so the engine can decode, upcast ([`upcast`]) and
//! validate them ([`registry`]). The JSON Schemas of every payload and version are in
//! `schemas/` of this crate: the contract the Python producer (`producer/produce.py`) follows.

pub mod device;
pub mod fields;
pub mod upcast;

use std::fmt;
use std::str::FromStr;

use prism_events::{AggregateType, DecodeError, EventRegistry, EventSet, EventTypeInfo, Upcaster};
use serde::Serialize;

pub use device::{DeviceCameBack, DeviceRegistered, DeviceWentOffline, ReadingReported};

/// The device aggregate: every telemetry event belongs to one device.
pub const DEVICE: AggregateType = AggregateType::new("device");

/// Every telemetry event type, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// [`DeviceRegistered`].
    DeviceRegistered,
    /// [`ReadingReported`].
    ReadingReported,
    /// [`DeviceWentOffline`].
    DeviceWentOffline,
    /// [`DeviceCameBack`].
    DeviceCameBack,
}

impl EventType {
    /// Every event type.
    pub const ALL: &'static [EventType] =
        &[Self::DeviceRegistered, Self::ReadingReported, Self::DeviceWentOffline, Self::DeviceCameBack];

    /// The name in the envelope's `event_type` and the Kafka header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeviceRegistered => "DeviceRegistered",
            Self::ReadingReported => "ReadingReported",
            Self::DeviceWentOffline => "DeviceWentOffline",
            Self::DeviceCameBack => "DeviceCameBack",
        }
    }

    /// The schema version this build writes and reads; older ones are upcast to it.
    pub fn current_schema_version(self) -> u32 {
        match self {
            Self::ReadingReported => 2,
            Self::DeviceRegistered | Self::DeviceWentOffline | Self::DeviceCameBack => 1,
        }
    }

    /// The aggregate type that emits it (all of them: [`DEVICE`]).
    pub fn aggregate_type(self) -> AggregateType {
        DEVICE
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| DecodeError::UnknownEventType { event_type: prism_events::error::clip(s) })
    }
}

/// The registration of every event type with the engine (kept equal to [`EventType`] by this
/// module's tests).
const EVENT_TYPES: &[EventTypeInfo] = &[
    EventTypeInfo { name: "DeviceRegistered", aggregate_type: DEVICE, current_version: 1 },
    EventTypeInfo { name: "ReadingReported", aggregate_type: DEVICE, current_version: 2 },
    EventTypeInfo { name: "DeviceWentOffline", aggregate_type: DEVICE, current_version: 1 },
    EventTypeInfo { name: "DeviceCameBack", aggregate_type: DEVICE, current_version: 1 },
];

/// A decoded, validated payload of any telemetry event type, at its current schema version.
/// Serialises to the payload itself (no tag: the envelope's `event_type` says which).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum TelemetryEvent {
    /// A `DeviceRegistered` event.
    DeviceRegistered(DeviceRegistered),
    /// A `ReadingReported` event.
    ReadingReported(ReadingReported),
    /// A `DeviceWentOffline` event.
    DeviceWentOffline(DeviceWentOffline),
    /// A `DeviceCameBack` event.
    DeviceCameBack(DeviceCameBack),
}

impl TelemetryEvent {
    /// The event type of this payload.
    pub fn event_type(&self) -> EventType {
        match self {
            Self::DeviceRegistered(_) => EventType::DeviceRegistered,
            Self::ReadingReported(_) => EventType::ReadingReported,
            Self::DeviceWentOffline(_) => EventType::DeviceWentOffline,
            Self::DeviceCameBack(_) => EventType::DeviceCameBack,
        }
    }

    /// Deserialises and validates a payload already upcast to the current version; errors
    /// name the offending field (`payload.value`).
    pub fn from_current_payload(
        event_type: EventType,
        payload: serde_json::Value,
    ) -> Result<Self, DecodeError> {
        use prism_events::fields::from_value;
        Ok(match event_type {
            EventType::DeviceRegistered => {
                let body: DeviceRegistered = from_value(payload, "payload")?;
                body.validate()?;
                Self::DeviceRegistered(body)
            }
            EventType::ReadingReported => {
                let body: ReadingReported = from_value(payload, "payload")?;
                body.validate()?;
                Self::ReadingReported(body)
            }
            EventType::DeviceWentOffline => {
                let body: DeviceWentOffline = from_value(payload, "payload")?;
                body.validate()?;
                Self::DeviceWentOffline(body)
            }
            EventType::DeviceCameBack => {
                let body: DeviceCameBack = from_value(payload, "payload")?;
                body.validate()?;
                Self::DeviceCameBack(body)
            }
        })
    }

    /// The payload as JSON, at its current schema version.
    pub fn to_payload(&self) -> serde_json::Value {
        // Plain structs of strings, finite numbers and timestamps: serialising cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl EventSet for TelemetryEvent {
    fn event_types() -> &'static [EventTypeInfo] {
        EVENT_TYPES
    }

    fn upcasters() -> &'static [Upcaster] {
        upcast::UPCASTERS
    }

    fn from_payload(event_type: &'static str, payload: serde_json::Value) -> Result<Self, DecodeError> {
        Self::from_current_payload(event_type.parse()?, payload)
    }

    fn event_type(&self) -> &'static str {
        TelemetryEvent::event_type(self).as_str()
    }

    fn to_payload(&self) -> serde_json::Value {
        TelemetryEvent::to_payload(self)
    }
}

macro_rules! from_payloads {
    ($($variant:ident),+) => {$(
        impl From<$variant> for TelemetryEvent {
            fn from(body: $variant) -> Self {
                Self::$variant(body)
            }
        }
    )+};
}

from_payloads!(DeviceRegistered, ReadingReported, DeviceWentOffline, DeviceCameBack);

/// The telemetry events as the engine sees them.
pub fn registry() -> EventRegistry {
    // The declarations above are fixed; their consistency is checked by this module's tests.
    EventRegistry::of::<TelemetryEvent>()
        .unwrap_or_else(|err| panic!("the telemetry event declarations are inconsistent: {err}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_registration_matches_the_event_types() {
        let registry = EventRegistry::of::<TelemetryEvent>().expect("consistent declarations");
        assert_eq!(registry.event_types().count(), EventType::ALL.len());
        for event_type in EventType::ALL {
            let info = registry.event_type(event_type.as_str()).expect("registered");
            assert_eq!(info.aggregate_type, event_type.aggregate_type());
            assert_eq!(info.current_version, event_type.current_schema_version());
            assert_eq!(event_type.as_str().parse::<EventType>().expect("parses"), *event_type);
        }
        assert_eq!(registry.aggregate_types(), &[DEVICE]);
    }

    #[test]
    fn payloads_are_validated_naming_the_field() {
        let cases = [
            (
                EventType::DeviceRegistered,
                json!({"site_id": "Berlin", "model": "TH", "name": "n"}),
                "payload.site_id",
            ),
            (EventType::DeviceRegistered, json!({"site_id": "b", "model": "", "name": "n"}), "payload.model"),
            (
                EventType::ReadingReported,
                json!({"site_id": "b", "metric": "t-c", "value": 1, "measured_at": null}),
                "payload.metric",
            ),
            (
                EventType::ReadingReported,
                json!({"site_id": "b", "metric": "t", "value": 2e9, "measured_at": null}),
                "payload.value",
            ),
            (
                EventType::ReadingReported,
                json!({"site_id": "b", "metric": "t", "value": "1", "measured_at": null}),
                "payload.value",
            ),
            (
                EventType::ReadingReported,
                json!({"site_id": "b", "metric": "t", "value": 1}),
                "payload.measured_at",
            ),
            (
                EventType::ReadingReported,
                json!({"site_id": "b", "metric": "t", "value": 1, "measured_at": "1970-01-01T00:00:00Z"}),
                "payload.measured_at",
            ),
            (
                EventType::ReadingReported,
                json!({"site_id": "b", "metric": "t", "value": 1, "measured_at": "2026-01-01T01:00:00+01:00"}),
                "payload.measured_at",
            ),
            (EventType::DeviceWentOffline, json!({"reason": "battery\u{0}low"}), "payload.reason"),
            (EventType::DeviceCameBack, json!({"reason": "x"}), "payload.reason"),
        ];
        for (event_type, payload, field) in cases {
            let err = TelemetryEvent::from_current_payload(event_type, payload.clone()).expect_err("refused");
            assert!(err.to_string().contains(field), "{payload}: `{err}` should name {field}");
        }
    }

    #[test]
    fn payloads_round_trip() {
        let reading = json!({"site_id": "b-1", "metric": "co2_ppm", "value": 412.5, "measured_at": "2026-03-01T10:15:00.123456Z"});
        let event =
            TelemetryEvent::from_current_payload(EventType::ReadingReported, reading.clone()).expect("valid");
        assert_eq!(event.to_payload(), reading);
        let back = TelemetryEvent::from_current_payload(EventType::DeviceCameBack, json!({})).expect("valid");
        assert_eq!(back.to_payload(), json!({}));
    }
}
