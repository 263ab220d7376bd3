//! What goes into a batch and what comes out of it.

use prism_events::{AggregateType, Event};
use prism_postgres::StoreError;
use prism_projections::gate::ItemOutcome;
use prism_projections::AggregateKey;

/// One partition's messages as a batch applies them: where they come from and what they are.
#[derive(Debug, Clone, Copy)]
pub struct PartitionBatch<'a> {
    /// The aggregate type whose events the topic carries.
    pub source: AggregateType,
    /// The topic the messages were read from.
    pub topic: &'a str,
    /// The partition they were read from.
    pub partition: i32,
    /// The messages, in offset order.
    pub messages: &'a [SourceMessage],
}

/// One Kafka message of a batch, decoded as far as it would go.
#[derive(Debug, Clone)]
pub struct SourceMessage {
    /// Its offset in the partition.
    pub offset: i64,
    /// The message key as received (a view of the consumed message's bytes, not a copy).
    pub key: Option<bytes::Bytes>,
    /// The message value as received, kept for the dead-letter record it may become.
    pub value: Option<bytes::Bytes>,
    /// The decoded event, or why it is poison.
    pub content: MessageContent,
}

/// A message's content.
#[derive(Debug, Clone)]
pub enum MessageContent {
    /// A valid event at its current schema version.
    Event(Event),
    /// A message that cannot be an event.
    Poison(Poison),
}

/// Why a message is poison, and what is known of it.
#[derive(Debug, Clone)]
pub struct Poison {
    /// The aggregate it belongs to, when its key (or envelope) says: that aggregate is parked.
    pub aggregate: Option<AggregateKey>,
    /// Its aggregate version, when the envelope decoded that far.
    pub aggregate_version: Option<u64>,
    /// Its event type, when the envelope decoded that far.
    pub event_type: Option<String>,
    /// Bounded kind (a decode error kind, `key_mismatch`, …).
    pub kind: String,
    /// The sentence for an operator.
    pub message: String,
}

impl SourceMessage {
    /// The aggregate this message belongs to, if known.
    pub fn aggregate(&self) -> Option<AggregateKey> {
        match &self.content {
            MessageContent::Event(event) => Some((event.meta.aggregate_type, event.meta.aggregate_id)),
            MessageContent::Poison(poison) => poison.aggregate,
        }
    }
}

/// A document the cache should hold: the row's key, its revision (compared before
/// overwriting), the aggregate version it reflects, and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// The row's key as text (the part after the key prefix).
    pub id: String,
    /// Strictly increasing per row: the row's change counter.
    pub revision: i64,
    /// For rows keyed by an aggregate, the version of it the row reflects (what
    /// read-your-writes compares); 0 otherwise.
    pub version: i64,
    /// The row as JSON (the application's columns), as the query API serves it.
    pub document: String,
}

/// A dead letter: a message a projection instance could not apply, or one parked behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    /// Row id (0 before insertion).
    pub id: i64,
    /// The projection instance, e.g. `order_summary_g1`.
    pub projection: String,
    /// Where it came from.
    pub source_topic: String,
    /// Partition of origin.
    pub source_partition: i32,
    /// Offset of origin.
    pub source_offset: i64,
    /// The original key.
    pub message_key: Option<Vec<u8>>,
    /// The original value.
    pub message_value: Option<Vec<u8>>,
    /// Aggregate type, when known.
    pub aggregate_type: Option<String>,
    /// Aggregate id, when known.
    pub aggregate_id: Option<String>,
    /// Aggregate version, when known.
    pub aggregate_version: Option<i64>,
    /// Event type, when known.
    pub event_type: Option<String>,
    /// `permanent` (the event is bad) or `parked` (waiting behind one that is).
    pub error_class: String,
    /// Bounded kind.
    pub error_kind: String,
    /// The sentence for an operator.
    pub error_message: String,
}

impl DeadLetterRecord {
    fn base(projection: &str, topic: &str, partition: i32, message: &SourceMessage) -> Self {
        let (aggregate_type, aggregate_id, aggregate_version, event_type) = match &message.content {
            MessageContent::Event(e) => (
                Some(e.meta.aggregate_type.as_str().to_owned()),
                Some(e.meta.aggregate_id.to_string()),
                i64::try_from(e.meta.aggregate_version).ok(),
                Some(e.event_type().to_owned()),
            ),
            MessageContent::Poison(p) => (
                p.aggregate.map(|(t, _)| t.as_str().to_owned()),
                p.aggregate.map(|(_, id)| id.to_string()),
                p.aggregate_version.and_then(|v| i64::try_from(v).ok()),
                p.event_type.clone(),
            ),
        };
        Self {
            id: 0,
            projection: projection.to_owned(),
            source_topic: topic.to_owned(),
            source_partition: partition,
            source_offset: message.offset,
            message_key: message.key.as_deref().map(<[u8]>::to_vec),
            message_value: message.value.as_deref().map(<[u8]>::to_vec),
            aggregate_type,
            aggregate_id,
            aggregate_version,
            event_type,
            error_class: "permanent".into(),
            error_kind: String::new(),
            error_message: String::new(),
        }
    }

    /// The record for a message the planner sent to the dead letters.
    pub(crate) fn from_outcome(
        projection: &str,
        topic: &str,
        partition: i32,
        message: &SourceMessage,
        outcome: &ItemOutcome,
    ) -> Self {
        let mut record = Self::base(projection, topic, partition, message);
        match (outcome, &message.content) {
            (ItemOutcome::DeadLettered(reason), _) => {
                record.error_kind = reason.kind().into();
                record.error_message = reason.message();
            }
            (ItemOutcome::Parked, _) => {
                record.error_class = "parked".into();
                record.error_kind = "parked".into();
                record.error_message = format!(
                    "waiting behind an earlier dead letter of {} {} in {projection}",
                    record.aggregate_type.as_deref().unwrap_or("?"),
                    record.aggregate_id.as_deref().unwrap_or("?")
                );
            }
            (_, MessageContent::Poison(poison)) => {
                record.error_kind = poison.kind.clone();
                record.error_message = poison.message.clone();
            }
            (_, MessageContent::Event(_)) => {
                record.error_kind = "unknown".into();
                record.error_message = format!("{outcome:?}");
            }
        }
        record
    }

    /// The record of last resort, when PostgreSQL refused even the dead-letter record: the
    /// message's bytes and position and its aggregate, no text taken from the message.
    pub(crate) fn minimal(
        projection: &str,
        topic: &str,
        partition: i32,
        message: &SourceMessage,
        refused: &StoreError,
    ) -> Self {
        let mut record = Self::base(projection, topic, partition, message);
        record.event_type = None;
        record.error_kind = "unrecordable".into();
        record.error_message = format!(
            "PostgreSQL refused this message and then its dead-letter record ({}); the message is kept as bytes",
            prism_events::error::clip(&refused.to_string())
        );
        record
    }

    /// The record for a message whose write PostgreSQL refused permanently.
    pub(crate) fn refused_by_store(
        projection: &str,
        topic: &str,
        partition: i32,
        message: &SourceMessage,
        error: &StoreError,
    ) -> Self {
        let mut record = Self::base(projection, topic, partition, message);
        record.error_kind = "rejected_by_database".into();
        record.error_message = format!("PostgreSQL refused the write of this event: {error}");
        record
    }
}

/// What a batch did.
#[derive(Debug, Clone, Default)]
pub struct BatchOutcome {
    /// Events applied.
    pub applied: u64,
    /// Events applied across a version gap (policy `apply`).
    pub applied_across_gap: u64,
    /// Duplicates skipped.
    pub duplicates: u64,
    /// Events skipped because another event was applied at their version (see
    /// [`ItemOutcome::Conflict`]).
    pub conflicts: u64,
    /// Each conflict, for the log: `order:<id> version 3: applied <event id>, arrived <event id>`.
    pub conflict_details: Vec<String>,
    /// Dead letters by kind (parked ones under `parked`).
    pub dead_lettered: Vec<(String, u64)>,
    /// What the cache should now hold.
    pub cache_entries: Vec<CacheEntry>,
    /// Dead letters of this batch's offsets not yet in the dead-letter topic.
    pub unpublished_dead_letters: Vec<DeadLetterRecord>,
    /// Aggregates whose events this batch parked behind an open dead letter: one of them may
    /// be the event a version gap waited for (see `redrive::heal`).
    pub parked_aggregates: Vec<AggregateKey>,
}

impl BatchOutcome {
    /// Counts outcomes. `new_dead_letter_kinds` are the kinds of dead letters recorded by this
    /// batch for the first time (a redelivered batch records none again).
    pub(crate) fn tally(
        outcomes: &[ItemOutcome],
        cache_entries: Vec<CacheEntry>,
        unpublished_dead_letters: Vec<DeadLetterRecord>,
        new_dead_letter_kinds: Vec<String>,
    ) -> Self {
        let mut outcome = Self { cache_entries, unpublished_dead_letters, ..Default::default() };
        for item in outcomes {
            match item {
                ItemOutcome::Applied => outcome.applied += 1,
                ItemOutcome::AppliedAcrossGap { .. } => {
                    outcome.applied += 1;
                    outcome.applied_across_gap += 1;
                }
                ItemOutcome::Duplicate => outcome.duplicates += 1,
                ItemOutcome::Conflict { .. } => outcome.conflicts += 1,
                ItemOutcome::Poisoned | ItemOutcome::DeadLettered(_) | ItemOutcome::Parked => {}
            }
        }
        for kind in new_dead_letter_kinds {
            match outcome.dead_lettered.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, count)) => *count += 1,
                None => outcome.dead_lettered.push((kind, 1)),
            }
        }
        outcome
    }
}
