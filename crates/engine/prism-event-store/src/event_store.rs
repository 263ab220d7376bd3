//! The event store: each aggregate's events in version order, appended with an optimistic
//! concurrency check, each with its outbox row in the same transaction.
//!
//! - [`EventStore::load`] reads one aggregate's stream, decoding every stored event through
//!   the event contract (upcasting older schema versions), and checks that the versions run
//!   1, 2, 3, … without gaps; [`EventStore::load_after`] reads only the events after the
//!   last one a caller folded before, once it has checked that the stream still holds it.
//! - [`EventStore::append`] writes new events for one or more aggregates in one transaction.
//!   Each [`StreamAppend`] names the version its decision was based on; the events must carry
//!   the versions that follow. The unique constraint `events_stream_version` is the
//!   concurrency check: of two commands that decided on the same version, the second to
//!   insert violates it and gets [`EventStoreError::Conflict`], and its whole transaction
//!   (every stream in it, its idempotency record) rolls back.
//! - Every appended event gets its outbox row in the same statement: lane
//!   [`outbox_lane`] of the aggregate id, topic `<prefix><aggregate_type>.events`, key the
//!   hyphenated aggregate id, value the exact envelope JSON bytes (a re-publication is
//!   byte-identical). The transaction ends with a `NOTIFY` on [`notify_channel`] so the relay
//!   wakes at commit instead of at its next poll.
//!
//! Inserts are set-based (arrays unnested in one statement), whatever the number of events.

use std::time::Duration;

use prism_events::decode::envelope_to_event;
use prism_events::{truncate_to_micros, AggregateType, DecodeError, Envelope, Event, EventRegistry};
use prism_postgres::{Database, ErrorClass, StoreError};
use uuid::Uuid;

use crate::idempotency::{self, IdempotencyRecord};

/// Number of outbox lanes. Each lane is published by at most one relay instance at a time, in
/// id order; an aggregate always maps to the same lane, so its events are never published out
/// of order. Fixed: changing it would move aggregates between lanes while rows are queued.
pub const OUTBOX_LANES: i16 = 16;

/// The outbox lane of an aggregate: FNV-1a over the id's 16 bytes, modulo [`OUTBOX_LANES`].
/// Stable across processes, builds and platforms (unlike `std`'s randomly seeded hasher).
pub fn outbox_lane(aggregate_id: Uuid) -> i16 {
    let hash = aggregate_id.as_bytes().iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    // The remainder is below OUTBOX_LANES, so it fits an i16.
    (hash % OUTBOX_LANES as u64) as i16
}

/// The `NOTIFY` channel the relay listens on. One per schema, so deployments (and tests)
/// sharing a database do not wake each other. The schema passed the identifier check when
/// configuration loaded, so the name needs no quoting and stays within 63 bytes.
pub fn notify_channel(schema: &str) -> String {
    format!("prism_outbox_{schema}")
}

const LOAD_STREAM: &str = include_str!("../sql/event_store/load_stream.sql");
const APPEND: &str = include_str!("../sql/event_store/append.sql");
const LOAD_ALL: &str = include_str!("../sql/event_store/load_all.sql");
/// Rows per round trip when reading the whole store.
const LOAD_ALL_PAGE: i64 = 5_000;

/// The name of the unique constraint on (aggregate_type, aggregate_id, aggregate_version).
const STREAM_VERSION_CONSTRAINT: &str = "events_stream_version";

/// Why the event store refused or failed an operation.
#[derive(Debug, thiserror::Error)]
pub enum EventStoreError {
    /// Another command appended to the aggregate since its stream was loaded.
    #[error(
        "{aggregate_type} {aggregate_id} was modified concurrently (expected version {expected_version})"
    )]
    Conflict {
        /// The aggregate's type.
        aggregate_type: AggregateType,
        /// The aggregate.
        aggregate_id: Uuid,
        /// The version the rejected append was based on.
        expected_version: u64,
    },
    /// Another request with the same Idempotency-Key committed first.
    #[error("idempotency key is already recorded for another request")]
    IdempotencyKeyTaken,
    /// The append itself is malformed (a bug in the caller): versions that do not follow the
    /// expected one, an event of another aggregate, an empty batch.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// A stored event cannot be decoded or the stream has a gap: the store holds data this
    /// build cannot read.
    #[error("stored stream of {aggregate_type} {aggregate_id} is unreadable at version {version}: {detail}")]
    Corrupt {
        /// The aggregate's type, as stored.
        aggregate_type: String,
        /// The aggregate.
        aggregate_id: Uuid,
        /// The first version that could not be read.
        version: u64,
        /// What is wrong with it.
        detail: String,
    },
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EventStoreError {
    /// Whether retrying the same operation can help. A conflict is permanent for the request
    /// that lost (it must reload and decide again); the store's own errors carry their class.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Store(err) => err.class(),
            Self::Conflict { .. }
            | Self::IdempotencyKeyTaken
            | Self::InvalidAppend(_)
            | Self::Corrupt { .. } => ErrorClass::Permanent,
        }
    }
}

impl From<tokio_postgres::Error> for EventStoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Store(StoreError::Postgres(err))
    }
}

/// One aggregate's events, as stored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stream {
    /// The events, oldest first, at their current schema versions.
    pub events: Vec<Event>,
}

impl Stream {
    /// The version of the last event, 0 for an aggregate with no events.
    pub fn version(&self) -> u64 {
        self.events.last().map_or(0, |event| event.meta.aggregate_version)
    }
}

/// What follows, in an aggregate's stream, the last event a caller folded
/// ([`EventStore::load_after`]).
#[derive(Debug, Clone)]
pub enum Continuation {
    /// The events after it, oldest first (none when the caller has folded them all).
    Events(Vec<Event>),
    /// The stream no longer holds that event at that version (a store restored from an older
    /// backup): what the caller folded is not this stream's, and it must fold the stream anew.
    Diverged,
}

/// New events for one aggregate.
#[derive(Debug, Clone)]
pub struct StreamAppend {
    /// The aggregate's type.
    pub aggregate_type: AggregateType,
    /// The aggregate.
    pub aggregate_id: Uuid,
    /// The version the decision was based on (0 for a new aggregate).
    pub expected_version: u64,
    /// The events, carrying versions `expected_version + 1`, `+ 2`, …
    pub events: Vec<Event>,
}

/// The event store over a [`Database`], for one application's events.
#[derive(Debug, Clone)]
pub struct EventStore {
    /// Pooled connections to Prism's schema.
    db: Database,
    /// The application's events: how stored rows decode.
    events: EventRegistry,
    /// Prefix of the topics outbox rows are addressed to.
    topic_prefix: String,
    /// The relay's wake-up channel.
    channel: String,
}

impl EventStore {
    /// An event store of the application whose events `events` describes, with outbox rows
    /// going to topics under `topic_prefix`.
    pub fn new(db: Database, events: EventRegistry, topic_prefix: impl Into<String>) -> Self {
        let channel = notify_channel(db.schema());
        Self { db, events, topic_prefix: topic_prefix.into(), channel }
    }

    /// The application's events.
    pub fn events(&self) -> &EventRegistry {
        &self.events
    }

    /// The database this store writes to.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// One aggregate's events, oldest first. An aggregate with no events has an empty stream.
    pub async fn load(
        &self,
        aggregate_type: AggregateType,
        aggregate_id: Uuid,
    ) -> Result<Stream, EventStoreError> {
        let rows = self.stream_rows(aggregate_type, aggregate_id, 0).await?;
        Ok(Stream { events: self.decode_stream(aggregate_type, aggregate_id, 0, &rows)? })
    }

    /// One aggregate's events after the event `event_id` at `version`, the last one a caller
    /// folded before, oldest first, checked to run on from it without gaps: what that caller
    /// still has to fold. [`Continuation::Diverged`] when the stream no longer holds that event
    /// at that version.
    pub async fn load_after(
        &self,
        aggregate_type: AggregateType,
        aggregate_id: Uuid,
        version: u64,
        event_id: Uuid,
    ) -> Result<Continuation, EventStoreError> {
        // The statement reads from the folded version on: its first row says whether the
        // stream still continues what the caller folded.
        let rows = self.stream_rows(aggregate_type, aggregate_id, version).await?;
        match rows.first() {
            Some(row)
                if u64::try_from(row.try_get::<_, i64>("aggregate_version")?) == Ok(version)
                    && row.try_get::<_, Uuid>("event_id")? == event_id =>
            {
                Ok(Continuation::Events(self.decode_stream(
                    aggregate_type,
                    aggregate_id,
                    version,
                    &rows[1..],
                )?))
            }
            _ => {
                tracing::warn!(%aggregate_type, %aggregate_id, version, %event_id, "the stream no longer holds the event folded at this version");
                Ok(Continuation::Diverged)
            }
        }
    }

    /// The stored rows of one aggregate's events from version `from` on (`load_stream.sql`).
    async fn stream_rows(
        &self,
        aggregate_type: AggregateType,
        aggregate_id: Uuid,
        from: u64,
    ) -> Result<Vec<tokio_postgres::Row>, EventStoreError> {
        let from_version = i64::try_from(from).map_err(|_| EventStoreError::Corrupt {
            aggregate_type: aggregate_type.as_str().to_owned(),
            aggregate_id,
            version: from,
            detail: "a version past the largest the store keeps".into(),
        })?;
        let client = self.db.client().await?;
        let statement = client.prepare_cached(LOAD_STREAM).await?;
        Ok(client.query(&statement, &[&aggregate_type.as_str(), &aggregate_id, &from_version]).await?)
    }

    /// Decodes `rows`, the events of one aggregate after version `after`, through the event
    /// contract, checking that their versions run `after + 1`, `after + 2`, … without gaps.
    fn decode_stream(
        &self,
        aggregate_type: AggregateType,
        aggregate_id: Uuid,
        after: u64,
        rows: &[tokio_postgres::Row],
    ) -> Result<Vec<Event>, EventStoreError> {
        let mut events = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            let expected = after + index as u64 + 1;
            let corrupt = |detail: String| EventStoreError::Corrupt {
                aggregate_type: aggregate_type.as_str().to_owned(),
                aggregate_id,
                version: expected,
                detail,
            };
            let version: i64 = row.try_get("aggregate_version")?;
            if version != expected as i64 {
                return Err(corrupt(format!("found version {version} where {expected} should be")));
            }
            let schema_version: i32 = row.try_get("schema_version")?;
            let envelope = Envelope {
                event_id: row.try_get("event_id")?,
                event_type: row.try_get("event_type")?,
                schema_version: u32::try_from(schema_version)
                    .map_err(|_| corrupt(format!("schema version {schema_version}")))?,
                aggregate_type: aggregate_type.as_str().to_owned(),
                aggregate_id,
                aggregate_version: expected,
                occurred_at: row.try_get("occurred_at")?,
                correlation_id: row.try_get("correlation_id")?,
                causation_id: row.try_get("causation_id")?,
                payload: row.try_get("payload")?,
            };
            let event =
                envelope_to_event(&self.events, envelope).map_err(|e: DecodeError| corrupt(e.to_string()))?;
            events.push(event);
        }
        Ok(events)
    }

    /// Every stored event, in append order (per aggregate, that is version order). For
    /// verification tools that fold the whole history; reads in pages, holds the result.
    pub async fn load_all(&self) -> Result<Vec<Event>, EventStoreError> {
        let client = self.db.client().await?;
        let statement = client.prepare_cached(LOAD_ALL).await?;
        let mut events = Vec::new();
        let mut after: i64 = 0;
        loop {
            let rows = client.query(&statement, &[&after, &LOAD_ALL_PAGE]).await?;
            for row in &rows {
                after = row.try_get("global_position")?;
                let type_name: String = row.try_get("aggregate_type")?;
                let aggregate_id: Uuid = row.try_get("aggregate_id")?;
                let version: i64 = row.try_get("aggregate_version")?;
                let schema_version: i32 = row.try_get("schema_version")?;
                let corrupt = |detail: String| EventStoreError::Corrupt {
                    aggregate_type: type_name.clone(),
                    aggregate_id,
                    version: u64::try_from(version).unwrap_or(0),
                    detail,
                };
                let envelope = Envelope {
                    event_id: row.try_get("event_id")?,
                    event_type: row.try_get("event_type")?,
                    schema_version: u32::try_from(schema_version)
                        .map_err(|_| corrupt(format!("schema version {schema_version}")))?,
                    aggregate_type: type_name.clone(),
                    aggregate_id,
                    aggregate_version: u64::try_from(version)
                        .map_err(|_| corrupt(format!("version {version}")))?,
                    occurred_at: row.try_get("occurred_at")?,
                    correlation_id: row.try_get("correlation_id")?,
                    causation_id: row.try_get("causation_id")?,
                    payload: row.try_get("payload")?,
                };
                events.push(
                    envelope_to_event(&self.events, envelope)
                        .map_err(|e: DecodeError| corrupt(e.to_string()))?,
                );
            }
            if (rows.len() as i64) < LOAD_ALL_PAGE {
                return Ok(events);
            }
        }
    }

    /// Appends every stream's events, their outbox rows and (when given) the idempotency
    /// record, all in one transaction: all of it lands or none of it does.
    pub async fn append(
        &self,
        streams: &[StreamAppend],
        idempotency: Option<&IdempotencyRecord>,
    ) -> Result<(), EventStoreError> {
        let batch = self.batch(streams)?;
        let mut client = self.db.client().await?;
        let tx = client.transaction().await?;
        // The idempotency record first: a concurrent request with the same key then waits on
        // this row and finds it taken, instead of racing to append its own events.
        if let Some(record) = idempotency {
            if !idempotency::insert(&tx, record).await? {
                return Err(EventStoreError::IdempotencyKeyTaken);
            }
        }
        let statement = tx.prepare_cached(APPEND).await?;
        let result = tx
            .query_one(
                &statement,
                &[
                    &batch.event_ids,
                    &batch.aggregate_types,
                    &batch.aggregate_ids,
                    &batch.versions,
                    &batch.event_types,
                    &batch.schema_versions,
                    &batch.occurred_at,
                    &batch.correlation_ids,
                    &batch.causation_ids,
                    &batch.payloads,
                    &batch.lanes,
                    &batch.topics,
                    &batch.keys,
                    &batch.values,
                    &self.channel,
                ],
            )
            .await;
        let row = match result {
            Ok(row) => row,
            Err(err) => return Err(self.append_error(err, streams)),
        };
        let queued: i64 = row.try_get("queued")?;
        if queued != batch.event_ids.len() as i64 {
            return Err(EventStoreError::Store(StoreError::Corrupt {
                what: "outbox",
                detail: format!("{queued} outbox rows written for {} events", batch.event_ids.len()),
            }));
        }
        tx.commit().await.map_err(|err| self.append_error(err, streams))?;
        Ok(())
    }

    /// A failed append: a violated stream-version constraint is a conflict on the aggregate
    /// it names; anything else is PostgreSQL's.
    fn append_error(&self, err: tokio_postgres::Error, streams: &[StreamAppend]) -> EventStoreError {
        let Some(db_error) = err.as_db_error() else { return err.into() };
        if db_error.constraint() != Some(STREAM_VERSION_CONSTRAINT) {
            return err.into();
        }
        // PostgreSQL names the conflicting key in the detail: `Key (aggregate_type,
        // aggregate_id, aggregate_version)=(order, <uuid>, 3) already exists.`
        let detail = db_error.detail().unwrap_or_default();
        let conflicting =
            streams.iter().find(|s| detail.contains(&s.aggregate_id.to_string())).or_else(|| streams.first());
        match conflicting {
            Some(stream) => EventStoreError::Conflict {
                aggregate_type: stream.aggregate_type,
                aggregate_id: stream.aggregate_id,
                expected_version: stream.expected_version,
            },
            None => err.into(),
        }
    }

    /// Checks the streams and lays their events out as the statement's parallel arrays.
    fn batch(&self, streams: &[StreamAppend]) -> Result<AppendBatch, EventStoreError> {
        let invalid = |msg: String| Err(EventStoreError::InvalidAppend(msg));
        let mut batch = AppendBatch::default();
        if streams.iter().all(|s| s.events.is_empty()) {
            return invalid("no events to append".into());
        }
        for (index, stream) in streams.iter().enumerate() {
            if streams[..index]
                .iter()
                .any(|s| s.aggregate_type == stream.aggregate_type && s.aggregate_id == stream.aggregate_id)
            {
                return invalid(format!("{} {} appears twice", stream.aggregate_type, stream.aggregate_id));
            }
            let topic = stream.aggregate_type.topic(&self.topic_prefix);
            let key = stream.aggregate_id.hyphenated().to_string();
            let lane = outbox_lane(stream.aggregate_id);
            for (offset, event) in stream.events.iter().enumerate() {
                let meta = &event.meta;
                let version = stream.expected_version + offset as u64 + 1;
                let registered = self.events.event_type(meta.event_type).map(|t| t.aggregate_type);
                if meta.aggregate_type != stream.aggregate_type
                    || meta.aggregate_id != stream.aggregate_id
                    || registered != Some(stream.aggregate_type)
                {
                    return invalid(format!(
                        "event {} does not belong to {} {}",
                        meta.event_id, stream.aggregate_type, stream.aggregate_id
                    ));
                }
                if meta.aggregate_version != version {
                    return invalid(format!(
                        "event {} has version {}, expected {version}",
                        meta.event_id, meta.aggregate_version
                    ));
                }
                let Ok(version) = i64::try_from(version) else {
                    return invalid(format!("version {version} does not fit PostgreSQL's bigint"));
                };
                // The stored row and the published bytes must agree to the microsecond, the
                // precision PostgreSQL keeps.
                let mut event = event.clone();
                event.meta.occurred_at = truncate_to_micros(event.meta.occurred_at);
                let envelope = event.to_envelope();
                batch.values.push(envelope.to_json_bytes());
                batch.event_ids.push(envelope.event_id);
                batch.aggregate_types.push(envelope.aggregate_type);
                batch.aggregate_ids.push(envelope.aggregate_id);
                batch.versions.push(version);
                batch.event_types.push(envelope.event_type);
                batch.schema_versions.push(envelope.schema_version as i32);
                batch.occurred_at.push(envelope.occurred_at);
                batch.correlation_ids.push(envelope.correlation_id);
                batch.causation_ids.push(envelope.causation_id);
                batch.payloads.push(envelope.payload);
                batch.lanes.push(lane);
                batch.topics.push(topic.clone());
                batch.keys.push(key.clone());
            }
        }
        Ok(batch)
    }
}

/// The append statement's parameters: one array per column, one element per event.
#[derive(Default)]
struct AppendBatch {
    event_ids: Vec<Uuid>,
    aggregate_types: Vec<String>,
    aggregate_ids: Vec<Uuid>,
    versions: Vec<i64>,
    event_types: Vec<String>,
    schema_versions: Vec<i32>,
    occurred_at: Vec<chrono::DateTime<chrono::Utc>>,
    correlation_ids: Vec<Uuid>,
    causation_ids: Vec<Uuid>,
    payloads: Vec<serde_json::Value>,
    lanes: Vec<i16>,
    topics: Vec<String>,
    keys: Vec<String>,
    values: Vec<Vec<u8>>,
}

/// How long to keep an idempotency record, as PostgreSQL's `make_interval` wants it.
pub(crate) fn ttl_seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_are_stable_and_spread() {
        let id = Uuid::parse_str("0b6f3c9e-6a3d-4a57-9d8e-2f1c7e5b9a10").expect("uuid");
        assert_eq!(outbox_lane(id), outbox_lane(id));
        // Pinned: a change of the hash would move queued rows between lanes.
        assert_eq!(outbox_lane(Uuid::nil()), 5);
        let mut seen = [0_u32; OUTBOX_LANES as usize];
        for n in 0..1600_u128 {
            seen[outbox_lane(Uuid::from_u128(n * 0x9e37_79b9_7f4a_7c15)) as usize] += 1;
        }
        assert!(seen.iter().all(|count| *count > 50), "lanes unevenly used: {seen:?}");
    }

    #[test]
    fn channel_is_per_schema() {
        assert_eq!(notify_channel("prism"), "prism_outbox_prism");
    }
}
