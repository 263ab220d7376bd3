//! PostgreSQL's time by statement over Prism's window (and over the latency run), from
//! `pg_stat_statements`: which part of a batch — the version gate, the rows read to fold, the
//! rows written, the dead letters, the commit — the database spends its time on.
//!
//! The dev stack loads the extension (`shared_preload_libraries` in its PostgreSQL
//! configuration); on a server without it the benchmark says so and leaves the table out. The
//! counters are reset just before Prism starts and read as soon as its window ends, so they
//! hold Prism's statements (and its start-up's) alone. The times are execution times, as the
//! extension measures them: wall time inside PostgreSQL, waits on locks and on the CPU
//! included — on a busy machine they add up to more than the CPU PostgreSQL used, so the
//! shares, not the sums, are what to compare with the CPU per event.

use std::collections::BTreeMap;

/// The execution time of one kind of statement.
#[derive(Debug, Clone)]
pub struct KindTime {
    /// What the statements do.
    pub kind: String,
    /// Executions.
    pub calls: i64,
    /// Rows they returned or touched.
    pub rows: i64,
    /// Execution time, milliseconds.
    pub ms: f64,
}

/// Resets the counters; `false` (with the reason printed) when the server does not track
/// statements.
pub async fn reset(pg: &tokio_postgres::Client) -> bool {
    let tracked = async {
        pg.batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").await?;
        let schema = extension_schema(pg).await?;
        pg.query_one(&format!("SELECT {schema}.pg_stat_statements_reset()::text"), &[]).await
    };
    match tracked.await {
        Ok(_) => true,
        Err(err) => {
            println!(
                "  PostgreSQL's time by statement left out: pg_stat_statements is not loaded ({}); \
                 `ops/dev-stack up` configures it (shared_preload_libraries = 'pg_stat_statements', then a restart)",
                err.as_db_error().map_or_else(|| err.to_string(), |db| db.message().to_owned())
            );
            false
        }
    }
}

/// The schema the extension lives in (`regnamespace` quotes it where needed). [`reset`]
/// creates it in the first schema of the session's search path, which is the run's own and is
/// dropped with it; a run stopped before its clean-up leaves the extension in its schema,
/// where later runs' sessions do not search.
async fn extension_schema(pg: &tokio_postgres::Client) -> Result<String, tokio_postgres::Error> {
    let row = pg
        .query_one(
            "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'pg_stat_statements'",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The counters since [`reset`], by kind, largest first.
pub async fn read(pg: &tokio_postgres::Client) -> anyhow::Result<Vec<KindTime>> {
    let schema = extension_schema(pg).await?;
    let rows = pg
        .query(
            &format!(
                "SELECT query, calls, rows, total_exec_time FROM {schema}.pg_stat_statements \
                 WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            &[],
        )
        .await?;
    let mut kinds: BTreeMap<String, KindTime> = BTreeMap::new();
    for row in &rows {
        let query: &str = row.get(0);
        let kind = kind_of(query);
        let entry = kinds.entry(kind.clone()).or_insert(KindTime { kind, calls: 0, rows: 0, ms: 0.0 });
        entry.calls += row.get::<_, i64>(1);
        entry.rows += row.get::<_, i64>(2);
        entry.ms += row.get::<_, f64>(3);
    }
    let mut kinds: Vec<KindTime> = kinds.into_values().collect();
    kinds.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    Ok(kinds)
}

/// What a statement of the projector does, from its text (the engine's SQL files open with a
/// comment saying so; generated statements name their table).
fn kind_of(query: &str) -> String {
    let text = query.to_ascii_lowercase();
    let table = |after: &str| {
        text.split_once(after)
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(|name| name.trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    if text.contains("locks the batch's existing gate rows") || text.starts_with("lock table projection_gate")
    {
        "gate: lock the batch's rows".into()
    } else if text.contains("records the last version applied") {
        "gate: advance".into()
    } else if text.contains("creates the gate rows of aggregates") {
        "gate: rows of new aggregates".into()
    } else if text.contains("dead_letters") || text.contains("parked_aggregates") {
        "dead letters and parking".into()
    } else if text.starts_with("insert into") {
        format!("rows written: {}", table("insert into"))
    } else if text.starts_with("update ") {
        // Rows a batch read, updated where they were read.
        format!("rows written: {}", table("update "))
    } else if text.starts_with("select json_build_array") {
        // By id from the table, or by key through a lateral lookup per key of a JSON array; the
        // columns as they are, or (a table whose documents PostgreSQL prints) in a subselect.
        let printed_by_postgresql = ") as prism_document)::text from ";
        let from = table(if text.contains(printed_by_postgresql) { printed_by_postgresql } else { " from " });
        // (`pg_stat_statements` shows the `NULL::<table>` of the latter as `$n::<table>`.)
        let from = match from.strip_prefix("jsonb_populate_recordset(") {
            Some(rest) => {
                rest.split_once("::").map_or(rest, |(_, table)| table).trim_end_matches(',').to_owned()
            }
            None => from,
        };
        format!("rows read: {from}")
    } else if is_command_side(&text) {
        // The latency run's command service: its appends (which wake the relay with a
        // `pg_notify` of their own), the relay's reads and lane locks, idempotency records.
        "commands: event store, outbox and relay".into()
    } else if text.contains("pg_notify") {
        "notification of applied batches".into()
    } else if matches!(text.trim(), "begin" | "commit" | "rollback") || text.starts_with("start transaction")
    {
        "transaction begin and commit".into()
    } else if text.starts_with("select") && text.contains(" from ") && !text.contains("projection_") {
        // The latency run's other clients: the checker's looks, the query service's reads.
        format!("other reads: {}", table(" from "))
    } else {
        "other (start-up, offsets, replay progress)".into()
    }
}

/// Whether a statement (lowercased) is the command service's rather than the projector's:
/// `prism-event-store`'s statements name the event store's, outbox's or idempotency tables, or
/// the relay (its lane check reads `pg_locks`), and the relay holds its lanes with
/// session-level advisory locks (the engine's own advisory locks are transaction-level:
/// `pg_advisory_xact_lock`).
fn is_command_side(text: &str) -> bool {
    const MARKERS: [&str; 8] = [
        "outbox",
        "command_idempotency",
        " from events",
        "into events",
        "relay",
        "pg_advisory_lock(",
        "pg_try_advisory_lock(",
        "pg_advisory_unlock(",
    ];
    MARKERS.iter().any(|marker| text.contains(marker))
}

/// The table of [`read`]'s result, with the time per event of `events`.
pub fn table(kinds: &[KindTime], events: f64) -> String {
    let total: f64 = kinds.iter().map(|k| k.ms).sum();
    let mut out = String::from(
        "| statements | calls | rows | execution ms | share | µs per event |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for k in kinds {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.0} % | {:.1} |\n",
            k.kind,
            k.calls,
            k.rows,
            k.ms,
            100.0 * k.ms / total.max(f64::MIN_POSITIVE),
            1000.0 * k.ms / events.max(1.0)
        ));
    }
    out.push_str(&format!(
        "| **all** | | | {total:.0} | 100 % | {:.1} |\n",
        1000.0 * total / events.max(1.0)
    ));
    out
}
