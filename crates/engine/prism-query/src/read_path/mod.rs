//! [`ReadPath`]: reading any registered read model of an application.
//!
//! - **By key** ([`ReadPath::entity`], read models with one key column): Redis first when the
//!   read model is cached, PostgreSQL (through the view on the active generation) on a miss,
//!   refilling Redis with the projector's own compare-and-set on the revision.
//! - **Read-your-writes** (`min_version`): the row must reflect at least that version of its
//!   aggregate ([`VERSION_COLUMN`]); the read waits, woken by the projectors' notifications, up
//!   to `query.min_version_wait_ms`, and otherwise answers the row as it stands, marked stale.
//! - **Lists and ranges** ([`ReadPath::query_rows`]): an application's own SQL over the views,
//!   answered as JSON rows, from PostgreSQL only (caching pages would need invalidation the
//!   projector does not do).
//! - **Read replicas** (`query.replica_urls`): every PostgreSQL read above may be answered by a
//!   replica; a read-your-writes read only by one whose row has the version asked for, the
//!   primary answering otherwise within the same wait (see `source`). A row a replica answered
//!   never refills Redis.
//!
//! Rows are JSON objects of the application's columns ([`StoredRow::document`]); the engine's
//! bookkeeping columns never reach the application or its clients. A document served from
//! PostgreSQL (the row's `to_jsonb` without the engine's columns) is the same JSON value as the
//! one the projector caches (the text `row_to_json` prints of the same columns, see
//! `prism_read_store::documents`), so a hit and a miss answer alike.
//!
//! Why a refill can never make the cache wrong: it goes through the same compare-and-set on
//! the revision the projector uses. If the projector wrote a newer row between our PostgreSQL
//! read and our refill, the refill is refused; if ours is newer than what the projector wrote
//! before, it is the truth anyway (it came from PostgreSQL, which is never behind the cache).
//! A blue/green switch between our read and our refill can at worst put a row of the old
//! generation under a key of the new one (or the reverse) at the same revision: folds are
//! deterministic, so the row is the same in either generation.
//!
//! Why a read-your-writes re-check reads PostgreSQL rather than Redis: the projector commits
//! (which delivers the notification) before it writes the cache, so right after a notification
//! Redis may still hold the previous version.
//!
//! Why only the primary's rows refill Redis: a replica may be behind the primary, and an older
//! row written into an empty cache slot (after an eviction, say) would stay there until its
//! aggregate changed again, so the cache would be stale for good.
//!
//! - `source`: the seam to PostgreSQL: the primary and the read replicas, and which one
//!   answers a read.
//! - `cache`: the optional, bounded use of Redis.

pub(crate) mod cache;
pub(crate) mod source;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use prism_cache::{Cache, Entry};
use prism_config::{PrismConfig, QueryConfig};
use prism_postgres::{Database, StoreError};
use prism_projections::{Application, REVISION_COLUMN, VERSION_COLUMN};
use serde_json::{Map, Value};
use tokio::time::Instant;
use tokio_postgres::types::ToSql;

use self::cache::{CacheFailure, CacheSlot};
use self::source::{Freshness, RowSource, Source};
use crate::error::ReadError;
use crate::generations::ActiveGenerations;
use crate::metrics;
use crate::notify::AppliedSignals;

/// Longest key accepted, in characters: keys become Redis keys and SQL parameters.
pub const MAX_KEY_CHARS: usize = 512;
/// Longest wait for Redis at start before serving without it.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A row as stored: the application's columns and the engine's bookkeeping, apart.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRow {
    /// The application's columns as a JSON object: what the API serves and the cache holds.
    pub document: Value,
    /// [`VERSION_COLUMN`]: for rows keyed by an aggregate, the version of it the row reflects
    /// (what `min_version` is compared with and `X-Prism-Version` reports); 0 otherwise.
    pub version: i64,
    /// [`REVISION_COLUMN`]: the row's change counter, what the cache's compare-and-set compares.
    pub revision: i64,
}

impl StoredRow {
    /// Splits a row's `to_jsonb` into the application's columns and the engine's; `None` when
    /// it is not a JSON object.
    pub fn from_jsonb(value: Value) -> Option<Self> {
        let Value::Object(mut columns) = value else { return None };
        let version = columns.remove(VERSION_COLUMN).and_then(|v| v.as_i64()).unwrap_or(0);
        let revision = columns.remove(REVISION_COLUMN).and_then(|v| v.as_i64()).unwrap_or(0);
        Some(Self { document: Value::Object(columns), version, revision })
    }

    /// The text of column `column` as cache keys name rows: a string as is, anything else as
    /// JSON (the projector's rule, so both write the same key).
    pub fn key_text(&self, column: &str) -> Option<String> {
        self.document.get(column).filter(|v| !v.is_null()).map(prism_projections::key_value_text)
    }
}

/// An entity read: the row (if any) and whether it satisfies the `min_version` asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Served {
    /// The row; `None` when there is none (yet).
    pub row: Option<StoredRow>,
    /// False when the client asked for a version the read model did not reach in time; then
    /// `row` is the row as it stands (or `None`).
    pub fresh: bool,
}

/// One read model as the read path reads it, worked out once at start.
#[derive(Debug, Clone)]
struct Target {
    /// The read model's name (its view).
    name: &'static str,
    /// Its key columns.
    key_columns: Vec<&'static str>,
    /// Its Redis key kind, when cached.
    cache_kind: Option<&'static str>,
    /// `SELECT to_jsonb(t) FROM <view> t WHERE <key> = …$1…`, for one key column. The key
    /// arrives as text in a JSON object and is converted to the column's type by PostgreSQL
    /// (`jsonb_populate_record` on the view's row type), so any key type works and the index is
    /// used. Built from the application's checked identifiers, never from a request.
    by_key: Option<String>,
}

impl Target {
    fn of(model: &prism_projections::ReadModel) -> Self {
        let name = model.name();
        let by_key = match model.key_columns() {
            [key] => Some(format!(
                "SELECT to_jsonb(t) FROM {name} t WHERE {key} = (jsonb_populate_record(NULL::{name}, $1::jsonb)).{key}"
            )),
            _ => None,
        };
        Self { name, key_columns: model.key_columns().to_vec(), cache_kind: model.cache_kind(), by_key }
    }

    /// `row`'s key as the projectors' applied notifications name the rows a batch wrote
    /// (`prism_read_store::read_models::AppliedRows`); `None` for a key of several columns, whose
    /// waiters look at every batch.
    fn notified_key(&self, row: &StoredRow) -> Option<String> {
        match self.key_columns.as_slice() {
            [key] => row.key_text(key),
            _ => None,
        }
    }
}

/// The read path of one application: every read its routes (and the engine's generic route)
/// make. Cheap to clone; clones share the connections. Built by [`ReadPath::connect`];
/// [`crate::serve`] also keeps its generations current, its waiters woken and its cache
/// probed.
#[derive(Debug, Clone)]
pub struct ReadPath {
    inner: std::sync::Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The application.
    app: Application,
    /// Its read models, by name.
    targets: BTreeMap<&'static str, Target>,
    /// PostgreSQL: the primary and the read replicas.
    rows: RowSource,
    /// Redis.
    cache: CacheSlot,
    /// `redis.key_prefix`.
    key_prefix: String,
    /// Which cache keys are current.
    generations: ActiveGenerations,
    /// Wake-ups for read-your-writes waits.
    signals: AppliedSignals,
    /// `[query]`.
    config: QueryConfig,
}

impl ReadPath {
    /// Connects to PostgreSQL and Redis and checks that every read model of `app` is set up on
    /// the configured schema as `app` defines it (registered with the same key and cache kind,
    /// with an active generation): otherwise the error says what to run. Redis being
    /// unreachable is not an error (reads are served from PostgreSQL and [`crate::serve`]
    /// connects later); a Redis misconfiguration is. The same goes for the read replicas of
    /// `query.replica_urls`: one that does not answer is skipped (the primary answers its
    /// reads) until a probe connects it; a malformed URL or refused credentials are errors.
    pub async fn connect(config: &PrismConfig, app: Application) -> anyhow::Result<Self> {
        let db = Database::connect(&config.postgres, "prism-query")
            .await
            .with_context(|| format!("connecting to PostgreSQL at {}", config.postgres.url))?;
        check_setup(&db, &app, &config.postgres.schema).await?;
        let names: Vec<&'static str> = app.read_models().iter().map(|m| m.name()).collect();
        let generations = ActiveGenerations::new(&names);
        generations.reload(&db).await.context("reading the active generations")?;
        let missing = generations.missing();
        anyhow::ensure!(
            missing.is_empty(),
            "read models {} have no active generation in schema {}: run `{}-projector migrate` first",
            missing.join(", "),
            config.postgres.schema,
            app.name()
        );
        let cache = match tokio::time::timeout(REDIS_CONNECT_TIMEOUT, Cache::connect(&config.redis)).await {
            Ok(Ok(cache)) => Some(cache),
            Ok(Err(err)) if err.is_transient() => {
                tracing::warn!(error = %err, "redis unreachable at start; serving reads from PostgreSQL until it answers");
                None
            }
            Ok(Err(err)) => return Err(anyhow::Error::new(err).context("connecting to Redis")),
            Err(_) => {
                tracing::warn!(
                    "redis not answering at start; serving reads from PostgreSQL until it answers"
                );
                None
            }
        };
        let rows = RowSource::connect(db, &config.postgres, &config.query).await?;
        Ok(Self::assemble(app, rows, cache, config, generations, AppliedSignals::new(&names)))
    }

    fn assemble(
        app: Application,
        rows: RowSource,
        cache: Option<Cache>,
        config: &PrismConfig,
        generations: ActiveGenerations,
        signals: AppliedSignals,
    ) -> Self {
        let targets = app.read_models().iter().map(|m| (m.name(), Target::of(m))).collect();
        let inner = Inner {
            app,
            targets,
            rows,
            cache: CacheSlot::new(cache),
            key_prefix: config.redis.key_prefix.clone(),
            generations,
            signals,
            config: config.query.clone(),
        };
        Self { inner: std::sync::Arc::new(inner) }
    }

    /// The application.
    pub fn app(&self) -> &Application {
        &self.inner.app
    }

    /// The `[query]` settings (page sizes, waits), for the application's routes.
    pub fn config(&self) -> &QueryConfig {
        &self.inner.config
    }

    /// The read model `read_model`, from an entity read of `key`: from Redis when it holds a
    /// row at least as new as `min_version` asks (any row without it), otherwise from
    /// PostgreSQL, refilling Redis. With `min_version` (above 0: version 0 is "before the
    /// aggregate existed", nothing to wait for) the read waits up to
    /// `query.min_version_wait_ms` for the projector to get there, and counts a stale answer
    /// when it does not.
    pub async fn entity(
        &self,
        read_model: &str,
        key: &str,
        min_version: Option<i64>,
    ) -> Result<Served, ReadError> {
        let target = self.keyed(read_model)?;
        if key.chars().count() > MAX_KEY_CHARS {
            return Err(ReadError::InvalidKey {
                read_model: target.name,
                key: key.chars().take(64).collect(),
                detail: format!("keys are at most {MAX_KEY_CHARS} characters"),
            });
        }
        match min_version.filter(|min| *min > 0) {
            None => Ok(Served { row: self.current(target, key, None).await?, fresh: true }),
            Some(min) => self.at_least(target, key, min).await,
        }
    }

    /// The row of `read_model` under `key` as PostgreSQL has it now: the primary's (no cache,
    /// no replica).
    pub async fn stored(&self, read_model: &str, key: &str) -> Result<Option<StoredRow>, ReadError> {
        let target = self.keyed(read_model)?;
        Ok(self.read_postgres(target, key, Freshness::Latest).await?.0)
    }

    /// Runs an application's query over its read models' views and answers each row's first
    /// column, which must be jsonb — typically `SELECT to_jsonb(t) FROM <read model> t WHERE …`
    /// — with the engine's bookkeeping columns removed from objects. `read_model` names the
    /// read model queried (for metrics). The SQL is the application's own (static, with `$n`
    /// parameters); it is prepared once per connection. With read replicas, a replica within
    /// `query.replica_max_lag_ms` answers it (the primary when none can).
    pub async fn query_rows(
        &self,
        read_model: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Value>, ReadError> {
        let target = self.target(read_model)?;
        metrics::postgres_read(target.name);
        let answer = self.inner.rows.rows(target.name, sql, params, Freshness::Any).await?;
        Ok(answer
            .rows
            .into_iter()
            .map(|row| match row {
                Value::Object(mut columns) => {
                    columns.remove(VERSION_COLUMN);
                    columns.remove(REVISION_COLUMN);
                    Value::Object(columns)
                }
                other => other,
            })
            .collect())
    }

    /// The Redis key of `key` in `read_model`'s active generation; `None` when the read model is
    /// not cached or has no active generation.
    pub fn cache_key(&self, read_model: &str, key: &str) -> Option<String> {
        let target = self.inner.targets.get(read_model)?;
        self.key_of(target, key)
    }

    /// Writes `row` of `read_model` to Redis unless Redis holds the same or a newer revision.
    /// Returns whether it was written; a cache failure is counted and logged (the answer came
    /// from PostgreSQL, so the client is served regardless).
    pub async fn refill(&self, read_model: &str, row: &StoredRow) -> bool {
        match self.inner.targets.get(read_model) {
            Some(target) => self.refill_target(target, row).await,
            None => false,
        }
    }

    pub(crate) fn generations(&self) -> &ActiveGenerations {
        &self.inner.generations
    }

    pub(crate) fn signals(&self) -> &AppliedSignals {
        &self.inner.signals
    }

    pub(crate) fn cache_slot(&self) -> &CacheSlot {
        &self.inner.cache
    }

    pub(crate) fn primary(&self) -> &Database {
        self.inner.rows.primary()
    }

    /// PostgreSQL: the primary and the read replicas (their probes and state).
    pub(crate) fn row_source(&self) -> &RowSource {
        &self.inner.rows
    }

    /// Whether PostgreSQL answers (readiness).
    pub(crate) async fn ping_postgres(&self) -> Result<(), StoreError> {
        self.inner.rows.ping().await
    }

    fn target(&self, read_model: &str) -> Result<&Target, ReadError> {
        self.inner
            .targets
            .get(read_model)
            .ok_or_else(|| ReadError::UnknownReadModel(read_model.chars().take(64).collect()))
    }

    fn keyed(&self, read_model: &str) -> Result<&Target, ReadError> {
        let target = self.target(read_model)?;
        match target.by_key {
            Some(_) => Ok(target),
            None => Err(ReadError::NotReadableByKey {
                read_model: target.name,
                columns: target.key_columns.len(),
            }),
        }
    }

    fn key_of(&self, target: &Target, key: &str) -> Option<String> {
        let kind = target.cache_kind?;
        let instance = self.inner.generations.instance(target.name)?;
        Some(format!("{}{key}", instance.cache_prefix(kind, &self.inner.key_prefix)))
    }

    /// The row now, from Redis when it has one at least `min` new, else from PostgreSQL
    /// (refilling Redis when the primary answered).
    async fn current(
        &self,
        target: &Target,
        key: &str,
        min: Option<i64>,
    ) -> Result<Option<StoredRow>, ReadError> {
        if let Some(cache_key) = self.key_of(target, key) {
            if let Some(cached) = self.cached(target, &cache_key).await {
                if min.is_none_or(|min| cached.version >= min) {
                    return Ok(Some(cached));
                }
            }
        }
        let freshness = min.map_or(Freshness::Any, Freshness::AtLeast);
        let (row, source) = self.read_postgres(target, key, freshness).await?;
        if let (Some(row), Source::Primary) = (&row, source) {
            self.refill_target(target, row).await;
        }
        Ok(row)
    }

    /// The row at version `min` or later, waiting up to `query.min_version_wait_ms`. Re-reads
    /// only when a batch of the read model lands (see [`crate::notify`]).
    async fn at_least(&self, target: &Target, key: &str, min: i64) -> Result<Served, ReadError> {
        // Subscribe before the first read: a batch landing between the read and the wait
        // still wakes us.
        let mut landed = self.inner.signals.subscribe(target.name);
        let row = self.current(target, key, Some(min)).await?;
        if satisfies(&row, min) {
            return Ok(Served { row, fresh: true });
        }
        let deadline = Instant::now() + Duration::from_millis(self.inner.config.min_version_wait_ms);
        let _parked = metrics::Waiting::start(target.name);
        // The row's key as the projectors' notifications name rows: taken from the row read, so
        // it is the form PostgreSQL holds whatever form the request wrote it in. Without a row
        // yet, every batch of the read model is looked at.
        let mut notified_key = row.as_ref().and_then(|row| target.notified_key(row));
        if let Some(landed) = &mut landed {
            // Ends at the deadline (or if the signals closed, which only happens at shutdown).
            while let Ok(true) =
                tokio::time::timeout_at(deadline, landed.landed_for(notified_key.as_deref())).await
            {
                let (row, source) = self.read_postgres(target, key, Freshness::AtLeast(min)).await?;
                if let Some(current) = row.as_ref().filter(|r| r.version >= min) {
                    if source == Source::Primary {
                        self.refill_target(target, current).await;
                    }
                    return Ok(Served { row, fresh: true });
                }
                if notified_key.is_none() {
                    notified_key = row.as_ref().and_then(|row| target.notified_key(row));
                }
            }
        }
        // One last read at the deadline: covers a notification lost while the listener
        // reconnected. A single query, not a poll.
        let (row, source) = self.read_postgres(target, key, Freshness::AtLeast(min)).await?;
        let fresh = satisfies(&row, min);
        match &row {
            Some(current) if fresh && source == Source::Primary => {
                self.refill_target(target, current).await;
            }
            _ => {}
        }
        if !fresh {
            metrics::stale(target.name);
            tracing::debug!(read_model = target.name, min_version = min, served = ?row.as_ref().map(|r| r.version), "stale answer");
        }
        Ok(Served { row, fresh })
    }

    /// The row as PostgreSQL's view has it, on a server that satisfies `freshness`, and which
    /// server that was.
    async fn read_postgres(
        &self,
        target: &Target,
        key: &str,
        freshness: Freshness,
    ) -> Result<(Option<StoredRow>, Source), ReadError> {
        let (Some(sql), [column]) = (&target.by_key, target.key_columns.as_slice()) else {
            return Err(ReadError::NotReadableByKey {
                read_model: target.name,
                columns: target.key_columns.len(),
            });
        };
        metrics::postgres_read(target.name);
        let mut key_row = Map::new();
        key_row.insert((*column).to_owned(), Value::String(key.to_owned()));
        let key_row = Value::Object(key_row);
        let answer = match self.inner.rows.rows(target.name, sql, &[&key_row], freshness).await {
            Ok(answer) => answer,
            // Class 22 (data exception): the key does not read as the column's type.
            Err(err) if err.sql_state().is_some_and(|s| s.code().starts_with("22")) => {
                return Err(ReadError::InvalidKey {
                    read_model: target.name,
                    key: key.chars().take(64).collect(),
                    detail: database_message(&err),
                })
            }
            Err(err) => return Err(err.into()),
        };
        match answer.rows.into_iter().next() {
            None => Ok((None, answer.source)),
            Some(value) => match StoredRow::from_jsonb(value) {
                Some(row) => Ok((Some(row), answer.source)),
                None => Err(ReadError::Corrupt {
                    read_model: target.name,
                    detail: "a row is not a JSON object".into(),
                }),
            },
        }
    }

    async fn refill_target(&self, target: &Target, row: &StoredRow) -> bool {
        let Some(slot_cache) = self.inner.cache.usable() else { return false };
        let Some(cache_key) =
            target.key_columns.first().and_then(|c| row.key_text(c)).and_then(|k| self.key_of(target, &k))
        else {
            return false;
        };
        let document = row.document.to_string();
        let entry =
            Entry { key: &cache_key, revision: row.revision, version: row.version, document: &document };
        match self.inner.cache.put_if_newer(slot_cache, &[entry]).await {
            Ok(written) => written > 0,
            Err(err) => {
                metrics::cache_error(target.name);
                log_cache_failure(&err, "cache refill failed");
                false
            }
        }
    }

    /// The cached row, if Redis has a readable one. Errors count as misses: PostgreSQL answers
    /// instead.
    async fn cached(&self, target: &Target, cache_key: &str) -> Option<StoredRow> {
        let Some(cache) = self.inner.cache.usable() else {
            metrics::cache_bypassed(target.name);
            return None;
        };
        match self.inner.cache.get(cache, cache_key).await {
            Ok(Some(cached)) => match serde_json::from_str::<Value>(&cached.document) {
                Ok(document @ Value::Object(_)) => {
                    metrics::cache_lookup(target.name, true);
                    Some(StoredRow { document, version: cached.version, revision: cached.revision })
                }
                _ => {
                    // Unreadable (e.g. written by an incompatible build): PostgreSQL answers and
                    // the refill cannot replace it (same revision), so say so loudly.
                    metrics::cache_error(target.name);
                    tracing::warn!(key = cache_key, "unreadable cache entry");
                    None
                }
            },
            Ok(None) => {
                metrics::cache_lookup(target.name, false);
                None
            }
            Err(err) => {
                metrics::cache_error(target.name);
                log_cache_failure(&err, "cache read failed; serving from PostgreSQL");
                None
            }
        }
    }
}

fn satisfies(row: &Option<StoredRow>, min: i64) -> bool {
    row.as_ref().is_some_and(|row| row.version >= min)
}

/// PostgreSQL's own message of a failed statement (e.g. `invalid input syntax for type uuid`).
fn database_message(err: &StoreError) -> String {
    match err {
        StoreError::Postgres(pg) => {
            pg.as_db_error().map_or_else(|| err.to_string(), |db| db.message().to_owned())
        }
        other => other.to_string(),
    }
}

fn log_cache_failure(err: &CacheFailure, message: &'static str) {
    let transient = match err {
        CacheFailure::Cache(err) => err.is_transient(),
        CacheFailure::Timeout => true,
    };
    tracing::warn!(error = %err, transient, "{message}");
}

/// Checks that every read model of `app` is registered on the schema with the key and cache
/// kind `app` gives it: the query side names cache keys and selects rows by them.
async fn check_setup(db: &Database, app: &Application, schema: &str) -> anyhow::Result<()> {
    let client = db.client().await?;
    let migrate = format!("run `{}-projector migrate` (with the schema owner's role) first", app.name());
    let registered = prism_read_store::registry::read_models(&**client)
        .await
        .with_context(|| format!("reading the read-model registry of schema {schema}: {migrate}"))?;
    for model in app.read_models() {
        let Some(found) = registered.iter().find(|r| r.name == model.name()) else {
            anyhow::bail!("read model {} is not registered in schema {schema}: {migrate}", model.name());
        };
        let key: Vec<&str> = found.key_columns.iter().map(String::as_str).collect();
        anyhow::ensure!(
            found.application == app.name()
                && key == model.key_columns()
                && found.cache_kind.as_deref() == model.cache_kind(),
            "read model {} is registered in schema {schema} by {} with key {:?} and cache kind {:?}, not as this build \
             defines it (key {:?}, cache kind {:?}): {migrate}",
            model.name(),
            found.application,
            found.key_columns,
            found.cache_kind,
            model.key_columns(),
            model.cache_kind()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn stored_rows_keep_the_application_columns_apart_from_the_engine_ones() {
        let row = StoredRow::from_jsonb(json!({"id": "a", "n": 2, "prism_version": 3, "prism_revision": 7}))
            .expect("an object");
        assert_eq!(row, StoredRow { document: json!({"id": "a", "n": 2}), version: 3, revision: 7 });
        assert_eq!(row.key_text("id").as_deref(), Some("a"));
        assert_eq!(row.key_text("n").as_deref(), Some("2"));
        assert_eq!(row.key_text("missing"), None);
        assert_eq!(StoredRow::from_jsonb(json!([1])), None);
    }
}
