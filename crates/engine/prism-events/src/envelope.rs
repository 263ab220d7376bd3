//! The wire envelope and the event it decodes into.
//!
//! [`Envelope`] is exactly what is published (JSON, one per Kafka message) and what
//! `schemas/envelope.schema.json` describes. [`Event`] is the decoded form: identity and
//! position in [`EventMeta`] and the application's typed body of the payload at its current
//! schema version (see [`Event::body`]).
//!
//! An event holds its payload once, as the typed body, and writes the JSON form only when asked
//! ([`Event::payload`]): a projector holds thousands of decoded events at once, and each kept
//! its payload twice, as a JSON value beside the body decoded from a clone of it.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::aggregate::AggregateType;
use crate::registry::EventSet;

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
    /// Names the payload's type.
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
    #[serde(with = "crate::fields::utc_timestamp")]
    pub occurred_at: DateTime<Utc>,
    /// The request or saga this event is part of.
    pub correlation_id: Uuid,
    /// The message (command or event) that caused this one.
    pub causation_id: Uuid,
    /// The event's data, shaped by `event_type` and `schema_version`.
    pub payload: serde_json::Value,
}

impl Envelope {
    /// The JSON bytes published to Kafka.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // An envelope holds only strings, numbers, UUIDs, a timestamp and a JSON value:
        // serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Identity, type and position of a decoded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventMeta {
    /// Unique per event; a re-publication carries the same one.
    pub event_id: Uuid,
    /// The event's type name.
    pub event_type: &'static str,
    /// The schema version of the payload held (the current one: older ones were upcast).
    pub schema_version: u32,
    /// The aggregate type that emitted the event.
    pub aggregate_type: AggregateType,
    /// The aggregate instance.
    pub aggregate_id: Uuid,
    /// Position in the aggregate's stream, from 1.
    pub aggregate_version: u64,
    /// When the event was decided, in UTC, at microsecond precision (see
    /// [`truncate_to_micros`]): the precision PostgreSQL keeps, so every store of it agrees.
    pub occurred_at: DateTime<Utc>,
    /// The request or saga this event is part of.
    pub correlation_id: Uuid,
    /// The message that caused this one.
    pub causation_id: Uuid,
}

/// Where an event sits and why it happened: everything of [`EventMeta`] but its type, which
/// comes from the body. What a command service or a test gives [`Event::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPosition {
    /// Unique per event.
    pub event_id: Uuid,
    /// The aggregate instance.
    pub aggregate_id: Uuid,
    /// Position in the aggregate's stream, from 1.
    pub aggregate_version: u64,
    /// When the event was decided (truncated to microseconds by [`Event::new`]).
    pub occurred_at: DateTime<Utc>,
    /// The request or saga this event is part of.
    pub correlation_id: Uuid,
    /// The message that caused this one.
    pub causation_id: Uuid,
}

/// A decoded, validated event at its current schema version.
#[derive(Clone)]
pub struct Event {
    /// Identity, type and position.
    pub meta: EventMeta,
    /// The application's typed body of the payload.
    body: Arc<dyn Any + Send + Sync>,
    /// The application's `to_payload` of the body's type.
    encode: EncodeFn,
}

/// An application's [`EventSet::to_payload`] for a body held as `dyn Any`.
pub(crate) type EncodeFn = fn(&(dyn Any + Send + Sync)) -> serde_json::Value;

/// [`EventSet::to_payload`] of `E`, erased. A body of another type (which [`Event`]'s
/// constructors never pair with it) writes `null`.
pub(crate) fn encode_body<E: EventSet>(body: &(dyn Any + Send + Sync)) -> serde_json::Value {
    body.downcast_ref::<E>().map_or(serde_json::Value::Null, E::to_payload)
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event").field("meta", &self.meta).field("payload", &self.payload()).finish()
    }
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.meta == other.meta && self.payload() == other.payload()
    }
}

impl Event {
    /// An event of the application's event set `E`, at `position`.
    pub fn new<E: EventSet>(position: EventPosition, body: E) -> Self {
        let event_type = body.event_type();
        let info = E::event_types().iter().find(|t| t.name == event_type);
        let (aggregate_type, schema_version) = match info {
            Some(info) => (info.aggregate_type, info.current_version),
            // An EventSet whose event_type() names a type it does not declare is a bug the
            // registry's tests catch; keep the name visible rather than panic.
            None => (AggregateType::new("undeclared"), 1),
        };
        Self {
            meta: EventMeta {
                event_id: position.event_id,
                event_type,
                schema_version,
                aggregate_type,
                aggregate_id: position.aggregate_id,
                aggregate_version: position.aggregate_version,
                occurred_at: truncate_to_micros(position.occurred_at),
                correlation_id: position.correlation_id,
                causation_id: position.causation_id,
            },
            body: Arc::new(body),
            encode: encode_body::<E>,
        }
    }

    /// Assembles a decoded event (see [`crate::decode`]).
    pub(crate) fn decoded(meta: EventMeta, body: Arc<dyn Any + Send + Sync>, encode: EncodeFn) -> Self {
        Self { meta, body, encode }
    }

    /// The payload at the current schema version, as the application's type writes it (for a
    /// decoded event: its body written again, so a field the application's type does not keep
    /// is not in it). Written on each call.
    pub fn payload(&self) -> serde_json::Value {
        (self.encode)(&*self.body)
    }

    /// The typed body, when `E` is the application's event type.
    pub fn body<E: EventSet>(&self) -> Option<&E> {
        self.body.downcast_ref::<E>()
    }

    /// The event's type name.
    pub fn event_type(&self) -> &'static str {
        self.meta.event_type
    }

    /// Where the event sits (without its type).
    pub fn position(&self) -> EventPosition {
        EventPosition {
            event_id: self.meta.event_id,
            aggregate_id: self.meta.aggregate_id,
            aggregate_version: self.meta.aggregate_version,
            occurred_at: self.meta.occurred_at,
            correlation_id: self.meta.correlation_id,
            causation_id: self.meta.causation_id,
        }
    }

    /// The wire form, at the current schema version.
    pub fn to_envelope(&self) -> Envelope {
        Envelope {
            event_id: self.meta.event_id,
            event_type: self.meta.event_type.to_owned(),
            schema_version: self.meta.schema_version,
            aggregate_type: self.meta.aggregate_type.as_str().to_owned(),
            aggregate_id: self.meta.aggregate_id,
            aggregate_version: self.meta.aggregate_version,
            occurred_at: self.meta.occurred_at,
            correlation_id: self.meta.correlation_id,
            causation_id: self.meta.causation_id,
            payload: self.payload(),
        }
    }

    /// The JSON bytes published to Kafka.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        self.to_envelope().to_json_bytes()
    }
}

/// Truncates a timestamp to whole microseconds, the precision PostgreSQL keeps. Every event is
/// normalised this way on decode and on creation, so an entity reads the same from the event
/// store, from PostgreSQL and from Redis.
pub fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).unwrap_or(at)
}
