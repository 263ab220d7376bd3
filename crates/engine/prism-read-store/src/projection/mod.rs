//! Applying one batch of one partition to the projection instances it feeds, in one
//! transaction.
//!
//! [`apply_batch`] does, for each projection instance fed by the batch's topic: lock the
//! batch's existing gate rows, run the pure planner and folds of `prism-projections`, write the
//! view rows set-based (a handful of statements whatever the batch size), advance the gate (and
//! create the rows of aggregates new to the instance), record dead letters and parked
//! aggregates. Then it commits once. The instances share the batch's round trips: every
//! instance's gate lock and loads go in the first, every instance's writes in the second, the
//! sums shared with other partitions and the commit's notification in the third. It returns,
//! per instance, what the cache should now hold and the dead letters still to be copied to the
//! dead-letter topic; the caller writes those, then stores the Kafka offsets.
//!
//! Cache entries cover every aggregate the batch touched, duplicates included: when a worker
//! died after a commit but before its cache write, the redelivered batch is all duplicates,
//! and this is how the cache still catches up.
//!
//! - [`batch`]: the input and output types.
//! - `gate`: gate rows, dead letters and parking.
//! - `writers`: any read model's load, fold or sum, and set-based write.
//! - [`redrive`]: dead letters listed, redriven through the same planner and writers, or
//!   discarded (`prismctl dlq`).
//! - [`replay`]: ranges of a partition an instance loads in bulk after a rebuild cleared or
//!   registered it, each chunk through the same planner and writers with its progress.

pub mod batch;
mod gate;
pub mod redrive;
pub mod replay;
mod writers;

use std::collections::{BTreeSet, HashMap};

use prism_postgres::{all_or_cause, Database, StoreError};
use prism_projections::gate::ItemOutcome;
use prism_projections::{AggregateKey, GapPolicy, GateState, PlannedItem, ProjectionInstance, ReadModel};

pub use batch::{
    BatchOutcome, CacheEntry, DeadLetterRecord, MessageContent, PartitionBatch, Poison, SourceMessage,
};
pub use writers::key_text;

/// How a batch learns the gate state of its aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateRead {
    /// Lock the gate rows that exist and read them (every live batch).
    LockExisting,
    /// Take every aggregate as new to the instances without looking them up: for the first
    /// chunk of a replayed range, whose instance has no gate row of the partition's aggregates
    /// (see `replay`). The insert of the batch's new gate rows checks it: a row that exists
    /// fails it as [`StoreError::Contended`], and the caller lands the chunk again with
    /// [`GateRead::LockExisting`]. Where the read of a fold's rows finds none either, they are
    /// inserted plainly rather than upserted, checked the same way.
    AssumeNew,
}

/// A read model at the generation a batch is applied to.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// Which generation.
    pub instance: ProjectionInstance,
    /// The application's definition: feeds, key, table.
    pub model: &'a ReadModel,
}

/// Applies `batch` (one partition's messages, in offset order) to every one of `targets` in
/// one transaction, in the order given (a fixed order, so concurrent batches lock gate rows in
/// the same sequence). Returns each instance's outcome.
pub async fn apply_batch(
    db: &Database,
    targets: &[Target<'_>],
    policy: GapPolicy,
    batch: PartitionBatch<'_>,
) -> Result<Vec<(ProjectionInstance, BatchOutcome)>, StoreError> {
    if batch.messages.is_empty() || targets.is_empty() {
        return Ok(Vec::new());
    }
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let outcomes = apply_in(&tx, db.schema(), targets, policy, batch, GateRead::LockExisting).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// What [`apply_batch_while_active`] did with a batch.
#[derive(Debug)]
pub enum ActiveBatch {
    /// Landed and committed: every target was its read model's active generation from the
    /// batch's first statement to its commit. Each instance's outcome, as [`apply_batch`]'s.
    Landed(Vec<(ProjectionInstance, BatchOutcome)>),
    /// Nothing applied: a switch made another generation of these targets' read models
    /// active (the ones listed, active now) before the batch began. It belongs there.
    Switched(Vec<ProjectionInstance>),
}

/// [`apply_batch`] for a projector that follows the active generation of its read models:
/// the batch lands only while every target is still its read model's active generation.
///
/// The transaction's first round trip takes the gate table's write lock and then reads the
/// active generations. A switch (`crate::rebuild::switch`) takes that table's share lock before
/// it changes the registry, so from the lock on no switch can commit until this transaction
/// does; one that committed before is what the read sees. A batch therefore never lands in a
/// generation that was retired before its commit, and needs no look at the registry of its own
/// after it. The batch's own statements are sent in the same round trip, behind the read, and
/// are rolled back unused when a target was switched.
pub async fn apply_batch_while_active(
    db: &Database,
    targets: &[Target<'_>],
    policy: GapPolicy,
    batch: PartitionBatch<'_>,
) -> Result<ActiveBatch, StoreError> {
    if batch.messages.is_empty() || targets.is_empty() {
        return Ok(ActiveBatch::Landed(Vec::new()));
    }
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let projections: Vec<&'static str> = targets.iter().map(|t| t.instance.projection).collect();
    // Prepared before anything is sent, so that the lock and the read are the transaction's
    // first statements: a request goes out when its future is first polled, and the join
    // below polls them before the batch's.
    let lock = tx.prepare_cached(gate::LOCK_GATE_TABLE).await?;
    let read_active = tx.prepare_cached(crate::rebuild::ACTIVE_GENERATIONS).await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&projections];
    let active = async {
        let (_, rows) = futures::try_join!(tx.execute(&lock, &[]), tx.query(&read_active, &params))?;
        Ok::<_, StoreError>(crate::rebuild::instances_of(&projections, rows))
    };
    let apply = apply_in(&tx, db.schema(), targets, policy, batch, GateRead::LockExisting);
    let (active, applied) = futures::join!(active, apply);
    // The read came first: a failed batch refused after it does not hide a switch.
    let switched: Vec<ProjectionInstance> = active?
        .into_iter()
        .filter(|now| targets.iter().any(|t| t.instance.projection == now.projection && t.instance != *now))
        .collect();
    if !switched.is_empty() {
        tx.rollback().await?;
        return Ok(ActiveBatch::Switched(switched));
    }
    let outcomes = applied?;
    tx.commit().await?;
    Ok(ActiveBatch::Landed(outcomes))
}

/// [`apply_batch`]'s work inside the caller's transaction (a bulk replay adds its progress to
/// the same transaction, see [`replay`]).
pub(crate) async fn apply_in(
    tx: &prism_postgres::cached::Transaction<'_>,
    schema: &str,
    targets: &[Target<'_>],
    policy: GapPolicy,
    batch: PartitionBatch<'_>,
    gate_read: GateRead,
) -> Result<Vec<(ProjectionInstance, BatchOutcome)>, StoreError> {
    let PartitionBatch { source, messages, .. } = batch;
    if messages.is_empty() || targets.is_empty() {
        return Ok(Vec::new());
    }
    let keys: BTreeSet<AggregateKey> = messages.iter().filter_map(SourceMessage::aggregate).collect();
    let items: Vec<PlannedItem<'_>> = messages
        .iter()
        .map(|m| match &m.content {
            MessageContent::Event(event) => PlannedItem::Event(event),
            MessageContent::Poison(poison) => PlannedItem::Poison { key: poison.aggregate },
        })
        .collect();
    // Round trips, not statements, are what a batch waits on, and a batch of a topic that feeds
    // several instances would otherwise make two per instance, one after the other. Every
    // instance's gate lock and rows to fold go in one (sent in target order, so concurrent
    // batches lock gate rows in the same sequence); every instance's writes in the next, each
    // instance planned while the ones before it are being written.
    let mut statements = Vec::with_capacity(targets.len());
    for target in targets {
        statements.push(writers::LoadStatements::prepare(tx, schema, target, Some(source), &items).await?);
    }
    let loaded = futures::future::try_join_all(
        statements.into_iter().map(|statements| statements.send(tx, &keys, gate_read)),
    )
    .await?;
    // Every instance's writes waited for, so that the failure reported is the one that caused
    // the others (see [`all_or_cause`]): a concurrent batch's gate row, retried, not a later
    // statement's refusal because the transaction had failed.
    let writes = targets
        .iter()
        .zip(loaded)
        .map(|(target, loaded)| write_instance(tx, target, loaded, policy, batch, &items, gate_read));
    let written = all_or_cause(futures::future::join_all(writes).await)?;
    let mut outcomes = Vec::with_capacity(targets.len());
    let mut pending_sums = Vec::new();
    for (target, (outcome, pending_sum)) in targets.iter().zip(written) {
        if let Some(pending_sum) = pending_sum {
            pending_sums.push((outcomes.len(), pending_sum));
        }
        outcomes.push((target.instance, outcome));
    }
    // Rows shared with other partitions' batches last, so their locks are held for the commit
    // alone (see [`writers::PendingSum`]); in target order, like the gate rows.
    let write_sums = async {
        let mut written = Vec::with_capacity(pending_sums.len());
        for (index, pending_sum) in pending_sums {
            written.push((index, pending_sum.write(tx).await?));
        }
        Ok::<_, StoreError>(written)
    };
    // Delivered at commit, once per instance: wakes queries waiting for a version, naming the
    // rows the folds wrote so that a query waiting for another row does not look again (a
    // cached read model's folded rows are its cache entries so far; the sums' come after, and
    // move no row's version). Sent with the sums, as it takes no row lock.
    let channel = crate::read_models::applied_channel(schema);
    let payloads: Vec<String> = targets
        .iter()
        .zip(&outcomes)
        .map(|(target, (_, outcome))| {
            let folded =
                target.model.cache_kind().map(|_| outcome.cache_entries.iter().map(|e| e.id.as_str()));
            crate::read_models::applied_payload(&target.instance.id(), folded)
        })
        .collect();
    let notify = async {
        prism_postgres::cached::execute(
            tx,
            "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
            &[&channel, &payloads],
        )
        .await?;
        Ok::<_, StoreError>(())
    };
    let (sums, ()) = futures::try_join!(write_sums, notify)?;
    for (index, entries) in sums {
        writers::merge_cache_entries(&mut outcomes[index].1.cache_entries, entries);
    }
    Ok(outcomes)
}

/// One instance's share of a batch, inside the batch's transaction, from its locked gate rows
/// and loaded rows: plan, then write.
async fn write_instance(
    tx: &prism_postgres::cached::Transaction<'_>,
    target: &Target<'_>,
    mut loaded: writers::Loaded,
    policy: GapPolicy,
    batch: PartitionBatch<'_>,
    items: &[PlannedItem<'_>],
    gate_read: GateRead,
) -> Result<(BatchOutcome, Option<writers::PendingSum>), StoreError> {
    let PartitionBatch { source, topic, partition, messages } = batch;
    let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
        return Ok((BatchOutcome::default(), None));
    };
    let projection_id = target.instance.id();
    let initial: HashMap<AggregateKey, GateState> = loaded.gates.clone();
    let (outcomes, mut pending_fold, pending_sum) =
        writers::plan_writes(target, Some(source), items, &mut loaded, policy)?;
    if let (GateRead::AssumeNew, Some(pending)) = (gate_read, pending_fold.as_mut()) {
        pending.assume_new();
    }
    let gates = &loaded.gates;

    let dead_letters: Vec<DeadLetterRecord> = messages
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| outcome.is_dead_letter())
        .map(|(message, outcome)| {
            DeadLetterRecord::from_outcome(&projection_id, topic, partition, message, outcome)
        })
        .collect();
    let write_fold = async {
        match pending_fold {
            Some(pending) => pending.write(tx).await,
            None => Ok(Vec::new()),
        }
    };
    // Dead letters are read back after they are recorded: one after the other.
    let record_dead_letters = async {
        let new_kinds = gate::record_dead_letters(tx, &projection_id, &initial, gates, &dead_letters).await?;
        let unpublished =
            gate::unpublished_dead_letters(tx, &projection_id, topic, partition, first.offset, last.offset)
                .await?;
        Ok::<_, StoreError>((new_kinds, unpublished))
    };
    let (cache_entries, advanced, dead_letters) = futures::join!(
        write_fold,
        gate::advance(tx, &projection_id, &initial, &loaded.gate_rows, gates),
        record_dead_letters
    );
    // The cause of a failure, not a later statement's refusal (see [`all_or_cause`]).
    let (cache_entries, (new_kinds, unpublished)) = match (cache_entries, advanced, dead_letters) {
        (Ok(cache_entries), Ok(()), Ok(dead_letters)) => (cache_entries, dead_letters),
        (cache_entries, advanced, dead_letters) => {
            return Err(all_or_cause([cache_entries.map(drop), advanced, dead_letters.map(drop)])
                .expect_err("one of them failed"));
        }
    };
    let mut outcome = BatchOutcome::tally(&outcomes, cache_entries, unpublished, new_kinds);
    let parked: BTreeSet<AggregateKey> = messages
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| matches!(outcome, ItemOutcome::Parked))
        .filter_map(|(message, _)| message.aggregate())
        .collect();
    outcome.parked_aggregates = parked.into_iter().collect();
    outcome.conflict_details = messages
        .iter()
        .zip(&outcomes)
        .filter_map(|(message, outcome)| match (outcome, &message.content) {
            (ItemOutcome::Conflict { applied }, MessageContent::Event(event)) => Some(format!(
                "{}:{} version {}: applied event {applied}, arrived event {}",
                event.meta.aggregate_type,
                event.meta.aggregate_id,
                event.meta.aggregate_version,
                event.meta.event_id
            )),
            _ => None,
        })
        .collect();
    Ok((outcome, pending_sum))
}

/// Marks dead letters as copied to the dead-letter topic.
pub async fn mark_dead_letters_published(db: &Database, ids: &[i64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let client = db.client().await?;
    client.execute("UPDATE dead_letters SET published = true WHERE id = ANY($1)", &[&ids]).await?;
    Ok(())
}

/// Records one message the store itself refused to write (a permanent database error isolated
/// to that message) as a dead letter, parking its aggregate. Used after bisecting a batch.
///
/// A dead-letter record must always be writable, or the partition would wait behind the
/// message forever: if PostgreSQL refuses the full record too, a minimal one is written (the
/// message's bytes, its position and aggregate, and engine text only).
pub async fn dead_letter_one(
    db: &Database,
    instance: ProjectionInstance,
    topic: &str,
    partition: i32,
    message: &SourceMessage,
    error: &StoreError,
) -> Result<Vec<DeadLetterRecord>, StoreError> {
    let record = DeadLetterRecord::refused_by_store(&instance.id(), topic, partition, message, error);
    match write_dead_letter(db, instance, topic, partition, message, record).await {
        Err(refused) if !refused.is_transient() => {
            tracing::error!(%instance, topic, partition, offset = message.offset, error = %refused, "the dead-letter record was refused; writing a minimal one");
            let minimal = DeadLetterRecord::minimal(&instance.id(), topic, partition, message, &refused);
            write_dead_letter(db, instance, topic, partition, message, minimal).await
        }
        other => other,
    }
}

async fn write_dead_letter(
    db: &Database,
    instance: ProjectionInstance,
    topic: &str,
    partition: i32,
    message: &SourceMessage,
    record: DeadLetterRecord,
) -> Result<Vec<DeadLetterRecord>, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let unpublished = record_one(&tx, instance, topic, partition, message, record).await?;
    tx.commit().await?;
    Ok(unpublished)
}

/// [`dead_letter_one`] inside the caller's transaction (a replay's chunk of one refused
/// message): the minimal record after a savepoint when the full one is refused.
pub(crate) async fn dead_letter_in(
    tx: &prism_postgres::cached::Transaction<'_>,
    instance: ProjectionInstance,
    topic: &str,
    partition: i32,
    message: &SourceMessage,
    error: &StoreError,
) -> Result<Vec<DeadLetterRecord>, StoreError> {
    let record = DeadLetterRecord::refused_by_store(&instance.id(), topic, partition, message, error);
    tx.batch_execute("SAVEPOINT prism_dead_letter").await?;
    match record_one(tx, instance, topic, partition, message, record).await {
        Err(refused) if !refused.is_transient() => {
            tracing::error!(%instance, topic, partition, offset = message.offset, error = %refused, "the dead-letter record was refused; writing a minimal one");
            tx.batch_execute("ROLLBACK TO SAVEPOINT prism_dead_letter").await?;
            let minimal = DeadLetterRecord::minimal(&instance.id(), topic, partition, message, &refused);
            record_one(tx, instance, topic, partition, message, minimal).await
        }
        other => other,
    }
}

/// Records `record` for `message` and parks its aggregate; returns the message's dead letters
/// not yet in the dead-letter topic.
async fn record_one(
    tx: &prism_postgres::cached::Transaction<'_>,
    instance: ProjectionInstance,
    topic: &str,
    partition: i32,
    message: &SourceMessage,
    record: DeadLetterRecord,
) -> Result<Vec<DeadLetterRecord>, StoreError> {
    let projection_id = instance.id();
    let keys: BTreeSet<AggregateKey> = message.aggregate().into_iter().collect();
    let (initial, rows) = gate::lock(tx, &projection_id, &keys).await?;
    let mut parked = initial.clone();
    for key in &keys {
        parked.entry(*key).or_default().parked = true;
    }
    // A parked aggregate has a gate row: the row a batch of it locks first.
    gate::advance(tx, &projection_id, &initial, &rows, &parked).await?;
    gate::record_dead_letters(tx, &projection_id, &initial, &parked, std::slice::from_ref(&record)).await?;
    gate::unpublished_dead_letters(tx, &projection_id, topic, partition, message.offset, message.offset).await
}

/// Whether an outcome landed a change in the view.
pub fn is_applied(outcome: &ItemOutcome) -> bool {
    matches!(outcome, ItemOutcome::Applied | ItemOutcome::AppliedAcrossGap { .. })
}
