//! A minimal application for the engine's own tests, which need topics and events but no
//! domain: one aggregate type (`probe`) with one event type (`Noted`) and no read models. An
//! engine test that needs read models is a test of an application (the shop's and the
//! telemetry application's test suites run every guarantee through one).

use prism_events::{
    AggregateType, DecodeError, Event, EventPosition, EventRegistry, EventSet, EventTypeInfo,
};
use prism_projections::Application;
use prism_read_store::projection::{MessageContent, PartitionBatch, SourceMessage};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The probe's aggregate type: topic `<prefix>probe.events`.
pub const PROBE: AggregateType = AggregateType::new("probe");

/// The probe's one event: something was noted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noted {
    /// A number, to tell events apart.
    pub n: i64,
}

impl EventSet for Noted {
    fn event_types() -> &'static [EventTypeInfo] {
        &[EventTypeInfo { name: "Noted", aggregate_type: PROBE, current_version: 1 }]
    }

    fn from_payload(_: &'static str, payload: serde_json::Value) -> Result<Self, DecodeError> {
        prism_events::fields::from_value(payload, "payload")
    }

    fn event_type(&self) -> &'static str {
        "Noted"
    }

    fn to_payload(&self) -> serde_json::Value {
        serde_json::json!({ "n": self.n })
    }
}

/// The probe application: its events, no read models.
pub fn application() -> Application {
    let events = EventRegistry::of::<Noted>().unwrap_or_else(|err| panic!("the probe's events: {err}"));
    Application::new("probe", events, Vec::new()).unwrap_or_else(|err| panic!("the probe application: {err}"))
}

/// Event `version` of probe `aggregate_id`, noting `10 × version` (so a fold's result tells
/// which events it saw), occurring now.
pub fn noted(aggregate_id: Uuid, version: u64) -> Event {
    let position = EventPosition {
        event_id: Uuid::new_v4(),
        aggregate_id,
        aggregate_version: version,
        occurred_at: chrono::Utc::now(),
        correlation_id: aggregate_id,
        causation_id: aggregate_id,
    };
    Event::new(position, Noted { n: 10 * i64::try_from(version).unwrap_or(i64::MAX / 10) })
}

/// `events` as the messages of one partition's batch ([`batch_of`]), at consecutive offsets from
/// `first_offset`.
pub fn as_batch(events: Vec<Event>, first_offset: i64) -> Vec<SourceMessage> {
    (first_offset..)
        .zip(events)
        .map(|(offset, event)| SourceMessage {
            offset,
            key: None,
            value: None,
            content: MessageContent::Event(event),
        })
        .collect()
}

/// `messages` as a batch of the probe topic's partition 0, for
/// `prism_read_store::projection::apply_batch`.
pub fn batch_of(messages: &[SourceMessage]) -> PartitionBatch<'_> {
    PartitionBatch { source: PROBE, topic: "probe", partition: 0, messages }
}
