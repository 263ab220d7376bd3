//! Any read model's share of a batch: load the rows it needs, run the planner with the read
//! model's feeds, write the result set-based, and say what the cache should hold.
//!
//! Rows travel as JSON text. Out, the application's columns as `row_to_json` prints them:
//! printed by the engine from the values PostgreSQL returns (in binary; a float as its text;
//! [`crate::documents`]),
//! or, for a table with a column of a type the engine does not print, by PostgreSQL. In, a JSON
//! array of objects keyed by column name, which [`crate::row_sets`] splits into one text array
//! per column (any shape of row; one statement per batch and read model, or several of about a
//! mebibyte each for a larger batch: [`STATEMENT_TEXT_BYTES`]). Text, not JSON values: a folded
//! row goes from the stored text to the application's row type and back to text without a
//! `serde_json::Value` in between (see `prism_projections::fold`), and a returned row's text is
//! the cache's document as it is. The statements are generated once per table from its
//! columns, as read from PostgreSQL's catalog ([`TableShape`]):
//!
//! - a fold feed upserts the folded rows, setting every column but the key and the additive
//!   ones (other feeds own those), with [`VERSION_COLUMN`] the aggregate's applied version;
//! - a sum feed inserts its rows or adds them to the additive columns of existing ones — one
//!   row per key per batch, keys sorted so concurrent batches lock shared rows in one order;
//! - both count [`REVISION_COLUMN`] up and return the stored rows, which become the cache's
//!   documents without another read.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use prism_events::AggregateType;
use prism_postgres::cached::{self, Transaction};
use prism_projections::fold::{Fold, FoldedRow};
use prism_projections::gate::{plan_batch, ItemOutcome};
use prism_projections::{
    key_value_text, AggregateKey, FeedKind, GapPolicy, GateState, PlannedItem, ProjectionInstance, ReadModel,
    Unprojectable, REVISION_COLUMN, VERSION_COLUMN,
};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::batch::CacheEntry;
use super::Target;
use crate::documents::DocumentPrinter;
use prism_postgres::{all_or_cause, StoreError};

type Gates = HashMap<AggregateKey, GateState>;
type Written = (Vec<ItemOutcome>, Option<PendingFold>, Option<PendingSum>);

/// A sum feed's write, decided but not yet sent: [`plan_writes`] leaves it for the caller to
/// send last in the transaction ([`PendingSum::write`]). A sum's rows are shared with the
/// batches of other partitions (a user's totals fed by all of that user's orders), and the
/// row locks its write takes are held until the commit; sent last, they are held for the
/// commit alone instead of for the rest of the batch, so concurrent batches queue on each
/// other far less.
#[derive(Debug)]
pub(super) struct PendingSum {
    /// The table's statements.
    shape: Arc<TableShape>,
    /// One row per key, sorted by key (so concurrent batches lock shared rows in one order).
    documents: JsonRows,
    /// With a cache: every row an event of the batch names, duplicates included, to read back
    /// after the write (concurrent additions from other partitions are in it then).
    cache_keys: Option<Vec<Value>>,
}

impl PendingSum {
    /// Sends the write; returns the cache entries of the rows it touched (none without a
    /// cache).
    pub(super) async fn write(self, tx: &Transaction<'_>) -> Result<Vec<CacheEntry>, StoreError> {
        let mut pieces = self.documents.finish()?;
        let last = pieces.pop();
        // Every piece but the last one after the other; then the last one and the read-back
        // at once, both prepared first so they go out in this order: the rows are read back
        // after every addition.
        if let Some(add) = &self.shape.add {
            write_in_pieces(tx, &self.shape, add, pieces).await?;
        }
        let add = match (&self.shape.add, &last) {
            (Some(add), Some(_)) => Some(tx.prepare_cached(add).await?),
            _ => None,
        };
        let reload = match &self.cache_keys {
            Some(keys) if !keys.is_empty() => Some(tx.prepare_cached(&self.shape.load_by_keys).await?),
            _ => None,
        };
        let rows = last.map(|piece| self.shape.columns.params(piece)).transpose()?;
        let values = rows.as_ref().map(|rows| rows.values());
        let keys = Value::Array(self.cache_keys.unwrap_or_default());
        let send_add = async {
            if let (Some(statement), Some(values)) = (&add, &values) {
                tx.execute(statement, &values.as_params()).await?;
            }
            Ok::<_, StoreError>(())
        };
        let send_reload = async {
            match &reload {
                Some(statement) => Ok(tx.query(statement, &[&keys]).await?),
                None => Ok::<_, StoreError>(Vec::new()),
            }
        };
        let ((), stored) = futures::try_join!(send_add, send_reload)?;
        stored.iter().map(|row| Ok(self.shape.stored_row(row)?.into_cache_entry())).collect()
    }
}

/// Adds `entries` to `cache`, replacing the entries of the same rows (the last of `entries`
/// for a row wins). One pass over each: a batch's sums meet thousands of rows.
pub(super) fn merge_cache_entries(cache: &mut Vec<CacheEntry>, entries: Vec<CacheEntry>) {
    let mut at: HashMap<String, usize> = HashMap::with_capacity(entries.len());
    let mut latest: Vec<CacheEntry> = Vec::with_capacity(entries.len());
    for entry in entries {
        match at.get(&entry.id) {
            Some(&index) => latest[index] = entry,
            None => {
                at.insert(entry.id.clone(), latest.len());
                latest.push(entry);
            }
        }
    }
    cache.retain(|existing| !at.contains_key(&existing.id));
    cache.extend(latest);
}

/// The columns of one read-model table and the statements generated from them.
#[derive(Debug)]
pub struct TableShape {
    /// The columns, and how a set of rows is sent to the statements below.
    columns: crate::row_sets::TableColumns,
    /// Upsert of folded rows (parameters: [`crate::row_sets::TableColumns::params`]); for a
    /// cached read model it returns the written rows as [`StoredRow::from_db`] reads them.
    upsert: String,
    /// Plain insert of folded rows, returning them as the upsert does: for rows that cannot
    /// exist yet ([`PendingFold::assume_new`]), without the upsert's speculative insertion.
    insert: String,
    /// Insert-or-add of summed rows (parameters as the upsert's); `None` without sum feeds.
    add: Option<String>,
    /// Update of folded rows the batch read, at the places the read found them (parameters as
    /// the upsert's, then their `ctid`s), returning them as the upsert does: for a table only a
    /// fold writes, keyed by the aggregate, whose rows go as text arrays; `None` for any other.
    /// Where a fold's read found a row, its gate row is locked, so no other batch writes it
    /// until this one commits: an update in place skips the upsert's search for a conflict and
    /// its lock of the row, about 1.5 µs of PostgreSQL's CPU a row of `order_summary` (4.5
    /// against 6.0, measured by hand, rows returned as the cache takes them).
    update_located: Option<String>,
    /// Whether `update_located` returns the rows it writes (a cached read model).
    update_returns_rows: bool,
    /// The rows of a read model keyed by one column whose key is in `$1` (an array of the
    /// aggregate ids a fold feed folds), and where each is, as [`StoredRow::from_db`] reads them
    /// with `located`.
    load_by_ids: String,
    /// The rows whose key columns equal those of `$1` (a JSON array of rows holding at least the
    /// key columns), as [`StoredRow::from_db`] reads them.
    load_by_keys: String,
    /// What prints the documents of the rows these statements return; `None` where
    /// PostgreSQL prints them (`row_to_json`), for a table with a column of a type the engine
    /// does not print.
    printer: Option<DocumentPrinter>,
}

impl TableShape {
    /// A row of one of the statements above but `load_by_ids`, as stored.
    fn stored_row(&self, row: &tokio_postgres::Row) -> Result<StoredRow, StoreError> {
        StoredRow::from_db(row, self.printer.as_ref(), false)
    }

    /// A row of `load_by_ids`: as stored, and where it is.
    fn located_row(&self, row: &tokio_postgres::Row) -> Result<StoredRow, StoreError> {
        StoredRow::from_db(row, self.printer.as_ref(), true)
    }
}

/// Table shapes by (schema, table).
type ShapesByTable = HashMap<(String, String), Arc<TableShape>>;

/// Generated statements per (schema, table): a table's columns do not change while it lives
/// (a new generation is a new table).
fn shapes() -> &'static Mutex<ShapesByTable> {
    static SHAPES: std::sync::OnceLock<Mutex<ShapesByTable>> = std::sync::OnceLock::new();
    SHAPES.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The shape of `instance`'s table, read from the catalog the first time.
async fn shape(
    tx: &Transaction<'_>,
    schema: &str,
    model: &ReadModel,
    instance: ProjectionInstance,
) -> Result<Arc<TableShape>, StoreError> {
    let cache_key = (schema.to_owned(), instance.id());
    if let Some(shape) = shapes().lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
        return Ok(shape.clone());
    }
    let rows = tx.query(crate::row_sets::COLUMNS_SQL, &[&instance.id()]).await?;
    let Some(table_columns) = crate::row_sets::TableColumns::from_rows(&rows) else {
        return Err(StoreError::Corrupt {
            what: "read-model table",
            detail: format!(
                "{} does not exist: run the projector's table setup (prismctl migrate) first",
                instance.id()
            ),
        });
    };
    let columns = table_columns.names();
    let key = model.key_columns();
    let additive = model.additive_columns();
    for column in key.iter().chain(additive.iter()).chain([VERSION_COLUMN, REVISION_COLUMN].iter()) {
        if !columns.iter().any(|c| c == column) {
            return Err(StoreError::Corrupt {
                what: "read-model table",
                detail: format!(
                    "{} has no column `{column}` the read model {} names",
                    instance.id(),
                    model.name()
                ),
            });
        }
    }
    if columns.iter().any(|c| c == DOCUMENT_ALIAS) {
        return Err(StoreError::Corrupt {
            what: "read-model table",
            detail: format!(
                "{} has a column `{DOCUMENT_ALIAS}`, a name the engine reserves: rename it",
                instance.id()
            ),
        });
    }
    let table = instance.id();
    let conflict = key.join(", ");
    let owned: Vec<&String> = columns
        .iter()
        .filter(|c| {
            !key.contains(&c.as_str()) && !additive.contains(&c.as_str()) && c.as_str() != REVISION_COLUMN
        })
        .collect();
    let mut sets: Vec<String> = owned.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect();
    sets.push(format!("{REVISION_COLUMN} = t.{REVISION_COLUMN} + 1"));
    // The written rows come back only for a cached read model: their revisions are the
    // cache's compare-and-set.
    let insert = format!(
        "{} ON CONFLICT ({conflict}) DO UPDATE SET {}",
        table_columns.insert(&table),
        sets.join(", ")
    );
    let application: Vec<&str> = columns
        .iter()
        .map(String::as_str)
        .filter(|c| *c != VERSION_COLUMN && *c != REVISION_COLUMN)
        .collect();
    let oids: Option<Vec<u32>> = application.iter().map(|c| table_columns.type_oid(c)).collect();
    let printer = oids.and_then(|oids| DocumentPrinter::for_columns(&application, &oids));
    let stored = stored_columns(key, &application, printer.as_ref(), false);
    let located = stored_columns(key, &application, printer.as_ref(), true);
    let plain_insert = table_columns.insert(&table);
    let revision_step = format!("{REVISION_COLUMN} = t.{REVISION_COLUMN} + 1");
    let update_located = match key {
        [aggregate] if additive.is_empty() => {
            table_columns.update_located(&table, aggregate, &[REVISION_COLUMN], &revision_step)
        }
        _ => None,
    };
    let (upsert, insert, update_located) = if model.cache_kind().is_some() {
        // Returned as the statement writes them, not through a CTE of whole rows read again:
        // about 1.5 µs a row of `order_summary` less.
        (
            format!("{insert} RETURNING {stored}"),
            format!("{plain_insert} RETURNING {stored}"),
            update_located.map(|update| format!("{update} RETURNING {stored}")),
        )
    } else {
        (insert, plain_insert, update_located)
    };
    let load_by_ids = format!("SELECT {located} FROM {table} t WHERE t.{} = ANY($1)", key[0]);
    // One index lookup per key whatever the planner believes about the table's size: a
    // lateral subquery kept apart by `OFFSET 0` cannot become a join, which the plan cached
    // while the table was small would have made a scan of every row (see gate_lock.sql).
    let matches: Vec<String> = key.iter().map(|c| format!("t.{c} = k.{c}")).collect();
    let load_by_keys = format!(
        "SELECT {stored} FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb) AS k \
         CROSS JOIN LATERAL (SELECT * FROM {table} t WHERE {} OFFSET 0) AS t",
        matches.join(" AND ")
    );
    let add = (!additive.is_empty()).then(|| {
        let mut adds: Vec<String> = additive.iter().map(|c| format!("{c} = t.{c} + EXCLUDED.{c}")).collect();
        adds.push(format!("{REVISION_COLUMN} = t.{REVISION_COLUMN} + 1"));
        format!("{} ON CONFLICT ({conflict}) DO UPDATE SET {}", table_columns.insert(&table), adds.join(", "))
    });
    let shape = Arc::new(TableShape {
        columns: table_columns,
        upsert,
        insert,
        add,
        update_located,
        update_returns_rows: model.cache_kind().is_some(),
        load_by_ids,
        load_by_keys,
        printer,
    });
    shapes().lock().unwrap_or_else(|p| p.into_inner()).insert(cache_key, shape.clone());
    Ok(shape)
}

/// A stored row split into the application's columns and the engine's bookkeeping.
#[derive(Debug, Clone)]
struct StoredRow {
    /// The key's text ([`key_text`]'s rule).
    key: String,
    /// [`VERSION_COLUMN`].
    version: i64,
    /// [`REVISION_COLUMN`].
    revision: i64,
    /// Where the row was when it was read (its `ctid`'s text), for a row read by
    /// `load_by_ids`.
    row_id: Option<String>,
    /// The application's columns as a JSON object (PostgreSQL's text of it).
    document: String,
}

impl StoredRow {
    /// A row of a statement selecting [`stored_columns`] (`located` as given to it): its
    /// document printed by `printer` from the columns' values, or, without one, as PostgreSQL
    /// printed it.
    fn from_db(
        row: &tokio_postgres::Row,
        printer: Option<&DocumentPrinter>,
        located: bool,
    ) -> Result<Self, StoreError> {
        let corrupt =
            |e: tokio_postgres::Error| StoreError::Corrupt { what: "read-model row", detail: e.to_string() };
        let row_id: Option<String> = if located { Some(row.try_get(3).map_err(corrupt)?) } else { None };
        let first = 3 + usize::from(located);
        Ok(Self {
            key: key_text_of(row.try_get(0).map_err(corrupt)?)?,
            version: row.try_get(1).map_err(corrupt)?,
            revision: row.try_get(2).map_err(corrupt)?,
            row_id,
            document: match printer {
                Some(printer) => printer.print(row, first)?,
                None => row.try_get(first).map_err(corrupt)?,
            },
        })
    }

    /// The row as the cache holds it (moved, not copied: a large batch's documents are
    /// megabytes).
    fn into_cache_entry(self) -> CacheEntry {
        CacheEntry { id: self.key, revision: self.revision, version: self.version, document: self.document }
    }
}

/// The alias of the subselect whose `row_to_json` is a stored row's document.
const DOCUMENT_ALIAS: &str = "prism_document";

/// The select list that reads a row of table alias `t` as [`StoredRow::from_db`] takes it: the
/// key columns as a JSON array, version, revision, with `located` where the row is (its
/// `ctid`'s text), then the `application` columns: as `printer`
/// takes them where the engine prints the document (see [`crate::documents`]), else as a JSON
/// object PostgreSQL prints.
///
/// The key comes as JSON, not as text, so that [`key_text`]'s rule names the row (a number as
/// JSON reads it: `1.50` is `1.5`, as the query service has it).
///
/// Printed by PostgreSQL, `json`, not `jsonb`: `row_to_json` of a subselect of the columns
/// writes the text straight from the row, where `to_jsonb(t) - 'prism_version' -
/// 'prism_revision'` built a `jsonb` value, copied it twice and printed it: about 14 µs a row
/// of `order_summary` against 6. The values' text is the same (`json` and `jsonb` print
/// timestamps, numbers and nested `jsonb` alike); the object keeps the table's column order
/// and no spaces, which no reader of a document depends on.
fn stored_columns(
    key: &[&str],
    application: &[&str],
    printer: Option<&DocumentPrinter>,
    located: bool,
) -> String {
    // Quoted, so the object's keys are the columns' names exactly as the catalog has them. A
    // column named like the subselect's alias would be read in its place ([`shape`] refuses
    // such a table).
    let quoted = |c: &&str| format!("t.{}", crate::row_sets::quote_identifier(c));
    let key: Vec<String> = key.iter().map(quoted).collect();
    let columns: Vec<String> = application.iter().map(quoted).collect();
    let bookkeeping = format!(
        "json_build_array({})::text, t.{VERSION_COLUMN}, t.{REVISION_COLUMN}{}",
        key.join(", "),
        if located { ", t.ctid::text" } else { "" }
    );
    if let Some(printer) = printer {
        let columns: Vec<String> =
            columns.iter().enumerate().map(|(index, column)| printer.selected(index, column)).collect();
        return format!("{bookkeeping}, {}", columns.join(", "));
    }
    format!(
        "{bookkeeping}, (SELECT row_to_json({DOCUMENT_ALIAS}) FROM (SELECT {}) AS {DOCUMENT_ALIAS})::text",
        columns.join(", ")
    )
}

/// [`key_text`] of a row's key columns given as a JSON array of their values.
fn key_text_of(values: &str) -> Result<String, StoreError> {
    let values: Vec<Value> = serde_json::from_str(values).map_err(|e| StoreError::Corrupt {
        what: "read-model row",
        detail: format!("its key {values}: {e}"),
    })?;
    Ok(values.iter().map(key_value_text).collect::<Vec<_>>().join("/"))
}

/// How much row text one statement carries, about: a larger set of rows goes as several
/// statements of this size, one after another in the same transaction. A statement's rows are
/// held three or four times over while it is sent — the text, the column arrays split from it,
/// the encoded message, the connection's buffer (which keeps its largest size for the
/// connection's life) — so a replay chunk of 40 000 shop events sent as one statement per read
/// model held about 56 MB of statements at once; in pieces of this size a statement's cost no
/// longer grows with the chunk. A live batch's rows mostly fit in one piece.
const STATEMENT_TEXT_BYTES: usize = 1 << 20;

/// Rows written as JSON arrays of objects, each with the engine's bookkeeping for a row that is
/// inserted (on conflict the statements keep or count up the stored values): one array per
/// statement, of about [`STATEMENT_TEXT_BYTES`] each, the rows in the order pushed.
#[derive(Debug)]
struct JsonRows {
    /// The arrays, each `[` and rows separated by commas, closed by [`JsonRows::finish`].
    pieces: Vec<Vec<u8>>,
    /// Rows in all of them.
    count: usize,
    /// Where a piece is full.
    piece_bytes: usize,
}

impl Default for JsonRows {
    fn default() -> Self {
        Self::with_piece_bytes(STATEMENT_TEXT_BYTES)
    }
}

impl JsonRows {
    /// No rows, in pieces of about `piece_bytes`.
    fn with_piece_bytes(piece_bytes: usize) -> Self {
        Self { pieces: Vec::new(), count: 0, piece_bytes }
    }

    /// Appends the row `write` writes (a JSON object) with `version` and a first revision.
    fn push(
        &mut self,
        version: i64,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), Unprojectable>,
    ) -> Result<(), StoreError> {
        let text = match self.pieces.last_mut() {
            Some(text) if text.len() < self.piece_bytes => {
                text.push(b',');
                text
            }
            _ => {
                self.pieces.push(vec![b'[']);
                self.pieces.last_mut().expect("a piece was just added")
            }
        };
        let start = text.len();
        write(text).map_err(|e| StoreError::Corrupt { what: "read-model row", detail: e.0 })?;
        let object = &text[start..];
        if object.len() < 2 || object[0] != b'{' || object[object.len() - 1] != b'}' {
            return Err(StoreError::Corrupt {
                what: "read-model row",
                detail: format!("a row is not a JSON object: {}", String::from_utf8_lossy(object)),
            });
        }
        let empty = object.len() == 2;
        text.pop();
        if !empty {
            text.push(b',');
        }
        text.extend_from_slice(
            format!("\"{VERSION_COLUMN}\":{version},\"{REVISION_COLUMN}\":1}}").as_bytes(),
        );
        self.count += 1;
        Ok(())
    }

    /// Appends `other`'s rows (its pieces after these).
    fn append(&mut self, other: JsonRows) {
        self.pieces.extend(other.pieces);
        self.count += other.count;
    }

    /// The arrays' texts, one per statement, in order; none without rows.
    fn finish(self) -> Result<Vec<String>, StoreError> {
        self.pieces
            .into_iter()
            .map(|mut text| {
                text.push(b']');
                String::from_utf8(text).map_err(|e| StoreError::Corrupt {
                    what: "read-model row",
                    detail: format!("not UTF-8: {e}"),
                })
            })
            .collect()
    }
}

/// The text of a row's key (one column: its value; several: the values joined by `/`), as
/// the cache and the oracle name rows.
pub fn key_text(row: &Value, key: &[&str]) -> String {
    key.iter()
        .map(|column| row.get(*column).map(key_value_text).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// What one event does to the instance, worked out before anything is kept: a fold result
/// and sum rows, or why the event cannot apply.
struct EventEffect {
    folded: Option<FoldedRow>,
    sums: Vec<Value>,
}

/// What a batch's planning starts from: the gate rows of its aggregates, locked, and the
/// current rows of the aggregates a fold feed folds.
pub(super) struct Loaded {
    /// The gate state of every aggregate of the batch, as locked.
    pub(super) gates: Gates,
    /// Where the locked gate rows are (see `gate::GateRows`).
    pub(super) gate_rows: super::gate::GateRows,
    shape: Arc<TableShape>,
    rows: HashMap<Uuid, StoredRow>,
}

/// The feeds of `target` from `source`: its fold, and its sum's additive columns and rows.
fn feeds_from<'m>(
    target: &Target<'m>,
    source: Option<AggregateType>,
) -> (Option<Fold>, Option<(Vec<&'static str>, prism_projections::read_model::SumFn)>) {
    let feeds: Vec<&FeedKind> =
        target.model.feeds().iter().filter(|f| Some(f.source) == source).map(|f| &f.kind).collect();
    let fold = feeds.iter().find_map(|k| match k {
        FeedKind::Fold(f) => Some(f.clone()),
        FeedKind::Sum { .. } => None,
    });
    let sum = feeds.iter().find_map(|k| match k {
        FeedKind::Sum { columns, rows } => Some((columns.clone(), rows.clone())),
        FeedKind::Fold(_) => None,
    });
    (fold, sum)
}

/// Locks the existing gate rows of `keys` and reads the rows the batch's fold starts from (see
/// [`LoadStatements`]).
pub(super) async fn lock_and_load(
    tx: &Transaction<'_>,
    schema: &str,
    target: &Target<'_>,
    source: Option<AggregateType>,
    keys: &BTreeSet<AggregateKey>,
    items: &[PlannedItem<'_>],
) -> Result<Loaded, StoreError> {
    LoadStatements::prepare(tx, schema, target, source, items)
        .await?
        .send(tx, keys, super::GateRead::LockExisting)
        .await
}

/// What a batch's planning needs from one instance, prepared: the gate lock and the read of the
/// rows the fold starts from. Prepared first and sent apart ([`LoadStatements::send`]), so a
/// batch feeding several instances sends every instance's statements at once, in target order,
/// once nothing is left to prepare: one round trip, and the gate rows locked in that fixed order.
pub(super) struct LoadStatements {
    projection_id: String,
    shape: Arc<TableShape>,
    gate_lock: super::gate::GateLock,
    /// The read of the fold's rows and the aggregate ids it reads; `None` without a fold feed.
    load: Option<(tokio_postgres::Statement, Vec<Uuid>)>,
}

impl LoadStatements {
    /// Prepares them (a connection's first batch reads the table's shape and prepares the
    /// statements; later ones find them cached).
    pub(super) async fn prepare(
        tx: &Transaction<'_>,
        schema: &str,
        target: &Target<'_>,
        source: Option<AggregateType>,
        items: &[PlannedItem<'_>],
    ) -> Result<Self, StoreError> {
        let instance = target.instance;
        let shape = shape(tx, schema, target.model, instance).await?;
        let (fold, _) = feeds_from(target, source);
        let gate_lock = super::gate::GateLock::prepare(tx).await?;
        let ids: Vec<Uuid> = if fold.is_some() { event_ids(items) } else { Vec::new() };
        let load =
            if ids.is_empty() { None } else { Some((tx.prepare_cached(&shape.load_by_ids).await?, ids)) };
        Ok(Self { projection_id: instance.id(), shape, gate_lock, load })
    }

    /// Sends them at once (pipelined): lock the gate rows, read the view rows. The view rows
    /// belong to the aggregates whose gate rows come first in the same transaction, so reading
    /// them after sending the lock (not after its answer) reads what the lock protects. An
    /// aggregate without a gate row is new: a view row of it committed meanwhile by a concurrent
    /// batch comes with a gate row that fails this batch's insert of one (see `gate::advance`).
    /// Both go out on the first poll.
    pub(super) async fn send(
        self,
        tx: &Transaction<'_>,
        keys: &BTreeSet<AggregateKey>,
        gate_read: super::GateRead,
    ) -> Result<Loaded, StoreError> {
        let read_rows = async {
            match &self.load {
                Some((statement, ids)) => Ok(tx.query(statement, &[ids]).await?),
                None => Ok::<_, StoreError>(Vec::new()),
            }
        };
        let gates = async {
            match gate_read {
                super::GateRead::LockExisting => self.gate_lock.lock(tx, &self.projection_id, keys).await,
                super::GateRead::AssumeNew => self.gate_lock.lock_table(tx).await,
            }
        };
        let (gates, stored) = futures::try_join!(gates, read_rows)?;
        let mut rows: HashMap<Uuid, StoredRow> = HashMap::with_capacity(stored.len());
        for row in &stored {
            let stored = self.shape.located_row(row)?;
            if let Ok(id) = stored.key.parse() {
                rows.insert(id, stored);
            }
        }
        let (gates, gate_rows) = gates;
        Ok(Loaded { gates, gate_rows, shape: self.shape, rows })
    }
}

/// A fold feed's write, decided but not yet sent ([`PendingFold::write`]), so the caller can
/// send it together with the gate's advance and the dead letters.
///
/// Where the table has no sum feed, a row keyed by an aggregate is written by that aggregate's
/// fold alone. There, rows the batch's read found are updated where the read found them (see
/// [`TableShape`]'s `update_located`): nothing else writes them while the batch holds their
/// aggregates' gate rows, and a row that moved all the same is not updated, which fails the
/// batch as [`StoreError::Contended`]. Rows the read did not find are inserted plainly: an
/// upsert of a row that does not exist looks for it once more and writes it twice to the WAL
/// (the speculative tuple, then its confirmation). Such a row can appear meanwhile only
/// through a concurrent batch of the same aggregate, whose gate row fails this batch anyway;
/// its key fails the insert first, and either way the batch is retried as
/// [`StoreError::Contended`]. In a table with a sum feed (or whose rows go as JSON), rows the
/// read found are upserted.
#[derive(Debug)]
pub(super) struct PendingFold {
    /// The table's statements.
    shape: Arc<TableShape>,
    /// The folded rows to upsert, with bookkeeping.
    documents: JsonRows,
    /// The folded rows to insert plainly, with bookkeeping.
    new_documents: JsonRows,
    /// The folded rows to update where the read found them, with bookkeeping.
    located_documents: JsonRows,
    /// Where each of `located_documents` is (its `ctid`'s text), in the same order.
    row_ids: Vec<String>,
    /// The rows as loaded, replaced by the written ones once written.
    rows: HashMap<Uuid, StoredRow>,
    /// With a cache: every aggregate of the batch, duplicates included.
    cache_ids: Option<Vec<Uuid>>,
}

impl PendingFold {
    /// For a batch that takes its aggregates as new ([`super::GateRead::AssumeNew`]): when the
    /// read of the fold's rows found none, every row is inserted plainly, in a table other
    /// feeds write too. A row committed since by another transaction (a sum of another topic
    /// that creates the same row) fails the insert on its key, which becomes
    /// [`StoreError::Contended`]: the batch is landed again, with its gate rows looked up and
    /// its rows upserted.
    pub(super) fn assume_new(&mut self) {
        // With no row found, none is to be updated where it was found either.
        if self.rows.is_empty() {
            let documents = std::mem::take(&mut self.documents);
            self.new_documents.append(documents);
        }
    }

    /// Sends the upsert, the insert and the update; returns the cache entries of every
    /// aggregate of the batch (none without a cache).
    pub(super) async fn write(mut self, tx: &Transaction<'_>) -> Result<Vec<CacheEntry>, StoreError> {
        let shape = self.shape.clone();
        let upserts = std::mem::take(&mut self.documents).finish()?;
        let (count, inserts) = (self.new_documents.count, std::mem::take(&mut self.new_documents).finish()?);
        let updates = std::mem::take(&mut self.located_documents).finish()?;
        let row_ids = std::mem::take(&mut self.row_ids);
        let upsert = write_in_pieces(tx, &shape, &shape.upsert, upserts);
        let update = update_in_pieces(tx, &shape, updates, row_ids);
        let insert = async {
            match write_in_pieces(tx, &shape, &shape.insert, inserts).await {
                Err(error) if error.is_unique_violation() => Err(StoreError::Contended {
                    what: "read-model row",
                    detail: format!(
                        "a row of the {count} rows this batch found absent was written by another transaction since ({error})"
                    ),
                }),
                written => written,
            }
        };
        // Every result waited for: the one that failed first is the cause ([`all_or_cause`]).
        let (upserted, inserted, updated) = futures::join!(upsert, insert, update);
        for written in all_or_cause([upserted, inserted, updated])? {
            for stored in written {
                if let Ok(id) = stored.key.parse() {
                    self.rows.insert(id, stored);
                }
            }
        }
        let mut cache = Vec::new();
        // Every aggregate of the batch, duplicates included: after a worker died between its
        // commit and its cache write, the redelivered batch is all duplicates, and this is how
        // the cache still catches up. The ids are distinct ([`event_ids`]): each row is taken
        // once.
        for id in self.cache_ids.iter().flatten() {
            if let Some(stored) = self.rows.remove(id) {
                cache.push(stored.into_cache_entry());
            }
        }
        Ok(cache)
    }
}

/// Sends `pieces` ([`JsonRows::finish`]) to `statement` (an insert of their table's
/// [`TableShape`]), one at a time and in order, and returns the rows it returns. A piece's
/// parameters are made just before it is sent and dropped once it is answered, so what a
/// statement holds is one piece's worth.
async fn write_in_pieces(
    tx: &Transaction<'_>,
    shape: &TableShape,
    statement: &str,
    pieces: Vec<String>,
) -> Result<Vec<StoredRow>, StoreError> {
    let mut stored = Vec::new();
    for piece in pieces {
        let params = shape.columns.params(piece)?;
        for row in cached::query(tx, statement, &params.values().as_params()).await? {
            stored.push(shape.stored_row(&row)?);
        }
    }
    Ok(stored)
}

/// Sends `pieces` of rows to their table's `update_located` with `row_ids`, where each row of
/// them is, one piece at a time (as [`write_in_pieces`]); returns the rows it returns. Every
/// row must be updated: one that is not had moved since it was read, and the batch is
/// [`StoreError::Contended`].
async fn update_in_pieces(
    tx: &Transaction<'_>,
    shape: &TableShape,
    pieces: Vec<String>,
    row_ids: Vec<String>,
) -> Result<Vec<StoredRow>, StoreError> {
    let mut stored = Vec::new();
    if pieces.is_empty() {
        return Ok(stored);
    }
    let Some(statement) = &shape.update_located else {
        return Err(StoreError::Corrupt {
            what: "read-model row",
            detail: "rows to update where they were read, in a table written otherwise".to_owned(),
        });
    };
    let mut row_ids = row_ids.iter().map(String::as_str);
    for piece in pieces {
        let params = shape.columns.params(piece)?;
        let Some(rows) = params.rows() else {
            return Err(StoreError::Corrupt {
                what: "read-model row",
                detail: "rows to update where they were read, sent as JSON".to_owned(),
            });
        };
        let ids: Vec<&str> = row_ids.by_ref().take(rows).collect();
        if ids.len() != rows {
            return Err(StoreError::Corrupt {
                what: "read-model row",
                detail: format!("{rows} rows to update where they were read, {} places", ids.len()),
            });
        }
        let values = params.values();
        let mut arguments = values.as_params();
        arguments.push(&ids);
        let updated = if shape.update_returns_rows {
            let returned = cached::query(tx, statement, &arguments).await?;
            for row in &returned {
                stored.push(shape.stored_row(row)?);
            }
            returned.len()
        } else {
            cached::execute(tx, statement, &arguments).await? as usize
        };
        if updated != rows {
            return Err(StoreError::Contended {
                what: "read-model row",
                detail: format!(
                    "{} of the {rows} rows this batch read had moved when it updated them: another transaction wrote them since",
                    rows - updated
                ),
            });
        }
    }
    Ok(stored)
}

/// Runs the planner over the batch with `target`'s feeds from `source`, starting from
/// `loaded`, and decides the writes (sent by [`PendingFold::write`] and [`PendingSum::write`]).
/// `loaded.gates` ends as the gate state after the batch.
pub(super) fn plan_writes(
    target: &Target<'_>,
    source: Option<AggregateType>,
    items: &[PlannedItem<'_>],
    loaded: &mut Loaded,
    policy: GapPolicy,
) -> Result<Written, StoreError> {
    let model = target.model;
    let key = model.key_columns();
    let (fold, sum) = feeds_from(target, source);
    let rows = std::mem::take(&mut loaded.rows);
    let gates = &mut loaded.gates;
    let shape = loaded.shape.clone();
    let ids: Vec<Uuid> = event_ids(items);
    let mut folded: BTreeMap<Uuid, (FoldedRow, i64)> = BTreeMap::new();
    let mut summed: BTreeMap<String, Value> = BTreeMap::new();
    let mut sum_keys_touched: BTreeMap<String, Value> = BTreeMap::new();

    let outcomes = plan_batch(items, gates, policy, |event| {
        let id = event.meta.aggregate_id;
        let mut effect = EventEffect { folded: None, sums: Vec::new() };
        if let Some(fold) = &fold {
            let next = match folded.get(&id) {
                Some((current, _)) => fold.fold_next(current, event)?,
                None => fold.fold_stored(rows.get(&id).map(|stored| stored.document.as_str()), event)?,
            };
            let next_key = fold.column_text(&next, key[0])?.and_then(|s| s.parse::<Uuid>().ok());
            if next_key != Some(id) {
                return Err(Unprojectable::new(format!(
                    "the fold of {} returned a row whose {} is not the aggregate's id {id}",
                    model.name(),
                    key[0]
                )));
            }
            effect.folded = Some(next);
        }
        if let Some((columns, rows_of)) = &sum {
            for row in rows_of(event)? {
                check_sum_row(&row, key, columns, model.name())?;
                effect.sums.push(row);
            }
        }
        // Keep what the event did only now that all of it worked.
        if let Some(next) = effect.folded {
            let version = i64::try_from(event.meta.aggregate_version).unwrap_or(i64::MAX);
            folded.insert(id, (next, version));
        }
        if let Some((columns, _)) = &sum {
            for row in effect.sums {
                let row_key = key_text(&row, key);
                match summed.get_mut(&row_key) {
                    Some(total) => add_into(total, &row, columns),
                    None => {
                        summed.insert(row_key, row);
                    }
                }
            }
        }
        Ok(())
    });

    let cached = model.cache_kind().is_some();
    // Without a sum feed an aggregate's row is written by its fold alone: one the read did not
    // find is new.
    let fold_only = shape.add.is_none();
    let (mut documents, mut new_documents, mut located_documents) =
        (JsonRows::default(), JsonRows::default(), JsonRows::default());
    let mut row_ids = Vec::new();
    if let Some(fold) = &fold {
        for (id, (row, version)) in &folded {
            let rows_of = match rows.get(id) {
                None if fold_only => &mut new_documents,
                Some(StoredRow { row_id: Some(row_id), .. })
                    if fold_only && shape.update_located.is_some() =>
                {
                    row_ids.push(row_id.clone());
                    &mut located_documents
                }
                _ => &mut documents,
            };
            rows_of.push(*version, |out| fold.write_json(row, out))?;
        }
    }
    let pending_fold = fold.is_some().then(|| PendingFold {
        shape: shape.clone(),
        documents,
        new_documents,
        located_documents,
        row_ids,
        rows,
        cache_ids: cached.then_some(ids),
    });

    let mut pending = None;
    if let (Some((_, rows_of)), Some(_)) = (&sum, &shape.add) {
        let mut documents = JsonRows::default();
        for row in std::mem::take(&mut summed).into_values() {
            documents.push(0, |out| {
                serde_json::to_writer(out, &row).map_err(|e| Unprojectable::new(e.to_string()))
            })?;
        }
        let cache_keys = cached.then(|| {
            // Every row an event of the batch names, duplicates included (see above).
            for item in items {
                if let PlannedItem::Event(event) = item {
                    for row in rows_of(event).unwrap_or_default() {
                        sum_keys_touched.insert(key_text(&row, key), key_only(&row, key));
                    }
                }
            }
            std::mem::take(&mut sum_keys_touched).into_values().collect()
        });
        pending = Some(PendingSum { shape: shape.clone(), documents, cache_keys });
    }
    Ok((outcomes, pending_fold, pending))
}

/// Aggregate ids of the batch's events, sorted.
fn event_ids(items: &[PlannedItem<'_>]) -> Vec<Uuid> {
    let ids: BTreeSet<Uuid> = items
        .iter()
        .filter_map(|item| match item {
            PlannedItem::Event(e) => Some(e.meta.aggregate_id),
            PlannedItem::Poison { .. } => None,
        })
        .collect();
    ids.into_iter().collect()
}

fn key_only(row: &Value, key: &[&str]) -> Value {
    let map: Map<String, Value> =
        key.iter().filter_map(|c| row.get(*c).map(|v| ((*c).to_owned(), v.clone()))).collect();
    Value::Object(map)
}

/// A sum feed's row must name its key and carry numbers in every additive column.
fn check_sum_row(row: &Value, key: &[&str], columns: &[&str], model: &str) -> Result<(), Unprojectable> {
    let Some(map) = row.as_object() else {
        return Err(Unprojectable::new(format!("a {model} row is not an object")));
    };
    for column in key {
        if map.get(*column).is_none_or(Value::is_null) {
            return Err(Unprojectable::new(format!("a {model} row has no key column `{column}`")));
        }
    }
    for column in columns {
        if !map.get(*column).is_some_and(Value::is_number) {
            return Err(Unprojectable::new(format!(
                "a {model} row's additive column `{column}` is not a number"
            )));
        }
    }
    Ok(())
}

/// Adds `row`'s additive columns into `total` (integers stay integers).
fn add_into(total: &mut Value, row: &Value, columns: &[&str]) {
    for column in columns {
        let added = match (total.get(*column), row.get(*column)) {
            (Some(a), Some(b)) => match (a.as_i64(), b.as_i64()) {
                (Some(a), Some(b)) => Value::from(a.saturating_add(b)),
                _ => Value::from(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
            },
            _ => continue,
        };
        if let Some(map) = total.as_object_mut() {
            map.insert((*column).to_owned(), added);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merged_cache_entries_replace_those_of_the_same_rows_and_the_last_wins() {
        let entry = |id: &str, revision: i64| CacheEntry {
            id: id.to_owned(),
            revision,
            version: 0,
            document: format!("{{\"r\":{revision}}}"),
        };
        let mut cache = vec![entry("a", 1), entry("b", 1), entry("c", 1)];
        merge_cache_entries(&mut cache, vec![entry("b", 2), entry("d", 1), entry("b", 3)]);
        let merged: Vec<(&str, i64)> = cache.iter().map(|e| (e.id.as_str(), e.revision)).collect();
        assert_eq!(merged, vec![("a", 1), ("c", 1), ("b", 3), ("d", 1)]);
    }

    #[test]
    fn sums_keep_integers_and_keys_read_as_text() {
        let mut total = json!({"product_id": "p", "day": "2026-11-23", "units": 2, "revenue": 1.5});
        add_into(&mut total, &json!({"units": 3, "revenue": 0.25}), &["units", "revenue"]);
        assert_eq!(total["units"], json!(5));
        assert_eq!(total["revenue"], json!(1.75));
        assert_eq!(key_text(&total, &["product_id", "day"]), "p/2026-11-23");
        // Keys read back from PostgreSQL are named by the same rule.
        assert_eq!(key_text_of(r#"["p", "2026-11-23"]"#).expect("a key"), "p/2026-11-23");
        assert_eq!(key_text_of("[1.50]").expect("a key"), "1.5");
        assert_eq!(
            key_text_of(r#"["9b2f2f0e-8c1e-4a36-9a53-1c6f0f7b2a10"]"#).expect("a key"),
            "9b2f2f0e-8c1e-4a36-9a53-1c6f0f7b2a10"
        );
        assert!(key_text_of("not json").is_err());
    }

    #[test]
    fn rows_are_written_as_arrays_with_bookkeeping() {
        let mut rows = JsonRows::default();
        rows.push(3, |out| {
            out.extend_from_slice(br#"{"a":1}"#);
            Ok(())
        })
        .expect("an object");
        rows.push(0, |out| {
            out.extend_from_slice(b"{}");
            Ok(())
        })
        .expect("an object");
        let pieces = rows.finish().expect("rows");
        assert_eq!(pieces.len(), 1, "two small rows make one statement: {pieces:?}");
        let written: Value = serde_json::from_str(&pieces[0]).expect("the rows are one JSON array");
        assert_eq!(
            written,
            json!([
                {"a": 1, "prism_version": 3, "prism_revision": 1},
                {"prism_version": 0, "prism_revision": 1}
            ])
        );
        assert!(JsonRows::default().finish().expect("no rows").is_empty());
        let mut rows = JsonRows::default();
        assert!(rows
            .push(1, |out| {
                out.extend_from_slice(b"[1]");
                Ok(())
            })
            .is_err());
    }

    #[test]
    fn rows_beyond_a_pieces_size_go_to_the_next_piece_in_order() {
        // Each row is about 45 bytes: a piece of 100 bytes closes after its third row.
        let mut rows = JsonRows::with_piece_bytes(100);
        for n in 0..10 {
            rows.push(n, |out| {
                out.extend_from_slice(format!(r#"{{"n":{n}}}"#).as_bytes());
                Ok(())
            })
            .expect("an object");
        }
        let mut other = JsonRows::with_piece_bytes(100);
        other
            .push(10, |out| {
                out.extend_from_slice(br#"{"n":10}"#);
                Ok(())
            })
            .expect("an object");
        rows.append(other);
        assert_eq!(rows.count, 11);
        let pieces = rows.finish().expect("rows");
        let sizes: Vec<usize> = pieces
            .iter()
            .map(|piece| serde_json::from_str::<Vec<Value>>(piece).expect("each piece is a JSON array").len())
            .collect();
        assert_eq!(sizes, vec![3, 3, 3, 1, 1], "pieces of {pieces:?}");
        let numbers: Vec<i64> = pieces
            .iter()
            .flat_map(|piece| serde_json::from_str::<Vec<Value>>(piece).expect("an array"))
            .map(|row| row["n"].as_i64().expect("n"))
            .collect();
        assert_eq!(numbers, (0..=10).collect::<Vec<i64>>(), "every row once, in the order pushed");
    }
}
