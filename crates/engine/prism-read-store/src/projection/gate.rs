//! Gate rows, dead letters and parked aggregates of a projection instance.

use std::collections::{BTreeSet, HashMap};

use prism_postgres::cached::{self, Transaction};
use prism_projections::{AggregateKey, GateState};
use tokio_postgres::Statement;
use uuid::Uuid;

use super::batch::DeadLetterRecord;
use prism_postgres::StoreError;

/// Where the gate rows a transaction locked are: each aggregate's row's `ctid` as text,
/// stable while the transaction holds the row's lock, so [`advance`] updates the row without
/// looking its key up again.
pub(super) type GateRows = HashMap<AggregateKey, String>;

/// Column arrays of a set of aggregate keys, sorted (the lock order).
fn key_arrays<'a>(keys: impl IntoIterator<Item = &'a AggregateKey>) -> (Vec<&'static str>, Vec<Uuid>) {
    let sorted: BTreeSet<(&'static str, Uuid)> = keys.into_iter().map(|(t, id)| (t.as_str(), *id)).collect();
    sorted.into_iter().unzip()
}

/// The gate table's write lock, a batch's first lock (see [`GateLock`]).
pub(super) const LOCK_GATE_TABLE: &str = "LOCK TABLE projection_gate IN ROW EXCLUSIVE MODE";

/// The statement that locks a batch's existing gate rows, prepared on a connection.
///
/// A batch locks the gate rows of its aggregates that exist, and creates the others only with
/// its writes, at the state it leaves them in ([`advance`]): most aggregates of a batch during
/// a replay or a first load are new, and a row inserted once costs far less than one inserted
/// empty, locked and then updated. A new aggregate has no row to lock; two batches that meet it
/// at once both find it absent, and the second one's insert fails on the first one's row, which
/// [`advance`] turns into [`StoreError::Contended`]: the batch rolls back and is retried, and
/// then finds the row and waits on its lock like any other.
///
/// The table's write lock comes first, before any row or read-model table: a switch of
/// generations takes the gate table's share lock before the tables' (`crate::rebuild`), so a
/// batch must never hold a read-model table while it waits for the gate table.
pub(super) struct GateLock {
    table: Statement,
    lock: Statement,
}

impl GateLock {
    /// Prepares them (once per connection; later calls find them in its cache).
    pub(super) async fn prepare(tx: &Transaction<'_>) -> Result<Self, StoreError> {
        Ok(Self {
            table: tx.prepare_cached(LOCK_GATE_TABLE).await?,
            lock: tx.prepare_cached(include_str!("../../sql/projection/gate_lock.sql")).await?,
        })
    }

    /// Locks the existing gate rows of `keys`; returns their state and where they are. An
    /// aggregate without a row is absent from both maps: it is new to the instance (version 0,
    /// not parked).
    pub(super) async fn lock(
        &self,
        tx: &Transaction<'_>,
        projection: &str,
        keys: &BTreeSet<AggregateKey>,
    ) -> Result<(HashMap<AggregateKey, GateState>, GateRows), StoreError> {
        if keys.is_empty() {
            return Ok((HashMap::new(), HashMap::new()));
        }
        let (types, ids) = key_arrays(keys);
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [&projection, &types, &ids];
        // Both sent at once (pipelined), in this order.
        let (_, rows) = futures::try_join!(tx.execute(&self.table, &[]), tx.query(&self.lock, &params))?;
        let mut gates = HashMap::with_capacity(rows.len());
        let mut locations = HashMap::with_capacity(rows.len());
        for row in rows {
            let type_name: &str = row.get(0);
            // The rows are the keys asked for: their aggregate types come back by name.
            let Some(aggregate_type) = keys.iter().map(|(t, _)| *t).find(|t| t.as_str() == type_name) else {
                return Err(StoreError::Corrupt {
                    what: "projection_gate",
                    detail: format!("a gate row of aggregate type `{type_name}` that was not asked for"),
                });
            };
            let last_version: i64 = row.get(2);
            let key = (aggregate_type, row.get::<_, Uuid>(1));
            gates.insert(
                key,
                GateState {
                    last_version: last_version.unsigned_abs(),
                    parked: row.get(3),
                    last_event_id: row.get(4),
                },
            );
            locations.insert(key, row.get::<_, String>(5));
        }
        Ok((gates, locations))
    }
}

impl GateLock {
    /// Takes the table's write lock only, as [`GateLock::lock`] does first, and reads no row:
    /// every aggregate is taken as new ([`super::GateRead::AssumeNew`]).
    pub(super) async fn lock_table(
        &self,
        tx: &Transaction<'_>,
    ) -> Result<(HashMap<AggregateKey, GateState>, GateRows), StoreError> {
        tx.execute(&self.table, &[]).await?;
        Ok((HashMap::new(), HashMap::new()))
    }
}

/// Locks the existing gate rows of `keys`; returns their state and where they are (see
/// [`GateLock::lock`]).
pub(super) async fn lock(
    tx: &Transaction<'_>,
    projection: &str,
    keys: &BTreeSet<AggregateKey>,
) -> Result<(HashMap<AggregateKey, GateState>, GateRows), StoreError> {
    GateLock::prepare(tx).await?.lock(tx, projection, keys).await
}

/// Writes the gate after a batch: the last applied version of every locked row whose version
/// moved, and a row for every aggregate the batch met that had none (`before` and `rows` are
/// what [`lock`] returned). A row that another transaction created meanwhile fails the insert
/// on its key, which becomes [`StoreError::Contended`]: the batch is rolled back and retried.
pub(super) async fn advance(
    tx: &Transaction<'_>,
    projection: &str,
    before: &HashMap<AggregateKey, GateState>,
    rows: &GateRows,
    after: &HashMap<AggregateKey, GateState>,
) -> Result<(), StoreError> {
    let version = |state: &GateState| i64::try_from(state.last_version).unwrap_or(i64::MAX);
    let mut moved: Vec<(&str, i64, Option<Uuid>)> = Vec::new();
    let mut new: Vec<(&AggregateKey, i64, Option<Uuid>)> = Vec::new();
    for (key, state) in after {
        match before.get(key) {
            None => new.push((key, version(state), state.last_event_id)),
            Some(locked) if locked.last_version != state.last_version => {
                let Some(row) = rows.get(key) else {
                    return Err(StoreError::Corrupt {
                        what: "projection_gate",
                        detail: format!("the locked gate row of {}:{} has no location", key.0, key.1),
                    });
                };
                moved.push((row.as_str(), version(state), state.last_event_id))
            }
            Some(_) => {}
        }
    }
    new.sort_by_key(|((t, id), _, _)| (t.as_str(), *id));
    let update = async {
        if moved.is_empty() {
            return Ok(());
        }
        let row_ids: Vec<&str> = moved.iter().map(|(row, _, _)| *row).collect();
        let versions: Vec<i64> = moved.iter().map(|(_, v, _)| *v).collect();
        let event_ids: Vec<Option<Uuid>> = moved.iter().map(|(_, _, e)| *e).collect();
        let updated = cached::execute(
            tx,
            include_str!("../../sql/projection/gate_advance.sql"),
            &[&row_ids, &versions, &event_ids],
        )
        .await?;
        if updated != moved.len() as u64 {
            return Err(StoreError::Corrupt {
                what: "projection_gate",
                detail: format!(
                    "{updated} of the {} gate rows of {projection} this batch locked and advanced were found where the lock found them",
                    moved.len()
                ),
            });
        }
        Ok::<_, StoreError>(())
    };
    let insert = async {
        if new.is_empty() {
            return Ok(());
        }
        let types: Vec<&str> = new.iter().map(|((t, _), _, _)| t.as_str()).collect();
        let ids: Vec<Uuid> = new.iter().map(|((_, id), _, _)| *id).collect();
        let versions: Vec<i64> = new.iter().map(|(_, v, _)| *v).collect();
        let event_ids: Vec<Option<Uuid>> = new.iter().map(|(_, _, e)| *e).collect();
        match cached::execute(
            tx,
            include_str!("../../sql/projection/gate_insert.sql"),
            &[&projection, &types, &ids, &versions, &event_ids],
        )
        .await
        {
            // The insert's one unique key is the gate row's: another transaction gave one of
            // these aggregates a row after this batch found none.
            Err(error) if error.is_unique_violation() => Err(StoreError::Contended {
                what: "projection_gate",
                detail: format!(
                    "an aggregate of the {} new to {projection} when this batch locked its gate rows was given a row by another transaction since ({error})",
                    new.len()
                ),
            }),
            Err(error) => Err(error),
            Ok(_) => Ok(()),
        }
    };
    futures::try_join!(update, insert)?;
    Ok(())
}

/// Inserts the dead-letter records (once per origin) and parks the aggregates that became
/// parked. Returns the kinds of the records inserted now.
pub(super) async fn record_dead_letters(
    tx: &Transaction<'_>,
    projection: &str,
    before: &HashMap<AggregateKey, GateState>,
    after: &HashMap<AggregateKey, GateState>,
    records: &[DeadLetterRecord],
) -> Result<Vec<String>, StoreError> {
    let newly_parked: Vec<&AggregateKey> = after
        .iter()
        .filter(|(key, state)| state.parked && !before.get(key).is_some_and(|b| b.parked))
        .map(|(key, _)| key)
        .collect();
    if !newly_parked.is_empty() {
        let (types, ids) = key_arrays(newly_parked);
        cached::execute(tx, include_str!("../../sql/projection/park.sql"), &[&projection, &types, &ids])
            .await?;
    }
    if records.is_empty() {
        return Ok(Vec::new());
    }
    // Every text column goes through `storable_text`: a dead-letter record describes whatever
    // bytes a message held, and must be writable whatever they were (keys and values stay bytes).
    let col = |f: fn(&DeadLetterRecord) -> Option<&str>| -> Vec<Option<String>> {
        records.iter().map(|r| f(r).map(storable_text)).collect()
    };
    let topics: Vec<String> = records.iter().map(|r| storable_text(&r.source_topic)).collect();
    let partitions: Vec<i32> = records.iter().map(|r| r.source_partition).collect();
    let offsets: Vec<i64> = records.iter().map(|r| r.source_offset).collect();
    let keys: Vec<Option<&[u8]>> = records.iter().map(|r| r.message_key.as_deref()).collect();
    let values: Vec<Option<&[u8]>> = records.iter().map(|r| r.message_value.as_deref()).collect();
    let aggregate_types = col(|r| r.aggregate_type.as_deref());
    let aggregate_ids: Vec<Option<Uuid>> =
        records.iter().map(|r| r.aggregate_id.as_deref().and_then(|id| id.parse().ok())).collect();
    let versions: Vec<Option<i64>> = records.iter().map(|r| r.aggregate_version).collect();
    let event_types = col(|r| r.event_type.as_deref());
    let classes: Vec<String> = records.iter().map(|r| storable_text(&r.error_class)).collect();
    let kinds: Vec<String> = records.iter().map(|r| storable_text(&r.error_kind)).collect();
    let messages: Vec<String> = records.iter().map(|r| storable_text(&r.error_message)).collect();
    let rows = cached::query(
        tx,
        include_str!("../../sql/projection/dead_letters_insert.sql"),
        &[
            &projection,
            &topics,
            &partitions,
            &offsets,
            &keys,
            &values,
            &aggregate_types,
            &aggregate_ids,
            &versions,
            &event_types,
            &classes,
            &kinds,
            &messages,
        ],
    )
    .await?;
    Ok(rows.iter().map(|row| row.get::<_, String>(0)).collect())
}

/// Dead letters of an offset range not yet copied to the dead-letter topic.
pub(super) async fn unpublished_dead_letters(
    tx: &Transaction<'_>,
    projection: &str,
    topic: &str,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
) -> Result<Vec<DeadLetterRecord>, StoreError> {
    let rows = cached::query(
        tx,
        include_str!("../../sql/projection/dead_letters_unpublished.sql"),
        &[&projection, &topic, &partition, &first_offset, &last_offset],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| DeadLetterRecord {
            id: row.get(0),
            projection: projection.to_owned(),
            source_topic: row.get(1),
            source_partition: row.get(2),
            source_offset: row.get(3),
            message_key: row.get(4),
            message_value: row.get(5),
            aggregate_type: row.get(6),
            aggregate_id: row.get(7),
            aggregate_version: row.get(8),
            event_type: row.get(9),
            error_class: row.get(10),
            error_kind: row.get(11),
            error_message: row.get(12),
        })
        .collect())
}

/// `text` as PostgreSQL's `text` type accepts it: NUL, the one character a UTF-8 database
/// refuses, shown as `\u{0}` (so the reason still says what the message held).
pub(crate) fn storable_text(text: &str) -> String {
    text.replace('\0', "\\u{0}")
}

#[cfg(test)]
mod tests {
    use super::storable_text;

    #[test]
    fn nul_is_spelled_out_and_everything_else_kept() {
        assert_eq!(storable_text("User\0Registered"), "User\\u{0}Registered");
        assert_eq!(storable_text("plain ünïcode \u{1F600}"), "plain ünïcode \u{1F600}");
    }
}
