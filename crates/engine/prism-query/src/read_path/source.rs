//! Where rows are read from: the one seam between the read path and PostgreSQL — the primary
//! (`postgres.url`) and the read replicas of `query.replica_urls` (hot standbys streaming from
//! it), if any.
//!
//! Each read says how fresh its answer must be ([`Freshness`]); which server answers is decided
//! here and nowhere else:
//!
//! - [`Freshness::Any`] (plain entity reads, lists, ranges) is answered by a replica that is up
//!   and within `query.replica_max_lag_ms` of the primary (round robin over those), and by the
//!   primary when there is none, or when the replica's read fails or takes longer than
//!   `query.replica_timeout_ms`.
//! - [`Freshness::AtLeast`] (read-your-writes) is answered by a replica only when the rows it
//!   returns carry at least that version in [`VERSION_COLUMN`]. The rows say which version they
//!   reflect, so the check needs no replay position and is exact whatever the replica's lag. A
//!   replica without the row, or with an older one, hands the read to the primary, within the
//!   caller's deadline: no answer is ever older than asked.
//! - [`Freshness::Latest`] (what PostgreSQL holds now) is the primary's.
//!
//! Why a read-your-writes read goes to the primary rather than waiting for the replica: the
//! read path learns that a batch landed from the primary's `NOTIFY` (a standby delivers no
//! notifications, which is also why the listener, `crate::notify`, keeps its own connection to
//! the primary), so nothing would say when the replica has replayed it short of polling. A
//! read whose version reached the replica is served there; one racing its own write is served
//! by the primary.
//!
//! Replicas are watched by [`RowSource::probe_replicas`] (every [`PROBE_INTERVAL`], from the
//! service): whether each answers and is a standby, and how far behind it is. Lag is measured
//! against the primary's WAL position rather than replay timestamps (which stand still while
//! the primary is idle): each probe samples `pg_current_wal_lsn()` on the primary, and a replica
//! whose replay position has reached a sample taken at `t` holds every commit made before `t`.
//! So `now - t` bounds how stale its answers can be; it is exact to a probe interval and keeps
//! growing while replay is paused or the standby is cut off from the primary.
//!
//! A replica whose read fails for a connection reason (or times out) is skipped from then on,
//! until a probe sees it answer again. Rows read from a replica never refill the cache (the
//! read path looks at [`Answer::source`]): a replica may be behind the primary, and an older
//! row put into an empty cache slot would stay there until its aggregate changes again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::Context;
use prism_config::{PostgresConfig, QueryConfig};
use prism_postgres::{Database, StoreError};
use prism_projections::VERSION_COLUMN;
use serde_json::Value;
use tokio::time::Instant;
use tokio_postgres::types::ToSql;

use crate::metrics;

/// How often the service probes the replicas.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a probe waits for one server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Primary positions kept for measuring lag (five minutes of probes). A replica further behind
/// than that keeps the last time it was seen caught up, so its lag still grows.
const MAX_POSITIONS: usize = 300;
/// `application_name` of the replica connections.
const APPLICATION_NAME: &str = "prism-query-replica";

/// How fresh a read's answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Whatever a source has now: a replica within the lag bound, or the primary.
    Any,
    /// Rows reflecting at least this version of their aggregate (read-your-writes).
    AtLeast(i64),
    /// The primary's rows.
    Latest,
}

impl Freshness {
    /// Whether `rows` read from a replica satisfy this freshness.
    fn accepts(self, rows: &[Value]) -> bool {
        match self {
            Self::Any => true,
            Self::AtLeast(min) => {
                // A missing row on a replica means "not replayed yet", never "not found".
                !rows.is_empty()
                    && rows
                        .iter()
                        .all(|row| row.get(VERSION_COLUMN).and_then(Value::as_i64).is_some_and(|v| v >= min))
            }
            Self::Latest => false,
        }
    }
}

/// The server that answered a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// `postgres.url`.
    Primary,
    /// One of `query.replica_urls`.
    Replica,
}

impl Source {
    /// The `source` label of [`metrics::source_read`].
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replica => "replica",
        }
    }
}

/// Why the primary answered a read a replica could have answered: the `reason` label of
/// [`metrics::replica_fallback`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fallback {
    /// The replica's rows were older than the version asked for (or missing).
    Behind,
    /// Every replica that answers is further behind than `query.replica_max_lag_ms`.
    Lagging,
    /// No replica answers.
    Unavailable,
    /// The replica's read failed or timed out.
    Failed,
}

impl Fallback {
    /// Every reason, for declaring the series.
    pub(crate) const ALL: [Fallback; 4] = [Self::Behind, Self::Lagging, Self::Unavailable, Self::Failed];

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Behind => "behind",
            Self::Lagging => "lagging",
            Self::Unavailable => "unavailable",
            Self::Failed => "failed",
        }
    }
}

/// The rows of a read and who answered them.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The first column of each row.
    pub(crate) rows: Vec<Value>,
    /// Which server answered (rows from a replica must not refill the cache).
    pub(crate) source: Source,
}

/// What is known of one replica (from the last probe, and reads that failed since).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplicaReport {
    /// `host:port/database`.
    pub(crate) target: String,
    /// Why it is skipped as down; `None` while it answers.
    pub(crate) trouble: Option<String>,
    /// Time since it was last seen caught up with the primary; `None` when never seen so.
    pub(crate) lag: Option<Duration>,
    /// Whether that is beyond `query.replica_max_lag_ms` (it is skipped meanwhile).
    pub(crate) lagging: bool,
}

/// The PostgreSQL side of the read path. Cheap to clone; clones share pools and state.
#[derive(Debug, Clone)]
pub(crate) struct RowSource {
    inner: Arc<Sources>,
}

#[derive(Debug)]
struct Sources {
    /// The primary: the fallback of every read, the only source of `Latest` ones, and where
    /// the generations are read.
    primary: Database,
    /// The replicas, in `query.replica_urls` order.
    replicas: Vec<Replica>,
    /// `query.replica_max_lag_ms`; `None` for no bound.
    max_lag: Option<Duration>,
    /// `query.replica_timeout_ms`.
    timeout: Duration,
    /// Round-robin cursor over the replicas.
    next: AtomicUsize,
    /// The primary's WAL position at recent probes, oldest first: (when sampled, LSN).
    positions: Mutex<VecDeque<(Instant, u64)>>,
}

/// One read replica.
#[derive(Debug)]
struct Replica {
    /// Its connection settings: the primary's, with the replica's URL.
    config: PostgresConfig,
    /// `host:port/database`: its name in metrics, logs and readiness.
    target: String,
    /// Its pool, once connected (a replica away at start is connected by a later probe).
    pool: OnceLock<Database>,
    /// What the request path and the probes know of it.
    state: Mutex<ReplicaState>,
}

#[derive(Debug)]
struct ReplicaState {
    /// Why it is skipped as down; `None` while usable.
    trouble: Option<String>,
    /// When the primary position it was last seen to have replayed was sampled: it holds every
    /// commit made before then.
    caught_up_at: Option<Instant>,
}

impl Replica {
    fn state(&self) -> MutexGuard<'_, ReplicaState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Skips the replica until a probe sees it answer; logs the change.
    fn mark_down(&self, reason: String) {
        let mut state = self.state();
        if state.trouble.is_none() {
            tracing::warn!(replica = %self.target, reason = %reason, "replica down; its reads go to the primary");
            metrics::replica_up(&self.target, false);
        }
        state.trouble = Some(reason);
    }
}

impl RowSource {
    /// The primary and the replicas of `query.replica_urls` (connection settings from
    /// `postgres`). Connects and measures the replicas that answer now; one that does not is
    /// skipped (its reads go to the primary) until a probe connects it. A replica whose
    /// settings, credentials or certificate are refused is an error, as the primary's are.
    pub(crate) async fn connect(
        primary: Database,
        postgres: &PostgresConfig,
        query: &QueryConfig,
    ) -> anyhow::Result<Self> {
        let mut replicas = Vec::new();
        for (index, config) in query.replica_postgres(postgres)?.into_iter().enumerate() {
            let pg = prism_postgres::pool::client_config(&config, APPLICATION_NAME)
                .with_context(|| format!("query.replica_urls[{index}]"))?;
            replicas.push(Replica {
                target: describe(&pg),
                config,
                pool: OnceLock::new(),
                state: Mutex::new(ReplicaState {
                    trouble: Some("not connected yet".into()),
                    caught_up_at: None,
                }),
            });
        }
        let source = Self {
            inner: Arc::new(Sources {
                primary,
                replicas,
                max_lag: (query.replica_max_lag_ms > 0)
                    .then(|| Duration::from_millis(query.replica_max_lag_ms)),
                timeout: Duration::from_millis(query.replica_timeout_ms.max(1)),
                next: AtomicUsize::new(0),
                positions: Mutex::new(VecDeque::new()),
            }),
        };
        for replica in &source.inner.replicas {
            match tokio::time::timeout(PROBE_TIMEOUT, Database::connect(&replica.config, APPLICATION_NAME))
                .await
            {
                Ok(Ok(db)) => {
                    let _ = replica.pool.set(db);
                }
                Ok(Err(
                    err @ (StoreError::WrongPassword { .. }
                    | StoreError::LoginRefused { .. }
                    | StoreError::UntrustedCertificate { .. }
                    | StoreError::Tls { .. }),
                )) => {
                    return Err(anyhow::Error::new(err).context(format!(
                        "connecting to the read replica at {} (query.replica_urls)",
                        replica.target
                    )))
                }
                Ok(Err(err)) => {
                    tracing::warn!(replica = %replica.target, error = %err, "replica unreachable at start; its reads go to the primary until it answers");
                }
                Err(_) => {
                    tracing::warn!(replica = %replica.target, "replica not answering at start; its reads go to the primary until it answers");
                }
            }
        }
        if source.has_replicas() {
            source.probe_replicas().await;
        }
        Ok(source)
    }

    /// The primary.
    pub(crate) fn primary(&self) -> &Database {
        &self.inner.primary
    }

    /// Whether any replica is configured.
    pub(crate) fn has_replicas(&self) -> bool {
        !self.inner.replicas.is_empty()
    }

    /// The first column of the rows `sql` selects (a jsonb value per row), with `params`, from
    /// a server that satisfies `freshness` (see the module docs). Counts the answer under
    /// `read_model`, and the fallback when a replica could have answered and the primary did.
    pub(crate) async fn rows(
        &self,
        read_model: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        freshness: Freshness,
    ) -> Result<Answer, StoreError> {
        if freshness != Freshness::Latest && self.has_replicas() {
            let fallback = match self.pick() {
                Ok((index, db)) => match self.read_replica(index, &db, sql, params).await {
                    Ok(rows) if freshness.accepts(&rows) => {
                        metrics::source_read(read_model, Source::Replica);
                        return Ok(Answer { rows, source: Source::Replica });
                    }
                    Ok(_) => Fallback::Behind,
                    // The request's own fault (a key that is no value of the column's type): the
                    // primary would refuse it alike.
                    Err(err) if is_about_the_input(&err) => return Err(err),
                    Err(_) => Fallback::Failed,
                },
                Err(reason) => reason,
            };
            metrics::replica_fallback(read_model, fallback);
        }
        let rows = query(&self.inner.primary, sql, params).await?;
        metrics::source_read(read_model, Source::Primary);
        Ok(Answer { rows, source: Source::Primary })
    }

    /// Whether the primary answers (readiness: replicas only degrade).
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.inner.primary.ping().await
    }

    /// Probes every replica: connects those not connected yet, checks each answers and is a
    /// standby, and measures its lag against the primary's WAL position sampled now. Updates
    /// what reads use, the replica gauges, and logs changes.
    pub(crate) async fn probe_replicas(&self) -> Vec<ReplicaReport> {
        let sampled_at = Instant::now();
        match tokio::time::timeout(PROBE_TIMEOUT, primary_position(&self.inner.primary)).await {
            Ok(Ok(lsn)) => {
                let mut positions =
                    self.inner.positions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                positions.push_back((sampled_at, lsn));
                while positions.len() > MAX_POSITIONS {
                    positions.pop_front();
                }
            }
            // Lag cannot be measured meanwhile; it grows from the last measurement.
            Ok(Err(err)) => tracing::debug!(error = %err, "reading the primary's WAL position failed"),
            Err(_) => tracing::debug!("the primary did not give its WAL position in time"),
        }
        let positions: Vec<(Instant, u64)> = self
            .inner
            .positions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .copied()
            .collect();
        futures::future::join_all(self.inner.replicas.iter().map(|replica| self.probe(replica, &positions)))
            .await
    }

    async fn probe(&self, replica: &Replica, positions: &[(Instant, u64)]) -> ReplicaReport {
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, async {
            let db = match replica.pool.get() {
                Some(db) => db.clone(),
                None => {
                    let db = Database::connect(&replica.config, APPLICATION_NAME).await?;
                    replica.pool.get_or_init(|| db).clone()
                }
            };
            let client = db.client().await?;
            let row = client.query_one(include_str!("../../sql/replica_position.sql"), &[]).await?;
            Ok::<_, StoreError>((row.try_get::<_, bool>(0)?, row.try_get::<_, Option<String>>(1)?))
        })
        .await;
        let trouble = match outcome {
            Ok(Ok((true, replayed))) => {
                if let Some(at) =
                    replayed.as_deref().and_then(parse_lsn).and_then(|lsn| caught_up_since(positions, lsn))
                {
                    let mut state = replica.state();
                    state.caught_up_at = Some(state.caught_up_at.map_or(at, |known| known.max(at)));
                }
                None
            }
            Ok(Ok((false, _))) => {
                Some("not a standby (pg_is_in_recovery() is false), so not used as a replica".to_owned())
            }
            Ok(Err(err)) => Some(err.to_string()),
            Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
        };
        let now = Instant::now();
        let mut state = replica.state();
        match (&state.trouble, &trouble) {
            (Some(_), None) => tracing::info!(replica = %replica.target, "replica answers; serving reads"),
            (None, Some(reason)) => {
                tracing::warn!(replica = %replica.target, reason = %reason, "replica down; its reads go to the primary");
            }
            _ => {}
        }
        state.trouble = trouble;
        let report = self.report(replica, &state, now);
        metrics::replica_up(&replica.target, report.trouble.is_none());
        metrics::replica_lag(&replica.target, report.lag);
        report
    }

    /// What is known of every replica now, without probing.
    pub(crate) fn replica_reports(&self) -> Vec<ReplicaReport> {
        let now = Instant::now();
        self.inner.replicas.iter().map(|replica| self.report(replica, &replica.state(), now)).collect()
    }

    fn report(&self, replica: &Replica, state: &ReplicaState, now: Instant) -> ReplicaReport {
        ReplicaReport {
            target: replica.target.clone(),
            trouble: state.trouble.clone(),
            lag: state.caught_up_at.map(|at| now.saturating_duration_since(at)),
            lagging: self.too_far_behind(state, now),
        }
    }

    /// The next usable replica (its index and pool), round robin; otherwise why there is none.
    fn pick(&self) -> Result<(usize, Database), Fallback> {
        let replicas = &self.inner.replicas;
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut lagging = false;
        for offset in 0..replicas.len() {
            let index = (start + offset) % replicas.len();
            let replica = &replicas[index];
            let Some(db) = replica.pool.get() else { continue };
            let state = replica.state();
            if state.trouble.is_some() {
                continue;
            }
            if self.too_far_behind(&state, now) {
                lagging = true;
                continue;
            }
            return Ok((index, db.clone()));
        }
        Err(if lagging { Fallback::Lagging } else { Fallback::Unavailable })
    }

    /// Whether a replica is beyond `query.replica_max_lag_ms` (never seen caught up counts as
    /// beyond).
    fn too_far_behind(&self, state: &ReplicaState, now: Instant) -> bool {
        self.inner
            .max_lag
            .is_some_and(|max| state.caught_up_at.is_none_or(|at| now.saturating_duration_since(at) > max))
    }

    /// A read on `replica`, bounded by `query.replica_timeout_ms`. A failure of the connection
    /// (not of the statement) or a timeout marks it down.
    async fn read_replica(
        &self,
        index: usize,
        db: &Database,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Value>, StoreError> {
        let replica = &self.inner.replicas[index];
        match tokio::time::timeout(self.inner.timeout, query(db, sql, params)).await {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(err)) => {
                if breaks_the_replica(&err) {
                    replica.mark_down(err.to_string());
                } else {
                    // E.g. a query cancelled by a recovery conflict, or a table the replica has
                    // not replayed yet: this read goes to the primary, the next may not.
                    tracing::debug!(replica = %replica.target, error = %err, "replica read failed; the primary answers");
                }
                Err(err)
            }
            Err(_) => {
                let detail = format!("no answer within {:?} (query.replica_timeout_ms)", self.inner.timeout);
                replica.mark_down(detail.clone());
                Err(StoreError::Unreachable { target: replica.target.clone(), detail })
            }
        }
    }
}

/// The first column of each row of `sql` on `db`.
async fn query(db: &Database, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Value>, StoreError> {
    let client = db.client().await?;
    let statement = client.prepare_cached(sql).await?;
    let rows = client.query(&statement, params).await?;
    rows.iter().map(|row| row.try_get::<_, Value>(0).map_err(StoreError::from)).collect()
}

/// The primary's current WAL write position.
async fn primary_position(primary: &Database) -> Result<u64, StoreError> {
    let client = primary.client().await?;
    let row = client.query_one(include_str!("../../sql/primary_position.sql"), &[]).await?;
    let text: String = row.try_get(0)?;
    parse_lsn(&text).ok_or_else(|| StoreError::Corrupt { what: "pg_current_wal_lsn()", detail: text })
}

/// Whether a failed read is the request's own fault (class 22, data exception: a key that is no
/// value of the column's type), which every server answers alike.
fn is_about_the_input(err: &StoreError) -> bool {
    err.sql_state().is_some_and(|state| state.code().starts_with("22"))
}

/// Whether a failed replica read says the replica itself is away (connection lost or refused,
/// no connection in time, shutting down, out of connections), rather than the statement failed.
fn breaks_the_replica(err: &StoreError) -> bool {
    match err.sql_state() {
        None => true,
        Some(state) => ["08", "53", "57", "58"].iter().any(|class| state.code().starts_with(class)),
    }
}

/// A `pg_lsn` as text (`16/B374D848`) as a number.
fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// The latest sample time whose primary position `replayed` has reached.
fn caught_up_since(positions: &[(Instant, u64)], replayed: u64) -> Option<Instant> {
    positions.iter().rev().find(|(_, lsn)| *lsn <= replayed).map(|(at, _)| *at)
}

/// `host:port/database` of a connection configuration.
fn describe(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let host = match pg.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", pg.get_dbname().unwrap_or("postgres"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_replica_row_satisfies_read_your_writes_only_at_the_version_asked_for() {
        let at = |v: i64| json!({ "id": "a", "prism_version": v });
        assert!(Freshness::AtLeast(3).accepts(&[at(3)]));
        assert!(Freshness::AtLeast(3).accepts(&[at(7)]));
        assert!(!Freshness::AtLeast(3).accepts(&[at(2)]), "older than asked");
        assert!(
            !Freshness::AtLeast(3).accepts(&[]),
            "missing on the replica is not yet replayed, not absent"
        );
        assert!(!Freshness::AtLeast(3).accepts(&[json!({ "id": "a" })]), "no version column");
        assert!(!Freshness::AtLeast(3).accepts(&[at(5), at(2)]), "every row must have it");
        assert!(Freshness::Any.accepts(&[]) && Freshness::Any.accepts(&[at(0)]));
        assert!(!Freshness::Latest.accepts(&[at(9)]), "the primary's answer only");
    }

    #[test]
    fn lsns_compare_as_numbers() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x0300_0060));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert!(parse_lsn("1/FFFFFFFF") < parse_lsn("2/0"));
        assert_eq!(parse_lsn("garbage"), None);
    }

    #[test]
    fn lag_counts_from_the_latest_primary_position_the_replica_has_replayed() {
        let t0 = Instant::now();
        let positions = [(t0, 100), (t0 + Duration::from_secs(1), 200), (t0 + Duration::from_secs(2), 300)];
        assert_eq!(caught_up_since(&positions, 250), Some(t0 + Duration::from_secs(1)));
        assert_eq!(caught_up_since(&positions, 300), Some(t0 + Duration::from_secs(2)));
        assert_eq!(caught_up_since(&positions, 999), Some(t0 + Duration::from_secs(2)));
        assert_eq!(caught_up_since(&positions, 99), None, "behind every sample kept");
    }

    #[test]
    fn only_failures_of_the_connection_take_a_replica_out() {
        assert!(breaks_the_replica(&StoreError::PoolTimeout));
        assert!(breaks_the_replica(&StoreError::Unreachable {
            target: "r".into(),
            detail: "refused".into()
        }));
    }
}
