//! Dead letters after the fact: listing them, redriving them through the projector's own apply
//! path once an operator fixed their cause, and discarding the ones that must never apply.
//!
//! The record of truth is the `dead_letters` table (migration 0002); a row is `open` until a
//! redrive applies it (`redriven`) or an operator gives it up (`discarded`). Rows are never
//! deleted, so what happened to every event stays on record.
//!
//! A redrive works on *chains*: all open dead letters of one aggregate in one projection
//! instance (a message that named no aggregate is a chain of its own). Per chain, in one
//! transaction:
//!
//! 1. lock the aggregate's gate row (the lock every projector batch takes first, so a live
//!    worker parking a new event of this aggregate waits until the redrive committed),
//! 2. lock and decode the chain's rows (decoding is the caller's: the projector's decoder),
//! 3. lift the parking, then run the rows in aggregate-version order through the same gate
//!    planner, folds and set-based writers as a projector batch (`writers::lock_and_load`, `writers::plan_writes`),
//!    so a missing event redriven first unparks the chain that waited behind it, versions
//!    already applied count as duplicates, and nothing is applied twice or out of order,
//! 4. advance the gate, re-park the aggregate when something still fails, mark applied rows
//!    `redriven` and record the current reason on the rest.
//!
//! The caller writes the returned cache entries to Redis after the commit (version-guarded,
//! like the projector), keeping the cache never newer than PostgreSQL.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use prism_events::AggregateType;
use prism_postgres::{Database, StoreError};
use prism_projections::gate::ItemOutcome;
use prism_projections::{intern, AggregateKey, GapPolicy, PlannedItem, ProjectionInstance};
use tokio_postgres::Row;
use uuid::Uuid;

use super::batch::{CacheEntry, DeadLetterRecord, MessageContent, SourceMessage};
use super::{gate, writers, Target};

const COLUMNS: &str = include_str!("sql/select_columns.sql");

fn with_columns(sql: &str) -> String {
    sql.replace("{columns}", COLUMNS)
}

/// One row of `dead_letters`, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetter {
    /// Row id: what `prismctl dlq show|redrive|discard` take.
    pub id: i64,
    /// Projection instance, e.g. `order_summary_g1`.
    pub projection: String,
    /// Topic of origin.
    pub source_topic: String,
    /// Partition of origin.
    pub source_partition: i32,
    /// Offset of origin.
    pub source_offset: i64,
    /// The original message key.
    #[serde(skip)]
    pub message_key: Option<Vec<u8>>,
    /// The original message value (the event envelope, or whatever bytes arrived).
    #[serde(skip)]
    pub message_value: Option<Vec<u8>>,
    /// Aggregate type, when the message named one.
    pub aggregate_type: Option<String>,
    /// Aggregate id, when the message named one.
    pub aggregate_id: Option<Uuid>,
    /// Aggregate version, when the envelope decoded that far.
    pub aggregate_version: Option<i64>,
    /// Event type, when the envelope decoded that far.
    pub event_type: Option<String>,
    /// `permanent` (the event itself failed) or `parked` (waits behind one that did).
    pub error_class: String,
    /// Bounded kind: a decode error kind, `unprojectable`, `version_gap`, `parked`, …
    pub error_kind: String,
    /// The sentence for an operator.
    pub error_message: String,
    /// `open`, `redriven` or `discarded`.
    pub status: String,
    /// When it was recorded.
    pub dead_lettered_at: DateTime<Utc>,
    /// When it was redriven or discarded.
    pub resolved_at: Option<DateTime<Utc>>,
    /// Whether its copy in the dead-letter topic was acknowledged.
    pub published: bool,
}

impl DeadLetter {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            projection: row.get(1),
            source_topic: row.get(2),
            source_partition: row.get(3),
            source_offset: row.get(4),
            message_key: row.get(5),
            message_value: row.get(6),
            aggregate_type: row.get(7),
            aggregate_id: row.get(8),
            aggregate_version: row.get(9),
            event_type: row.get(10),
            error_class: row.get(11),
            error_kind: row.get(12),
            error_message: row.get(13),
            status: row.get(14),
            dead_lettered_at: row.get(15),
            resolved_at: row.get(16),
            published: row.get(17),
        }
    }

    /// The aggregate it belongs to, when known and well-formed.
    pub fn aggregate(&self) -> Option<AggregateKey> {
        let name = self.aggregate_type.as_deref().filter(|n| AggregateType::is_valid_name(n))?;
        Some((AggregateType::new(intern(name)), self.aggregate_id?))
    }
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Projection instances (`order_summary_g1`); `None` for all.
    pub projections: Option<Vec<String>>,
    /// One error kind (`version_gap`, `parked`, `invalid_json`, …); `None` for all.
    pub kind: Option<String>,
    /// Statuses to include; empty means `open` only.
    pub statuses: Vec<String>,
    /// One aggregate; `None` for all.
    pub aggregate: Option<AggregateKey>,
    /// At most this many rows (the summary counts them all).
    pub limit: i64,
}

impl DeadLetterFilter {
    fn statuses(&self) -> Vec<String> {
        if self.statuses.is_empty() {
            vec!["open".to_owned()]
        } else {
            self.statuses.clone()
        }
    }

    fn aggregate_params(&self) -> (Option<&'static str>, Option<Uuid>) {
        match self.aggregate {
            Some((t, id)) => (Some(t.as_str()), Some(id)),
            None => (None, None),
        }
    }
}

/// Dead-letter counts of one projection instance, class, kind and status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterCount {
    /// Projection instance.
    pub projection: String,
    /// `permanent` or `parked`.
    pub error_class: String,
    /// Bounded kind.
    pub error_kind: String,
    /// `open`, `redriven` or `discarded`.
    pub status: String,
    /// How many.
    pub count: i64,
}

/// Counts per projection, class, kind and status of the dead letters matching `filter`.
pub async fn summary(db: &Database, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterCount>, StoreError> {
    let client = db.client().await?;
    let (aggregate_type, aggregate_id) = filter.aggregate_params();
    let rows = client
        .query(
            include_str!("sql/summary.sql"),
            &[&filter.projections, &filter.kind, &filter.statuses(), &aggregate_type, &aggregate_id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| DeadLetterCount {
            projection: row.get(0),
            error_class: row.get(1),
            error_kind: row.get(2),
            status: row.get(3),
            count: row.get(4),
        })
        .collect())
}

/// The dead letters matching `filter`, oldest first.
pub async fn list(db: &Database, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
    let client = db.client().await?;
    let (aggregate_type, aggregate_id) = filter.aggregate_params();
    let rows = client
        .query(
            &with_columns(include_str!("sql/list.sql")),
            &[
                &filter.projections,
                &filter.kind,
                &filter.statuses(),
                &aggregate_type,
                &aggregate_id,
                &filter.limit.max(0),
            ],
        )
        .await?;
    Ok(rows.iter().map(DeadLetter::from_row).collect())
}

/// One dead letter by id.
pub async fn get(db: &Database, id: i64) -> Result<Option<DeadLetter>, StoreError> {
    let client = db.client().await?;
    let sql = with_columns("SELECT {columns} FROM dead_letters WHERE id = $1");
    Ok(client.query_opt(&sql, &[&id]).await?.as_ref().map(DeadLetter::from_row))
}

/// The projection instances that have dead letters, any status (for resolving a projection
/// name given without its generation).
pub async fn instances_with_dead_letters(db: &Database) -> Result<Vec<String>, StoreError> {
    let client = db.client().await?;
    let rows = client.query("SELECT DISTINCT projection FROM dead_letters ORDER BY 1", &[]).await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Parses a projection instance id (`order_summary_g1`).
pub fn parse_instance(id: &str) -> Option<ProjectionInstance> {
    ProjectionInstance::parse(id)
}

/// What to redrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedriveTarget {
    /// One dead letter, with the rest of its aggregate's chain (the events parked behind it
    /// cannot apply before it, and it cannot apply before the ones ahead of it).
    One(i64),
    /// Every open dead letter of one aggregate.
    Aggregate(AggregateKey),
    /// Every open dead letter.
    All,
}

/// What a redrive did to one chain.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ChainReport {
    /// Projection instance.
    pub projection: String,
    /// `type:id` of the aggregate, when the chain has one.
    pub aggregate: Option<String>,
    /// Dead letters applied now.
    pub applied: Vec<i64>,
    /// Dead letters found already applied (their version was at or below the gate's): resolved
    /// without a write.
    pub already_applied: Vec<i64>,
    /// Dead letters still open, with why.
    pub still_open: Vec<StillOpen>,
    /// What the cache should now hold (write after the commit, version-guarded).
    #[serde(skip)]
    pub cache_entries: Vec<CacheEntry>,
}

/// A dead letter a redrive could not apply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StillOpen {
    /// Row id.
    pub id: i64,
    /// Bounded kind of the current reason.
    pub error_kind: String,
    /// The current reason.
    pub error_message: String,
}

/// Redrives the open dead letters of `target` in the projection instances of `targets`, one
/// transaction per chain, through the read models' own feeds. `decode` turns a stored row back
/// into the message the projector would have seen (its decoder, so the same checks apply; an
/// operator may have fixed `message_value` in the meantime). Run by the application's workers
/// (they hold the folds); `prismctl dlq redrive` asks them to.
pub async fn redrive<F>(
    db: &Database,
    targets: &[Target<'_>],
    target: RedriveTarget,
    policy: GapPolicy,
    decode: F,
) -> Result<Vec<ChainReport>, StoreError>
where
    F: Fn(&DeadLetter) -> SourceMessage,
{
    let chains = {
        let client = db.client().await?;
        let (aggregate_type, aggregate_id) = match target {
            RedriveTarget::Aggregate((t, id)) => (Some(t.as_str()), Some(id)),
            _ => (None, None),
        };
        let one = match target {
            RedriveTarget::One(id) => Some(id),
            _ => None,
        };
        let projections: Option<Vec<String>> = Some(targets.iter().map(|t| t.instance.id()).collect());
        client
            .query(include_str!("sql/chains.sql"), &[&projections, &aggregate_type, &aggregate_id, &one])
            .await?
    };
    let mut reports = Vec::with_capacity(chains.len());
    for row in &chains {
        let projection: String = row.get(0);
        let Some(chain_target) = targets.iter().find(|t| t.instance.id() == projection) else {
            return Err(StoreError::Corrupt {
                what: "dead_letters",
                detail: format!("projection `{projection}` is not one of the instances asked for"),
            });
        };
        let aggregate_type: Option<String> = row.get(1);
        let aggregate_id: Option<Uuid> = row.get(2);
        let lone_id: Option<i64> = row.get(3);
        let key = match (aggregate_type.as_deref().filter(|n| AggregateType::is_valid_name(n)), aggregate_id)
        {
            (Some(t), Some(id)) => Some((AggregateType::new(intern(t)), id)),
            _ => None,
        };
        // A deadlock or serialization failure against a live projector batch (both write the
        // shared rows of many-to-one views) rolls the chain back: try it again.
        let mut delay = std::time::Duration::from_millis(100);
        let mut attempt = 1;
        let report = loop {
            match redrive_chain(db, chain_target, key, lone_id, policy, &decode).await {
                Ok(report) => break report,
                Err(err) if err.is_transient() && attempt < 6 => {
                    tracing::warn!(error = %err, attempt, projection, "redrive of a chain rolled back; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        };
        reports.push(report);
    }
    Ok(reports)
}

/// Heals the chains of `targets` whose missing event has arrived (see
/// `sql/healable_chains.sql`): each is redriven, in version order, like an operator's redrive
/// would. `only`: just these aggregates (those a batch just parked); `None`: every chain (a
/// periodic sweep, which also finds chains whose heal a crash interrupted).
pub async fn heal<F>(
    db: &Database,
    targets: &[Target<'_>],
    only: Option<&[AggregateKey]>,
    policy: GapPolicy,
    decode: F,
) -> Result<Vec<ChainReport>, StoreError>
where
    F: Fn(&DeadLetter) -> SourceMessage,
{
    if targets.is_empty() || only.is_some_and(<[AggregateKey]>::is_empty) {
        return Ok(Vec::new());
    }
    let rows = {
        let client = db.client().await?;
        let projections: Vec<String> = targets.iter().map(|t| t.instance.id()).collect();
        let types: Option<Vec<&str>> = only.map(|keys| keys.iter().map(|(t, _)| t.as_str()).collect());
        let ids: Option<Vec<Uuid>> = only.map(|keys| keys.iter().map(|(_, id)| *id).collect());
        client.query(include_str!("sql/healable_chains.sql"), &[&projections, &types, &ids]).await?
    };
    let mut reports = Vec::with_capacity(rows.len());
    for row in &rows {
        let projection: String = row.get(0);
        let Some(target) = targets.iter().find(|t| t.instance.id() == projection) else { continue };
        let aggregate_type: String = row.get(1);
        if !AggregateType::is_valid_name(&aggregate_type) {
            continue;
        }
        let key = (AggregateType::new(intern(&aggregate_type)), row.get::<_, Uuid>(2));
        let report = redrive_chain(db, target, Some(key), None, policy, &decode).await?;
        if !report.applied.is_empty() {
            tracing::info!(
                projection,
                aggregate = report.aggregate.as_deref().unwrap_or("?"),
                applied = report.applied.len(),
                still_open = report.still_open.len(),
                "a version gap was filled: applied the events parked behind it"
            );
        }
        reports.push(report);
    }
    Ok(reports)
}

/// One chain, in one transaction.
async fn redrive_chain<F>(
    db: &Database,
    target: &Target<'_>,
    chain_key: Option<AggregateKey>,
    lone_id: Option<i64>,
    policy: GapPolicy,
    decode: &F,
) -> Result<ChainReport, StoreError>
where
    F: Fn(&DeadLetter) -> SourceMessage,
{
    let projection_id = target.instance.id();
    let mut report = ChainReport {
        projection: projection_id.clone(),
        aggregate: chain_key.map(|(t, id)| format!("{t}:{id}")),
        ..Default::default()
    };
    let mut client = db.client().await?;
    let tx = client.transaction().await?;

    // 1. The gate row lock every batch of this aggregate takes first.
    let chain_keys: BTreeSet<AggregateKey> = chain_key.into_iter().collect();
    gate::lock(&tx, &projection_id, &chain_keys).await?;

    // 2. The chain's rows, locked, decoded, in version order.
    let (aggregate_type, aggregate_id) = match chain_key {
        Some((t, id)) => (Some(t.as_str()), Some(id)),
        None => (None, None),
    };
    let rows = tx
        .query(
            &with_columns(include_str!("sql/chain_rows.sql")),
            &[&projection_id, &aggregate_type, &aggregate_id, &lone_id.unwrap_or(-1)],
        )
        .await?;
    let letters: Vec<DeadLetter> = rows.iter().map(DeadLetter::from_row).collect();
    let mut decoded: Vec<(DeadLetter, SourceMessage)> =
        letters.into_iter().map(|letter| (letter.clone(), decode(&letter))).collect();
    if decoded.is_empty() {
        tx.commit().await?;
        return Ok(report);
    }
    // Version order per aggregate; a message whose version is unknown goes first, so an
    // unfixed poison message keeps blocking what was parked behind it.
    decoded.sort_by_key(|(letter, message)| {
        let version = match &message.content {
            MessageContent::Event(event) => i64::try_from(event.meta.aggregate_version).unwrap_or(i64::MAX),
            MessageContent::Poison(poison) => {
                poison.aggregate_version.and_then(|v| i64::try_from(v).ok()).unwrap_or(0)
            }
        };
        (version, letter.source_offset, letter.id)
    });

    let has_event = decoded.iter().any(|(_, m)| matches!(m.content, MessageContent::Event(_)));
    if !has_event {
        // Nothing decodes yet: the rows stay as they are, and so does the parking.
        for (letter, message) in &decoded {
            let (kind, text) = match &message.content {
                MessageContent::Poison(p) => (p.kind.clone(), p.message.clone()),
                MessageContent::Event(_) => (letter.error_kind.clone(), letter.error_message.clone()),
            };
            report.still_open.push(StillOpen { id: letter.id, error_kind: kind, error_message: text });
        }
        reclassify_poison(&tx, &decoded).await?;
        tx.commit().await?;
        return Ok(report);
    }

    // 3. Lift the parking, then plan and write exactly like a projector batch.
    let keys: BTreeSet<AggregateKey> =
        decoded.iter().filter_map(|(_, m)| m.aggregate()).chain(chain_key).collect();
    if !keys.is_empty() {
        let types: Vec<&str> = keys.iter().map(|(t, _)| t.as_str()).collect();
        let ids: Vec<Uuid> = keys.iter().map(|(_, id)| *id).collect();
        tx.execute(include_str!("sql/unpark.sql"), &[&projection_id, &types, &ids]).await?;
    }
    let items: Vec<PlannedItem<'_>> = decoded
        .iter()
        .map(|(_, m)| match &m.content {
            MessageContent::Event(event) => PlannedItem::Event(event),
            MessageContent::Poison(poison) => PlannedItem::Poison { key: poison.aggregate },
        })
        .collect();
    let source = decoded.iter().find_map(|(_, m)| match &m.content {
        MessageContent::Event(event) => Some(event.meta.aggregate_type),
        MessageContent::Poison(_) => None,
    });
    let mut loaded = writers::lock_and_load(&tx, db.schema(), target, source, &keys, &items).await?;
    let initial = loaded.gates.clone();
    let (outcomes, pending_fold, pending_sum) =
        writers::plan_writes(target, source, &items, &mut loaded, policy)?;
    let gates = loaded.gates;
    let mut cache_entries = match pending_fold {
        Some(pending_fold) => pending_fold.write(&tx).await?,
        None => Vec::new(),
    };
    if let Some(pending_sum) = pending_sum {
        let entries = pending_sum.write(&tx).await?;
        writers::merge_cache_entries(&mut cache_entries, entries);
    }

    // 4. Gate, parking, and the rows' new state.
    gate::advance(&tx, &projection_id, &initial, &loaded.gate_rows, &gates).await?;
    gate::record_dead_letters(&tx, &projection_id, &initial, &gates, &[]).await?;
    let mut reclassified: Vec<(i64, String, String, String)> = Vec::new();
    for ((letter, message), outcome) in decoded.iter().zip(&outcomes) {
        match outcome {
            ItemOutcome::Applied | ItemOutcome::AppliedAcrossGap { .. } => report.applied.push(letter.id),
            ItemOutcome::Duplicate | ItemOutcome::Conflict { .. } => report.already_applied.push(letter.id),
            ItemOutcome::Poisoned | ItemOutcome::DeadLettered(_) | ItemOutcome::Parked => {
                let record = DeadLetterRecord::from_outcome(
                    &projection_id,
                    &letter.source_topic,
                    letter.source_partition,
                    message,
                    outcome,
                );
                report.still_open.push(StillOpen {
                    id: letter.id,
                    error_kind: record.error_kind.clone(),
                    error_message: record.error_message.clone(),
                });
                reclassified.push((letter.id, record.error_class, record.error_kind, record.error_message));
            }
        }
    }
    let resolved: Vec<i64> = report.applied.iter().chain(&report.already_applied).copied().collect();
    if !resolved.is_empty() {
        tx.execute(include_str!("sql/resolve.sql"), &[&resolved, &"redriven"]).await?;
    }
    reclassify(&tx, &reclassified).await?;
    tx.commit().await?;
    report.cache_entries = cache_entries;
    Ok(report)
}

async fn reclassify(
    tx: &prism_postgres::cached::Transaction<'_>,
    rows: &[(i64, String, String, String)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let classes: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    let messages: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    tx.execute(include_str!("sql/reclassify.sql"), &[&ids, &classes, &kinds, &messages]).await?;
    Ok(())
}

/// Records the current decode error of rows that still do not decode.
async fn reclassify_poison(
    tx: &prism_postgres::cached::Transaction<'_>,
    decoded: &[(DeadLetter, SourceMessage)],
) -> Result<(), StoreError> {
    let rows: Vec<(i64, String, String, String)> = decoded
        .iter()
        .filter_map(|(letter, message)| match &message.content {
            MessageContent::Poison(p) if letter.error_class == "permanent" => {
                Some((letter.id, "permanent".to_owned(), p.kind.clone(), p.message.clone()))
            }
            _ => None,
        })
        .collect();
    reclassify(tx, &rows).await
}

/// What discarding a dead letter did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum DiscardOutcome {
    /// Discarded now. `waiting` open dead letters of its aggregate remain (redrive them to
    /// apply them without it); when none remain the aggregate is no longer parked.
    Discarded {
        /// Open dead letters of the same aggregate and projection still waiting.
        waiting: i64,
    },
    /// It was not open (already redriven or discarded).
    NotOpen {
        /// Its status.
        status: String,
    },
    /// No dead letter has this id.
    NotFound,
}

/// Marks one open dead letter `discarded` (kept on record, never deleted). If it was the last
/// open one of its aggregate, the aggregate is unparked in the same transaction.
pub async fn discard(db: &Database, id: i64) -> Result<DiscardOutcome, StoreError> {
    let Some(letter) = get(db, id).await? else { return Ok(DiscardOutcome::NotFound) };
    let mut client = db.client().await?;
    let tx = client.transaction().await?;
    let key = letter.aggregate();
    let keys: BTreeSet<AggregateKey> = key.into_iter().collect();
    // Same lock order as a batch: the gate row first.
    gate::lock(&tx, &letter.projection, &keys).await?;
    let changed = tx.execute(include_str!("sql/resolve.sql"), &[&vec![id], &"discarded"]).await?;
    if changed == 0 {
        let status: String =
            tx.query_one("SELECT status FROM dead_letters WHERE id = $1", &[&id]).await?.get(0);
        tx.rollback().await?;
        return Ok(DiscardOutcome::NotOpen { status });
    }
    let mut waiting = 0;
    if let Some((t, aggregate_id)) = key {
        waiting = tx
            .query_one(include_str!("sql/still_open.sql"), &[&letter.projection, &t.as_str(), &aggregate_id])
            .await?
            .get(0);
        if waiting == 0 {
            tx.execute(
                include_str!("sql/unpark.sql"),
                &[&letter.projection, &vec![t.as_str()], &vec![aggregate_id]],
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(DiscardOutcome::Discarded { waiting })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_parse_back() {
        let instance = ProjectionInstance::new("order_summary", 3);
        assert_eq!(parse_instance(&instance.id()), Some(instance));
        assert_eq!(parse_instance("order_summary"), None);
        assert_eq!(parse_instance("order_summary_g0"), None);
        assert_eq!(parse_instance("order_summary_gx"), None);
    }

    #[test]
    fn the_sql_names_every_column_it_reads() {
        let select = with_columns(include_str!("sql/list.sql"));
        assert!(select.contains("published") && !select.contains("{columns}"));
        assert_eq!(COLUMNS.split(',').count(), 18, "DeadLetter::from_row reads 18 columns");
    }
}
