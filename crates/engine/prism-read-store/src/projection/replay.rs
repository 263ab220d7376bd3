//! Bulk replays: ranges of a source partition one projection instance loads directly from the
//! partition, outside its consumer group's batches.
//!
//! `prismctl rebuild` registers them ([`register`]) in the transaction that clears an instance
//! (in place: the events before the projector group's committed offsets, which the group will
//! not deliver again) or registers a new generation (blue/green: everything before the end
//! offsets seen then). A worker maintaining the instance reads each range with a plain
//! partition reader, in chunks of many thousand events, and lands every chunk with
//! [`apply_chunk`]: the planner, folds and set-based writes of a batch, plus the range's
//! progress (`loaded_to`), in one transaction that first locks the range's row. So a chunk
//! lands once whoever loads it — two workers, or one that was killed and restarted — and a
//! worker that finds `loaded_to` moved while it read simply continues from there.
//!
//! A chunk's later steps — its cache entries, its dead letters' copies on the dead-letter
//! topic, healing — follow its commit, as a batch's do; the range's `settled_to` moves when they
//! are done ([`settle`]). A loader that died in between leaves `settled_to` behind `loaded_to`,
//! and the next one [`redeliver_chunk`]s that part first (the gate makes it all duplicates and
//! hands back what the steps need), as the consumer group redelivers a batch whose offsets were
//! never committed.
//!
//! The instances a topic feeds, rebuilt together, have ranges of the same offsets:
//! [`apply_shared_chunk`] lands a chunk in all of them in one transaction (read and decoded
//! once), or in none when one of their ranges is no longer where the chunk starts.
//!
//! Why it is faster than replaying through the group: a chunk writes each aggregate's gate
//! row and read-model row once for thousands of its events, the other read models fed by the
//! same topic never see the replayed events again (an in-place rebuild no longer rewinds the
//! group), and nothing waits on fetch pauses, batch turns or commits.
//!
//! Until a range is settled, no batch of its partition may be applied to the instance (its
//! events would meet an empty gate and look like gaps): the projector loads and settles a
//! pending range before it applies a batch of that partition to the instance. Once loaded, the range's
//! events are in the instance exactly as the live path would have put them there, so a batch
//! that delivers them again (a blue/green builder's group reads from the earliest offsets)
//! skips them for the instance without asking the gate.

use prism_postgres::cached::Transaction;
use prism_postgres::{Database, StoreError};
use prism_projections::{GapPolicy, ProjectionInstance};
use tokio_postgres::GenericClient;

use super::{apply_batch, apply_in, BatchOutcome, GateRead, PartitionBatch, SourceMessage, Target};

/// One range of a source partition an instance loads in bulk, with its progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRange {
    /// The instance, e.g. `order_summary_g2`.
    pub projection: String,
    /// The source topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The first offset of the range.
    pub start: i64,
    /// The offset after the range: from here on the instance takes the partition's batches.
    pub end: i64,
    /// Everything before this offset has landed in PostgreSQL.
    pub loaded_to: i64,
    /// Everything before this offset has landed and had its later steps done (cache, dead
    /// letters' copies, healing); between it and `loaded_to` they may be missing.
    pub settled_to: i64,
}

impl ReplayRange {
    /// Whether all of the range has landed.
    pub fn is_loaded(&self) -> bool {
        self.loaded_to >= self.end
    }

    /// Whether all of the range has landed and had its later steps done: the instance takes
    /// the partition's batches from `end` on.
    pub fn is_settled(&self) -> bool {
        self.settled_to >= self.end
    }
}

/// Replaces `instance`'s ranges with `ranges` (`(topic, partition, start, end)`; empty ones
/// are left out), inside the caller's transaction: the one that clears or registers it.
pub async fn register(
    tx: &impl GenericClient,
    instance: ProjectionInstance,
    ranges: &[(String, i32, i64, i64)],
) -> Result<u64, StoreError> {
    let id = instance.id();
    tx.execute("DELETE FROM projection_replays WHERE projection = $1", &[&id]).await?;
    let ranges: Vec<&(String, i32, i64, i64)> =
        ranges.iter().filter(|(_, _, start, end)| start < end).collect();
    if ranges.is_empty() {
        return Ok(0);
    }
    let topics: Vec<&str> = ranges.iter().map(|r| r.0.as_str()).collect();
    let partitions: Vec<i32> = ranges.iter().map(|r| r.1).collect();
    let starts: Vec<i64> = ranges.iter().map(|r| r.2).collect();
    let ends: Vec<i64> = ranges.iter().map(|r| r.3).collect();
    Ok(tx
        .execute(
            "INSERT INTO projection_replays (projection, source_topic, source_partition, start_offset, end_offset, loaded_to, settled_to) \
             SELECT $1, t, p, s, e, s, s FROM unnest($2::text[], $3::int[], $4::bigint[], $5::bigint[]) AS r(t, p, s, e)",
            &[&id, &topics, &partitions, &starts, &ends],
        )
        .await?)
}

/// Deletes `instance`'s ranges (it is retired), inside the caller's transaction.
pub async fn forget(tx: &impl GenericClient, instance: ProjectionInstance) -> Result<u64, StoreError> {
    Ok(tx.execute("DELETE FROM projection_replays WHERE projection = $1", &[&instance.id()]).await?)
}

/// The ranges of `instances` (ids such as `order_summary_g1`), loaded or not.
pub async fn ranges(
    client: &impl GenericClient,
    instances: &[String],
) -> Result<Vec<ReplayRange>, StoreError> {
    let rows = client
        .query(
            "SELECT projection, source_topic, source_partition, start_offset, end_offset, loaded_to, settled_to \
             FROM projection_replays WHERE projection = ANY($1) ORDER BY projection, source_topic, source_partition",
            &[&instances],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| ReplayRange {
            projection: row.get(0),
            topic: row.get(1),
            partition: row.get(2),
            start: row.get(3),
            end: row.get(4),
            loaded_to: row.get(5),
            settled_to: row.get(6),
        })
        .collect())
}

/// Moves the range's `settled_to` to `to` (never back, never past `loaded_to`): the later
/// steps of every chunk before `to` are done.
pub async fn settle(
    client: &impl GenericClient,
    instance: ProjectionInstance,
    topic: &str,
    partition: i32,
    to: i64,
) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE projection_replays SET settled_to = greatest(settled_to, least($4, loaded_to)) \
             WHERE projection = $1 AND source_topic = $2 AND source_partition = $3",
            &[&instance.id(), &topic, &partition, &to],
        )
        .await?;
    Ok(())
}

/// Applies again messages of a range that already landed (between its `settled_to` and its
/// `loaded_to`): the gate makes every event a duplicate, and the outcome carries what the later
/// steps need — the cache entries of every row they name, the dead letters not yet copied to
/// their topic — exactly as a batch the consumer group redelivers.
pub async fn redeliver_chunk(
    db: &Database,
    target: &Target<'_>,
    policy: GapPolicy,
    batch: PartitionBatch<'_>,
) -> Result<BatchOutcome, StoreError> {
    let outcomes = apply_batch(db, std::slice::from_ref(target), policy, batch).await?;
    Ok(outcomes.into_iter().next().map(|(_, outcome)| outcome).unwrap_or_default())
}

/// A chunk of a range: the messages of offsets `from..to` (`to` the offset after the chunk's
/// last message, or the range's end when the partition holds nothing more before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Where the chunk starts: the range's `loaded_to` the chunk was read from.
    pub from: i64,
    /// Where the range's `loaded_to` moves when the chunk lands.
    pub to: i64,
}

/// What became of a chunk.
#[derive(Debug)]
pub enum ChunkOutcome {
    /// It landed; the outcome of its events, as a batch's.
    Landed(BatchOutcome),
    /// Someone else moved the range while the chunk was read: nothing written; continue from
    /// `loaded_to`.
    Moved {
        /// The range's progress now.
        loaded_to: i64,
    },
    /// The range is no longer registered (the instance was cleared again or retired): nothing
    /// written.
    Gone,
}

/// Where a range stands once its row is locked ([`claim`]).
enum Claimed {
    /// At the chunk's start; `first_chunk` when nothing of the range has landed yet.
    AtStep { first_chunk: bool },
    /// Elsewhere: the chunk must not land.
    Elsewhere(ChunkOutcome),
}

/// Locks the range's row and checks it is still at `step.from`.
async fn claim(
    tx: &Transaction<'_>,
    instance: ProjectionInstance,
    topic: &str,
    partition: i32,
    step: Step,
) -> Result<Claimed, StoreError> {
    let row = prism_postgres::cached::query(
        tx,
        "SELECT loaded_to, start_offset FROM projection_replays \
         WHERE projection = $1 AND source_topic = $2 AND source_partition = $3 FOR UPDATE",
        &[&instance.id(), &topic, &partition],
    )
    .await?;
    Ok(match row.first().map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))) {
        None => Claimed::Elsewhere(ChunkOutcome::Gone),
        Some((loaded_to, _)) if loaded_to != step.from => {
            Claimed::Elsewhere(ChunkOutcome::Moved { loaded_to })
        }
        Some((loaded_to, start)) => Claimed::AtStep { first_chunk: loaded_to == start },
    })
}

/// Moves the range to `step.to` (the caller holds its row, see [`claim`]).
async fn advance(
    tx: &Transaction<'_>,
    instance: ProjectionInstance,
    topic: &str,
    partition: i32,
    step: Step,
) -> Result<(), StoreError> {
    prism_postgres::cached::execute(
        tx,
        "UPDATE projection_replays SET loaded_to = least($4, end_offset), \
                loaded_at = CASE WHEN $4 >= end_offset THEN now() END \
         WHERE projection = $1 AND source_topic = $2 AND source_partition = $3",
        &[&instance.id(), &topic, &partition, &step.to],
    )
    .await?;
    Ok(())
}

/// Lands the chunk `batch` in every one of `targets`, whose ranges of its partition must all
/// stand at `step.from` (checked under their rows' locks, in the order of the targets): each
/// instance's outcome, or where the first range that does not stand there is.
///
/// The first chunk of a range meets no gate row: the range's instance was cleared or created
/// with it, its partition's aggregates belong to no other partition, and no batch of the
/// partition is applied to the instance before the range settles. That chunk takes every
/// aggregate as new ([`GateRead::AssumeNew`]) instead of looking each one up — a sixth of a
/// rebuild's statement time went to lookups that found nothing. The insert of the new gate rows
/// checks the assumption: a row that exists fails it, nothing of the attempt stays, and the
/// chunk is landed again looking its gate rows up.
async fn land(
    db: &Database,
    targets: &[Target<'_>],
    policy: GapPolicy,
    batch: PartitionBatch<'_>,
    step: Step,
) -> Result<Result<Vec<(ProjectionInstance, BatchOutcome)>, ChunkOutcome>, StoreError> {
    let (topic, partition) = (batch.topic, batch.partition);
    let mut assume_new = true;
    loop {
        let mut client = db.client().await?;
        let tx = client.transaction().await?;
        let mut first_chunk = true;
        for target in targets {
            match claim(&tx, target.instance, topic, partition, step).await? {
                Claimed::AtStep { first_chunk: first } => first_chunk &= first,
                Claimed::Elsewhere(elsewhere) => {
                    tx.rollback().await?;
                    return Ok(Err(elsewhere));
                }
            }
        }
        let gate_read = if first_chunk && assume_new { GateRead::AssumeNew } else { GateRead::LockExisting };
        let applied = apply_in(&tx, db.schema(), targets, policy, batch, gate_read).await;
        let outcomes = match applied {
            Ok(outcomes) => outcomes,
            Err(StoreError::Contended { detail, .. }) if gate_read == GateRead::AssumeNew => {
                tracing::info!(topic, partition, %detail, "the first chunk of a replayed range met existing gate rows; landing it again with them looked up");
                drop(tx);
                assume_new = false;
                continue;
            }
            Err(error) => return Err(error),
        };
        for target in targets {
            advance(&tx, target.instance, topic, partition, step).await?;
        }
        tx.commit().await?;
        return Ok(Ok(outcomes));
    }
}

/// Lands the chunk `batch` of `target`'s range of its partition (see the module documentation).
/// A permanent error (the database refuses data) writes nothing; the caller isolates the
/// message by landing smaller chunks, and dead-letters it with [`dead_letter_in_chunk`].
pub async fn apply_chunk(
    db: &Database,
    target: &Target<'_>,
    policy: GapPolicy,
    batch: PartitionBatch<'_>,
    step: Step,
) -> Result<ChunkOutcome, StoreError> {
    Ok(match land(db, std::slice::from_ref(target), policy, batch, step).await? {
        Ok(outcomes) => {
            ChunkOutcome::Landed(outcomes.into_iter().next().map(|(_, outcome)| outcome).unwrap_or_default())
        }
        Err(elsewhere) => elsewhere,
    })
}

/// What became of a chunk landed in several instances at once.
#[derive(Debug)]
pub enum SharedChunkOutcome {
    /// It landed in every one of them; each instance's outcome, in the order of the targets.
    Landed(Vec<(ProjectionInstance, BatchOutcome)>),
    /// At least one of the ranges is no longer at the chunk's start (another loader moved it,
    /// or it was cleared again or retired): nothing written to any of them. Each range is then
    /// loaded on its own, from wherever it is.
    Diverged,
}

/// Lands the chunk `batch` in every one of `targets`, whose ranges of its partition all stand at
/// `step.from`: the instances a topic feeds, rebuilt together (`prismctl rebuild --all`), each
/// have a range of the same offsets, and a chunk read and decoded once serves them all, in one
/// transaction, as a live batch serves every instance its topic feeds. Every range's row is
/// locked and checked first (in the order of the targets, the order every loader uses); one that
/// moved or is gone writes nothing anywhere ([`SharedChunkOutcome::Diverged`]). A permanent
/// error writes nothing either; the caller lands the chunk per instance then, where the
/// refused message is isolated and dead-lettered for the instance that refuses it.
pub async fn apply_shared_chunk(
    db: &Database,
    targets: &[Target<'_>],
    policy: GapPolicy,
    batch: PartitionBatch<'_>,
    step: Step,
) -> Result<SharedChunkOutcome, StoreError> {
    Ok(match land(db, targets, policy, batch, step).await? {
        Ok(outcomes) => SharedChunkOutcome::Landed(outcomes),
        Err(_) => SharedChunkOutcome::Diverged,
    })
}

/// Lands a chunk of one message PostgreSQL refused: its dead-letter record (parking its
/// aggregate) and the range's progress past it, in one transaction.
pub async fn dead_letter_in_chunk(
    db: &Database,
    instance: ProjectionInstance,
    topic: &str,
    partition: i32,
    step: Step,
    message: &SourceMessage,
    error: &StoreError,
) -> Result<ChunkOutcome, StoreError> {
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    if let Claimed::Elsewhere(elsewhere) = claim(&tx, instance, topic, partition, step).await? {
        tx.rollback().await?;
        return Ok(elsewhere);
    }
    let unpublished = super::dead_letter_in(&tx, instance, topic, partition, message, error).await?;
    advance(&tx, instance, topic, partition, step).await?;
    tx.commit().await?;
    Ok(ChunkOutcome::Landed(BatchOutcome {
        dead_lettered: vec![("rejected_by_database".into(), 1)],
        unpublished_dead_letters: unpublished,
        ..Default::default()
    }))
}
