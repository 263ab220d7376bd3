//! `shop-bench verify`: proves a running deployment converged. It waits until the outbox is
//! drained and the projector group has committed every event topic to its end, then folds
//! the whole event store with the test oracle and compares every read-model row in
//! PostgreSQL and every entry in Redis with that fold. Equal, or it reports the differences.
//!
//! The event store is the source of truth here (not what a load run believes it sent), so
//! the check holds for any traffic, including commands sent by hand.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context;
use prism_config::PrismConfig;
use prism_event_store::event_store::EventStore;
use prism_event_store::outbox;
use prism_postgres::Database;
use prism_projections::{Application, ProjectionInstance};
use prism_testkit::oracle::{self, CacheCheck};
use serde_json::{json, Value};

/// What `verify` waits for and how it reports.
#[derive(Debug, Clone)]
pub struct VerifyConfig {
    /// Give up after this long without convergence.
    pub wait: Duration,
    /// Print a progress line on every attempt.
    pub progress: bool,
}

/// Where the pipeline stood on one attempt.
#[derive(Debug, Clone, Default)]
pub struct Position {
    /// Events stored but not yet acknowledged by the broker.
    pub outbox_backlog: i64,
    /// Messages between the projector group's committed offsets and the end of every
    /// event topic partition.
    pub lag_messages: i64,
    /// Messages in the event topics.
    pub topic_messages: i64,
}

/// The outcome of a converged run.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    /// Events in the event store.
    pub events: usize,
    /// Events per aggregate type.
    pub events_by_type: BTreeMap<&'static str, usize>,
    /// Read-model instances compared.
    pub instances: Vec<ProjectionInstance>,
    /// PostgreSQL rows compared.
    pub rows: usize,
    /// Redis entries compared.
    pub cache_entries: usize,
    /// Where the pipeline stood when the check passed.
    pub position: Position,
    /// How long convergence took, the final comparison included.
    pub waited: Duration,
    /// When the outbox and the projector lag were first both zero, after the start.
    pub drained: Duration,
}

impl VerifyReport {
    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "events": self.events,
            "events_by_type": self.events_by_type,
            "read_models": self.instances.iter().map(|i| i.id()).collect::<Vec<_>>(),
            "postgres_rows": self.rows,
            "redis_entries": self.cache_entries,
            "outbox_backlog": self.position.outbox_backlog,
            "lag_messages": self.position.lag_messages,
            "topic_messages": self.position.topic_messages,
            "waited_seconds": self.waited.as_secs_f64(),
            "drained_seconds": self.drained.as_secs_f64(),
        })
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let by_type: Vec<String> = self.events_by_type.iter().map(|(t, n)| format!("{t} {n}")).collect();
        writeln!(f, "event store:  {} events ({})", self.events, by_type.join(", "))?;
        writeln!(
            f,
            "pipeline:     outbox backlog {}, projector lag {} of {} messages",
            self.position.outbox_backlog, self.position.lag_messages, self.position.topic_messages
        )?;
        let ids: Vec<String> = self.instances.iter().map(|i| i.id()).collect();
        writeln!(f, "read models:  {}", ids.join(", "))?;
        write!(
            f,
            "verified:     {} PostgreSQL rows and {} Redis entries equal the fold of the event store (after {:.1}s)",
            self.rows,
            self.cache_entries,
            self.waited.as_secs_f64()
        )
    }
}

/// Waits for convergence and checks the read models; `Err` carries the last difference.
pub async fn run(config: &PrismConfig, settings: &VerifyConfig) -> anyhow::Result<VerifyReport> {
    let app = shop_model::application();
    let db = Database::connect(&config.postgres, "shop-bench-verify")
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", config.postgres.url))?;
    let store = EventStore::new(db.clone(), app.events().clone(), config.topics.prefix.clone());
    let started = Instant::now();
    let deadline = started + settings.wait;
    let mut drained = None;
    loop {
        let (position, outcome) = attempt(config, &app, &db, &store, || {
            drained.get_or_insert_with(|| started.elapsed());
        })
        .await?;
        match outcome {
            Ok(report) => {
                let waited = started.elapsed();
                return Ok(VerifyReport { waited, drained: drained.unwrap_or(waited), position, ..report });
            }
            Err(difference) => {
                if Instant::now() >= deadline {
                    anyhow::bail!(
                        "the read models did not converge within {:?}: outbox backlog {}, lag {} messages\n{difference}",
                        settings.wait,
                        position.outbox_backlog,
                        position.lag_messages
                    );
                }
                if settings.progress {
                    let first = difference.lines().next().unwrap_or_default();
                    eprintln!(
                        "verify: waiting ({:>4.0}s): outbox backlog {}, lag {} messages; {first}",
                        started.elapsed().as_secs_f64(),
                        position.outbox_backlog,
                        position.lag_messages
                    );
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One look: the pipeline's position and, once it is drained, the oracle comparison.
/// `on_drained` runs as soon as the position reads zero, before the (longer) comparison.
async fn attempt(
    config: &PrismConfig,
    app: &Application,
    db: &Database,
    store: &EventStore,
    on_drained: impl FnOnce(),
) -> anyhow::Result<(Position, Result<VerifyReport, String>)> {
    let backlog = outbox::backlog(db).await.context("reading the outbox backlog")?;
    let (lag_messages, topic_messages) = projector_lag(config, app).await?;
    let position = Position { outbox_backlog: backlog.events, lag_messages, topic_messages };
    if backlog.events > 0 || lag_messages > 0 {
        return Ok((position, Err("the pipeline is still moving".to_owned())));
    }
    on_drained();

    let events = store.load_all().await.context("reading the event store")?;
    let client = db.client().await.context("PostgreSQL connection")?;
    let names: Vec<&'static str> = if config.projector.projections.is_empty() {
        app.read_models().iter().map(|m| m.name()).collect()
    } else {
        app.read_models()
            .iter()
            .map(|m| m.name())
            .filter(|n| config.projector.projections.iter().any(|p| p == n))
            .collect()
    };
    let targets = oracle::active_targets(&**client, app, &names, "shop-projector migrate").await?;
    let expected = crate::testing::oracle::fold(&events);
    let outcome = oracle::check_expected(
        &expected,
        &client,
        &config.redis.url,
        &config.redis.key_prefix,
        &targets,
        CacheCheck::Complete,
    )
    .await?;
    let mut events_by_type: BTreeMap<&'static str, usize> = BTreeMap::new();
    for event in &events {
        *events_by_type.entry(event.meta.aggregate_type.as_str()).or_default() += 1;
    }
    Ok((
        position.clone(),
        outcome.map(|summary| VerifyReport {
            events: events.len(),
            events_by_type,
            instances: targets.iter().map(|(instance, _)| *instance).collect(),
            rows: summary.rows,
            cache_entries: summary.cache_entries,
            position,
            waited: Duration::ZERO,
            drained: Duration::ZERO,
        }),
    ))
}

/// Sum of (end offset - committed offset) over every event topic partition, and the sum of
/// end offsets. A partition the group never committed counts from its start.
async fn projector_lag(config: &PrismConfig, app: &Application) -> anyhow::Result<(i64, i64)> {
    let topics: Vec<String> = app.aggregate_types().iter().map(|t| t.topic(&config.topics.prefix)).collect();
    let group = prism_kafka::admin::projector_group_id(config);
    let ends = prism_testkit::kafka::end_offsets(config, &topics)
        .await
        .with_context(|| format!("reading end offsets from {}", config.kafka.bootstrap_servers))?;
    let committed = prism_testkit::kafka::committed_offsets(config, &group, &topics)
        .await
        .with_context(|| format!("reading {group}'s committed offsets"))?;
    let mut lag = 0;
    let mut total = 0;
    for (partition, end) in &ends {
        total += end;
        lag += (end - committed.get(partition).copied().unwrap_or(0)).max(0);
    }
    Ok((lag, total))
}
