//! The correctness oracle, for any application: every read-model row and cache entry compared
//! with what an independent in-memory fold of the produced events says it must be. Equal or a
//! diff.
//!
//! The fold is the application's own test code (the shop's is `shop::testing::oracle`), written
//! apart from its read models' folds so a bug there cannot hide itself; it fills an
//! [`Expected`]. This module gives it the order to fold in ([`applicable`]: per aggregate,
//! versions 1, 2, 3, … once each, stopping at the first missing one — exactly what the
//! projector must converge to after duplicates, redeliveries and reorderings), and compares
//! the result with PostgreSQL and Redis ([`check_expected`]).
//!
//! Fields compared: the application's columns, timestamps normalised to microseconds in UTC.
//! The engine's bookkeeping (`prism_revision`, a change counter whose value depends on
//! batching, and `prism_version`) is not predicted; instead each Redis entry's revision must
//! equal its PostgreSQL row's.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, SecondsFormat, Utc};
use prism_events::{AggregateType, Event};
use prism_projections::{ProjectionInstance, ReadModel, REVISION_COLUMN, VERSION_COLUMN};
use serde_json::{Map, Value};
use uuid::Uuid;

/// Expected rows per read model, by row key (the key column's value, or the key columns'
/// values joined by `/`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expected {
    /// Rows by read model and key.
    pub rows: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// Events folded, per aggregate type (for diagnostics when the check times out).
    pub events_by_aggregate_type: BTreeMap<&'static str, usize>,
}

impl Expected {
    /// An empty expectation for these read models (each expected empty until the fold adds).
    pub fn for_read_models(names: &[&'static str]) -> Self {
        Self { rows: names.iter().map(|n| (*n, BTreeMap::new())).collect(), ..Default::default() }
    }

    /// Counts one folded event.
    pub fn count(&mut self, event: &Event) {
        *self.events_by_aggregate_type.entry(event.meta.aggregate_type.as_str()).or_default() += 1;
    }
}

/// The events a projector must have applied, in the order to fold them: per aggregate, its
/// distinct versions from 1 up to the first missing one, aggregates one after another.
pub fn applicable(events: &[Event]) -> Vec<&Event> {
    let mut streams: HashMap<(AggregateType, Uuid), BTreeMap<u64, &Event>> = HashMap::new();
    for event in events {
        streams
            .entry((event.meta.aggregate_type, event.meta.aggregate_id))
            .or_default()
            .entry(event.meta.aggregate_version)
            .or_insert(event);
    }
    let mut applicable: Vec<&Event> = Vec::new();
    for stream in streams.values() {
        for (expected, (version, event)) in (1..).zip(stream) {
            if *version != expected {
                break;
            }
            applicable.push(event);
        }
    }
    applicable.sort_by_key(|e| (e.meta.aggregate_type, e.meta.aggregate_id, e.meta.aggregate_version));
    applicable
}

fn ts(at: DateTime<Utc>) -> Value {
    Value::String(at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// Canonical form for comparison: timestamps to microseconds in UTC, the engine's bookkeeping
/// columns removed.
pub fn normalize(row: &Value) -> Value {
    match row {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if k == REVISION_COLUMN || k == VERSION_COLUMN {
                    continue;
                }
                let v = match v {
                    Value::String(s) if k.ends_with("_at") => DateTime::parse_from_rfc3339(s)
                        .map(|t| ts(t.with_timezone(&Utc)))
                        .unwrap_or_else(|_| v.clone()),
                    other => normalize(other),
                };
                out.insert(k.clone(), v);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// Differences between expected and actual rows, as readable lines.
fn diff_rows(
    what: &str,
    expected: &BTreeMap<String, Value>,
    actual: &BTreeMap<String, Value>,
    out: &mut Vec<String>,
) {
    for (key, want) in expected {
        match actual.get(key) {
            None => out.push(format!("{what} {key}: missing; expected {want}")),
            Some(got) if normalize(got) != normalize(want) => {
                let (want, got) = (normalize(want), normalize(got));
                let fields: Vec<String> = want
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(k, v)| got.get(k.as_str()) != Some(*v))
                    .map(|(k, v)| {
                        format!("{k}: expected {v}, got {}", got.get(k.as_str()).unwrap_or(&Value::Null))
                    })
                    .collect();
                let extra: Vec<&String> = got
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .filter(|k| want.get(k.as_str()).is_none())
                    .collect();
                out.push(format!(
                    "{what} {key}: {}{}",
                    fields.join("; "),
                    if extra.is_empty() { String::new() } else { format!(" (unexpected fields {extra:?})") }
                ));
            }
            Some(_) => {}
        }
    }
    for key in actual.keys().filter(|k| !expected.contains_key(*k)) {
        out.push(format!("{what} {key}: present but no event produced it"));
    }
}

/// Every row of `instance` (of `model`) in PostgreSQL, keyed as the oracle keys them (raw,
/// with the engine's bookkeeping).
pub async fn stored_rows(
    client: &tokio_postgres::Client,
    instance: ProjectionInstance,
    model: &ReadModel,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let rows = client.query(&format!("SELECT to_jsonb(t) FROM {} t", instance.id()), &[]).await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let row: Value = r.get(0);
            (prism_read_store::projection::key_text(&row, model.key_columns()), row)
        })
        .collect())
}

/// How strictly to check the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheCheck {
    /// Every cached row must be present (no flush happened).
    Complete,
    /// Entries may be missing (the cache was flushed); present ones must be right.
    PresentOnly,
}

/// The active generation of each of `names` with its read model of `app`: what
/// [`check_expected`] compares. Fails, naming `migrate` (the command that registers them), when
/// one of them has no active generation.
pub async fn active_targets<'a>(
    client: &impl tokio_postgres::GenericClient,
    app: &'a prism_projections::Application,
    names: &[&'static str],
    migrate: &str,
) -> anyhow::Result<Vec<(ProjectionInstance, &'a ReadModel)>> {
    let instances = prism_read_store::rebuild::active_generations(client, names).await?;
    if instances.len() != names.len() {
        anyhow::bail!("not every read model of {names:?} has an active generation: run `{migrate}`");
    }
    Ok(instances.iter().filter_map(|i| app.read_model(i.projection).map(|m| (*i, m))).collect())
}

/// Compares every row of `targets` (instances with their read models) in PostgreSQL, and
/// every cache entry in Redis, with `expected`. `Ok` when equal; otherwise every difference,
/// one per line.
pub async fn check_expected(
    expected: &Expected,
    client: &tokio_postgres::Client,
    redis_url: &str,
    key_prefix: &str,
    targets: &[(ProjectionInstance, &ReadModel)],
    cache: CacheCheck,
) -> anyhow::Result<Result<CheckSummary, String>> {
    let mut diffs = Vec::new();
    let mut summary = CheckSummary::default();
    let mut conn = crate::services::redis_connection(redis_url).await?;
    for &(instance, model) in targets {
        let want = expected.rows.get(instance.projection).cloned().unwrap_or_default();
        let stored = stored_rows(client, instance, model).await?;
        summary.rows += stored.len();
        diff_rows(&format!("postgres {}", instance.id()), &want, &stored, &mut diffs);

        let Some(kind) = model.cache_kind() else { continue };
        let prefix = instance.cache_prefix(kind, key_prefix);
        let mut cached: BTreeMap<String, Value> = BTreeMap::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", crate::env::escape_glob(&prefix)))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            for key in keys {
                let (revision, version, document): (Option<i64>, Option<i64>, Option<String>) =
                    redis::cmd("HMGET")
                        .arg(&key)
                        .arg("rev")
                        .arg("ver")
                        .arg("doc")
                        .query_async(&mut conn)
                        .await?;
                let id = key.trim_start_matches(&prefix).to_owned();
                let (Some(revision), Some(version), Some(document)) = (revision, version, document) else {
                    diffs.push(format!("redis {key}: not a {{rev, ver, doc}} entry"));
                    continue;
                };
                let doc: Value = serde_json::from_str(&document)?;
                let stored_at = |column: &str| {
                    stored.get(&id).map(|row| row.get(column).and_then(Value::as_i64).unwrap_or(-1))
                };
                if let Some(stored_revision) = stored_at(REVISION_COLUMN).filter(|r| *r != revision) {
                    diffs.push(format!(
                        "redis {key}: revision {revision}, PostgreSQL row has {stored_revision}"
                    ));
                }
                if let Some(stored_version) = stored_at(VERSION_COLUMN).filter(|v| *v != version) {
                    diffs
                        .push(format!("redis {key}: version {version}, PostgreSQL row has {stored_version}"));
                }
                cached.insert(id, doc);
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        summary.cache_entries += cached.len();
        let want_cached: BTreeMap<String, Value> = match cache {
            CacheCheck::Complete => want.clone(),
            CacheCheck::PresentOnly => want
                .iter()
                .filter(|(k, _)| cached.contains_key(*k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        diff_rows(&format!("redis {prefix}"), &want_cached, &cached, &mut diffs);
    }
    if diffs.is_empty() {
        Ok(Ok(summary))
    } else {
        let total = diffs.len();
        diffs.truncate(12);
        let shown: Vec<String> = diffs
            .into_iter()
            .map(|d| {
                if d.chars().count() > 400 {
                    format!("{}…", d.chars().take(400).collect::<String>())
                } else {
                    d
                }
            })
            .collect();
        Ok(Err(format!(
            "{total} difference(s) from the oracle (first {} shown):\n{}",
            shown.len(),
            shown.join("\n")
        )))
    }
}

/// What a passing check compared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckSummary {
    /// PostgreSQL rows compared.
    pub rows: usize,
    /// Redis entries compared.
    pub cache_entries: usize,
}
