//! The set-write ceiling: what PostgreSQL can do when it is handed, per batch, the final rows
//! the read models must hold, with nothing else to do.
//!
//! **Outside the timed window** the benchmark runs the shop's read models' own feeds
//! (`shop_model::read_models::all()`, the same fold and sum functions Prism runs) over the
//! events in memory, in their global order, and records for every event the *complete row*
//! each read model holds after it, bookkeeping included — exactly the row Prism's table ends up
//! with once that event is applied:
//!
//! - a fold feed's row: the fold of the aggregate's previous row and the event, its additive
//!   columns (owned by sum feeds) carried over, `prism_version` the event's version;
//! - a sum feed's rows: the previous row with the event's amounts added (or the event's row if
//!   there was none), `prism_version` 0 for rows no fold feeds;
//! - `prism_revision` counting the row's changes.
//!
//! The rows go to a file, one line per (event, row): `event id, read model, key, row JSON`.
//!
//! **In the timed window** the `ceiling` child consumes the same topics under its own group,
//! takes each message's event id from its value, looks up that event's rows, keeps the last row
//! per key of each read model within the batch, and writes each read model's rows with **one**
//! statement per batch, its rows sent as Prism sends them (`prism_read_store::row_sets`: one
//! text array per column) —
//! `INSERT INTO ceiling_<read model> AS t (<columns>) SELECT u.c0::<type>, … FROM unnest($1::text[], …) AS u(c0, …)
//! ON CONFLICT (<key>) DO UPDATE SET <every other column> = EXCLUDED.<column>` — all of a
//! batch's statements in one transaction, then marks the batch's offsets for commit. Batches
//! hold up to Prism's default `projector.batch_max_events` messages (read from the default
//! configuration, so the two cannot drift apart), taken from what has arrived without
//! waiting; partitions are spread over `PRISM_BENCH_CEILING_WRITERS` writers (default 4), each
//! with its own connection, rows sorted by key so concurrent writers lock shared rows in one
//! order. Offsets are committed every 100 ms.
//!
//! It reads no rows, checks no versions, computes nothing, writes no gate rows, no cache and
//! returns nothing from its statements: the database's ceiling for writing these rows in
//! batches. Its tables are the read models' own (same columns and indexes, from the same SQL),
//! named `ceiling_<read model>`. Since it overwrites whole rows, a summed row fed from two
//! partitions can end with the total as of either partition's last batch; its row *counts* must
//! equal the oracle's, which the benchmark checks after the window.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use prism_events::Event;
use prism_projections::{FeedKind, ReadModel, REVISION_COLUMN, VERSION_COLUMN};
use prism_read_store::projection::key_text;
use prism_read_store::row_sets::{RowParams, TableColumns, COLUMNS_SQL};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::Message;
use serde_json::Value;
use uuid::Uuid;

use crate::children::{topic_index, ChildSettings, Positions};

/// The ceiling's table for a read model.
pub fn table(model: &ReadModel) -> String {
    format!("ceiling_{}", model.name())
}

/// Messages per batch at most: Prism's default `projector.batch_max_events`.
static BATCH: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    prism_config::PrismConfig::load(&prism_config::ConfigSources::default())
        .expect("the default configuration loads")
        .projector
        .batch_max_events
});

/// A read model's state during the precomputation: row, version, revision per key.
type State = HashMap<String, (Value, i64, i64)>;

/// Runs the read models' feeds over `events` and writes every event's resulting rows to
/// `path`. Returns the number of rows each read model ends with.
pub fn precompute(
    models: &[ReadModel],
    events: &[Event],
    path: &Path,
) -> anyhow::Result<BTreeMap<&'static str, usize>> {
    let mut states: Vec<State> = models.iter().map(|_| State::new()).collect();
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for event in events {
        let mut touched: Vec<(usize, String)> = Vec::new();
        for (index, model) in models.iter().enumerate() {
            let state = &mut states[index];
            for feed in model.feeds().iter().filter(|f| f.source == event.meta.aggregate_type) {
                match &feed.kind {
                    FeedKind::Fold(fold) => {
                        let id = event.meta.aggregate_id.to_string();
                        let current = state.get(&id);
                        let mut next = fold.fold_value(current.map(|(row, ..)| row), event).map_err(|e| {
                            anyhow::anyhow!(
                                "{} refuses {} {}: {e}",
                                model.name(),
                                event.event_type(),
                                event.meta.aggregate_id
                            )
                        })?;
                        let revision = current.map_or(1, |(_, _, r)| r + 1);
                        if let (Some((row, ..)), Some(map)) = (current, next.as_object_mut()) {
                            for column in model.additive_columns() {
                                if let Some(kept) = row.get(column) {
                                    map.insert(column.to_owned(), kept.clone());
                                }
                            }
                        }
                        let version = i64::try_from(event.meta.aggregate_version)?;
                        state.insert(id.clone(), (next, version, revision));
                        touched.push((index, id));
                    }
                    FeedKind::Sum { columns, rows } => {
                        for row in rows(event).map_err(|e| anyhow::anyhow!("{}: {e}", model.name()))? {
                            let key = key_text(&row, model.key_columns());
                            match state.get_mut(&key) {
                                Some((total, _, revision)) => {
                                    add_into(total, &row, columns);
                                    *revision += 1;
                                }
                                None => {
                                    state.insert(key.clone(), (row, 0, 1));
                                }
                            }
                            touched.push((index, key));
                        }
                    }
                }
            }
        }
        touched.sort();
        touched.dedup();
        for (index, key) in touched {
            let (row, version, revision) = &states[index][&key];
            let mut row = row.clone();
            if let Some(map) = row.as_object_mut() {
                map.insert(VERSION_COLUMN.into(), Value::from(*version));
                map.insert(REVISION_COLUMN.into(), Value::from(*revision));
            }
            // serde_json escapes control characters inside strings: a row is one line, no tab.
            writeln!(out, "{}\t{index}\t{key}\t{}", event.meta.event_id, serde_json::to_string(&row)?)?;
        }
    }
    out.flush()?;
    Ok(models.iter().zip(&states).map(|(m, s)| (m.name(), s.len())).collect())
}

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

/// Creates the ceiling's tables (the read models' SQL under `ceiling_<name>`, plus the engine's
/// bookkeeping columns) in the client's schema.
pub async fn create_tables(client: &tokio_postgres::Client, models: &[ReadModel]) -> anyhow::Result<()> {
    for model in models {
        let table = table(model);
        client.batch_execute(&model.table_sql().replace("{table}", &table)).await?;
        client
            .batch_execute(&format!(
                "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {VERSION_COLUMN} bigint NOT NULL DEFAULT 0, \
                 ADD COLUMN IF NOT EXISTS {REVISION_COLUMN} bigint NOT NULL DEFAULT 0"
            ))
            .await?;
    }
    Ok(())
}

/// Empties the ceiling's tables, so that each of its windows starts from none of the rows.
pub async fn empty_tables(client: &tokio_postgres::Client, models: &[ReadModel]) -> anyhow::Result<()> {
    let tables: Vec<String> = models.iter().map(table).collect();
    client.batch_execute(&format!("TRUNCATE {}", tables.join(", "))).await?;
    Ok(())
}

/// Fails naming `what` unless `counts` holds as many rows of every read model as the oracle's
/// fold `expected`.
pub fn ensure_oracle_counts(
    what: &str,
    counts: &BTreeMap<&'static str, usize>,
    expected: &prism_testkit::oracle::Expected,
) -> anyhow::Result<()> {
    for (model, rows) in &expected.rows {
        anyhow::ensure!(
            counts.get(model) == Some(&rows.len()),
            "{what} ends with {:?} rows of {model}, the oracle with {}",
            counts.get(model),
            rows.len()
        );
    }
    Ok(())
}

/// Rows in each ceiling table.
pub async fn row_counts(
    client: &tokio_postgres::Client,
    models: &[ReadModel],
) -> anyhow::Result<BTreeMap<&'static str, usize>> {
    let mut counts = BTreeMap::new();
    for model in models {
        let n: i64 = client.query_one(&format!("SELECT count(*) FROM {}", table(model)), &[]).await?.get(0);
        counts.insert(model.name(), usize::try_from(n)?);
    }
    Ok(counts)
}

/// One precomputed row: read model index, key, row JSON.
struct Row {
    model: usize,
    key: Box<str>,
    json: Box<str>,
}

fn load(path: &Path) -> anyhow::Result<HashMap<Uuid, Vec<Row>>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut rows: HashMap<Uuid, Vec<Row>> = HashMap::new();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        let mut parts = line.splitn(4, '\t');
        let (Some(id), Some(model), Some(key), Some(json)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            bail!("{} line {}: not `event id, model, key, row`", path.display(), n + 1);
        };
        rows.entry(id.parse()?).or_default().push(Row {
            model: model.parse()?,
            key: key.into(),
            json: json.into(),
        });
    }
    Ok(rows)
}

/// The upsert of a ceiling table (every column but the key set from the new row), and how its
/// rows are sent.
async fn upsert_sql(
    client: &tokio_postgres::Client,
    model: &ReadModel,
) -> anyhow::Result<(String, TableColumns)> {
    let table = table(model);
    let rows = client.query(COLUMNS_SQL, &[&table]).await?;
    let columns = TableColumns::from_rows(&rows)
        .with_context(|| format!("{table} does not exist in the benchmark's schema"))?;
    let key = model.key_columns();
    let sets: Vec<String> = columns
        .names()
        .iter()
        .filter(|c| !key.contains(&c.as_str()))
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let sql = format!(
        "{} ON CONFLICT ({}) DO UPDATE SET {}",
        columns.insert(&table),
        key.join(", "),
        sets.join(", ")
    );
    Ok((sql, columns))
}

/// A message handed to a writer: topic index, partition, offset, value.
type Item = (usize, i32, i64, Vec<u8>);

/// The `ceiling` child: loads the rows, says `ready`, then consumes and writes until killed.
pub async fn run(settings: &ChildSettings) -> anyhow::Result<()> {
    let path = std::env::var("PRISM_BENCH_CEILING_ROWS").context("PRISM_BENCH_CEILING_ROWS is not set")?;
    let writers: usize =
        std::env::var("PRISM_BENCH_CEILING_WRITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(4).max(1);
    let rows = Arc::new(load(Path::new(&path))?);
    let models = shop_model::read_models::all();
    let landed = Arc::new(Mutex::new((Positions::default(), false)));
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let client = prism_testkit::services::connect_pg(&settings.pg_url).await?;
        let mut statements = Vec::new();
        for model in &models {
            let (sql, columns) = upsert_sql(&client, model).await?;
            statements.push((client.prepare(&sql).await?, columns));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4 * *BATCH);
        senders.push(tx);
        tasks.push(tokio::spawn(write_batches(
            client,
            statements,
            models.len(),
            rows.clone(),
            rx,
            landed.clone(),
        )));
    }
    println!("ready");

    // The consumer polls on a thread of its own and hands each partition's messages to one
    // writer, in order; it commits what the writers have landed.
    let consumer = settings.consumer()?;
    let topics = settings.topics.clone();
    let poller = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut last_commit = Instant::now();
        loop {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message?;
                let topic = topic_index(&topics, message.topic())?;
                let writer = (topic * 31 + message.partition() as usize) % senders.len();
                let item = (
                    topic,
                    message.partition(),
                    message.offset(),
                    message.payload().unwrap_or_default().to_vec(),
                );
                senders[writer].blocking_send(item).context("a writer stopped")?;
            }
            if last_commit.elapsed() >= Duration::from_millis(100) {
                let mut landed = landed.lock().unwrap_or_else(|p| p.into_inner());
                if landed.1 {
                    consumer.commit(&landed.0.list(&topics)?, CommitMode::Async)?;
                    landed.1 = false;
                }
                last_commit = Instant::now();
            }
        }
    });
    tokio::select! {
        result = poller => result??,
        result = futures::future::select_all(tasks) => result.0??,
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct Head {
    event_id: Uuid,
}

/// One writer: batches of what has arrived (up to [`BATCH`]), last row per key, one statement
/// per read model, one transaction.
async fn write_batches(
    client: tokio_postgres::Client,
    statements: Vec<(tokio_postgres::Statement, TableColumns)>,
    model_count: usize,
    rows: Arc<HashMap<Uuid, Vec<Row>>>,
    mut rx: tokio::sync::mpsc::Receiver<Item>,
    landed: Arc<Mutex<(Positions, bool)>>,
) -> anyhow::Result<()> {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < *BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut last: Vec<BTreeMap<&str, &str>> = vec![BTreeMap::new(); model_count];
        for (.., value) in &batch {
            let head: Head =
                serde_json::from_slice(value).context("a message whose value has no event_id")?;
            let writes = rows
                .get(&head.event_id)
                .with_context(|| format!("no precomputed rows for event {}", head.event_id))?;
            for row in writes {
                last[row.model].insert(&row.key, &row.json);
            }
        }
        let documents: Vec<(usize, RowParams)> = last
            .iter()
            .enumerate()
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(model, rows)| {
                let mut json = String::from("[");
                for (n, row) in rows.values().enumerate() {
                    if n > 0 {
                        json.push(',');
                    }
                    json.push_str(row);
                }
                json.push(']');
                Ok((model, statements[model].1.params(json)?))
            })
            .collect::<Result<_, prism_postgres::StoreError>>()?;
        client.batch_execute("BEGIN").await?;
        let writes = documents.iter().map(|(model, rows)| {
            let (client, statement) = (&client, &statements[*model].0);
            async move { client.execute(statement, &rows.values().as_params()).await }
        });
        for result in futures::future::join_all(writes).await {
            result?;
        }
        client.batch_execute("COMMIT").await?;
        let mut landed = landed.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, partition, offset, _) in &batch {
            landed.0.done(*topic, *partition, *offset);
        }
        landed.1 = true;
    }
    Ok(())
}
