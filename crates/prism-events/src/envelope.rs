//! The wire envelope and the typed event it decodes into.
//!
//! [`Envelope`] is exactly what is published (JSON, one per Kafka message) and what the
//! envelope schema describes. [`Event`] is the decoded form: identity and position in
//! [`EventMeta`], the payload as a typed [`DomainEvent`] at its current schema version.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::AggregateType;
use crate::events::{DomainEvent, EventType};

/// Kafka header repeating the envelope's `event_type`, so consumers can filter unparsed.
pub const HEADER_EVENT_TYPE: &str = "event_type";
/// Kafka header repeating the envelope's `schema_version`.
pub const HEADER_SCHEMA_VERSION: &str = "schema_version";

/// One event as it travels: JSON with these fields and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Unique per event; a re-publication carries the same one.
    pub event_id: Uuid,
    /// Names the payload's type (see [`EventType`]).
    pub event_type: String,
    /// Version of the payload's schema; older ones are upcast on decode.
    pub schema_version: u32,
    /// The aggregate type that emitted the event; also names its topic.
    pub aggregate_type: String,
    /// The aggregate instance; also the Kafka message key.
    pub aggregate_id: Uuid,
    /// Position in the aggregate's stream: 1, 2, 3, … without gaps.
    pub aggregate_version: u64,
    /// When the command service decided the event, in UTC.
    #[serde(with = "utc_rfc3339")]
    pub occurred_at: DateTime<Utc>,
    /// The request or saga this event is part of.
    pub correlation_id: Uuid,
    /// The message (command or event) that caused this one.
    pub causation_id: Uuid,
    /// The event's data, shaped by `event_type` and `schema_version`.
    pub payload: serde_json::Value,
}

/// Identity, position and tracing fields of a decoded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventMeta {
    /// Unique per event; a re-publication carries the same one.
    pub event_id: Uuid,
    /// The aggregate type that emitted the event.
    pub aggregate_type: AggregateType,
    /// The aggregate instance.
    pub aggregate_id: Uuid,
    /// Position in the aggregate's stream, from 1.
    pub aggregate_version: u64,
    /// When the event was decided, in UTC, at microsecond precision.
    pub occurred_at: DateTime<Utc>,
    /// The request or saga this event is part of.
    pub correlation_id: Uuid,
    /// The message that caused this one.
    pub causation_id: Uuid,
}

/// A decoded, validated event at its current schema version.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Identity, position and tracing fields.
    pub meta: EventMeta,
    /// The typed payload.
    pub body: DomainEvent,
}

impl Event {
    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.body.event_type()
    }

    /// The wire form, at the current schema version.
    pub fn to_envelope(&self) -> Envelope {
        let event_type = self.body.event_type();
        Envelope {
            event_id: self.meta.event_id,
            event_type: event_type.as_str().to_owned(),
            schema_version: event_type.current_schema_version(),
            aggregate_type: self.meta.aggregate_type.as_str().to_owned(),
            aggregate_id: self.meta.aggregate_id,
            aggregate_version: self.meta.aggregate_version,
            occurred_at: self.meta.occurred_at,
            correlation_id: self.meta.correlation_id,
            causation_id: self.meta.causation_id,
            payload: self.body.to_payload(),
        }
    }

    /// The JSON bytes published to Kafka.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        self.to_envelope().to_json_bytes()
    }
}

impl Envelope {
    /// The JSON bytes published to Kafka.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // An envelope holds only strings, numbers, UUIDs, a timestamp and a JSON value:
        // serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Truncates a timestamp to whole microseconds, the precision PostgreSQL keeps, so an event
/// read back from the event store is equal to the one that was written.
pub fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}

/// RFC 3339 timestamps that must be in UTC (`Z` or `+00:00`): a local offset on the wire is
/// a producer bug worth catching, not something to convert silently.
mod utc_rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{de, Deserialize, Deserializer, Serializer};

    use super::SecondsFormat;

    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        let parsed = DateTime::parse_from_rfc3339(&text)
            .map_err(|e| de::Error::custom(format!("expected an RFC 3339 timestamp in UTC: {e}")))?;
        if parsed.offset().local_minus_utc() != 0 {
            return Err(de::Error::custom("expected an RFC 3339 timestamp in UTC (Z), got an offset"));
        }
        Ok(parsed.with_timezone(&Utc))
    }
}
