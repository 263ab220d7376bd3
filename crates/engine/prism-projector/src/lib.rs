//! `prism-projector`: keeps the read models exact.
//!
//! Every worker of a deployment is a member of one consumer group (`projector.group`) that
//! consumes the event topics of the configured read models. Per batch of one partition:
//! decode and validate → version gate → pure fold, for every read model the topic feeds → one
//! PostgreSQL transaction → version-guarded Redis writes → dead letters copied to their topic
//! → offsets stored for commit. See DESIGN.md §2 for the invariants this upholds.
//!
//! - [`decode`]: Kafka message → event or poison.
//! - [`handler`]: the batch handler (the steps above).
//! - [`dead_letters`]: the dead-letter topic format.
//! - [`observe`]: metrics and the stall verdict behind `/readyz`.
//! - [`embedded`]: a projector on a task of another process, with a clean stop.
//!
//! [`run`] takes the configuration and a shutdown future, so tests drive the real loop.

pub mod dead_letters;
pub mod decode;
pub mod embedded;
pub mod handler;
pub mod observe;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prism_cache::Cache;
use prism_config::{GapPolicyConfig, PrismConfig};
use prism_kafka::consumer::{ConsumerRuntime, ConsumerSettings};
use prism_kafka::EventProducer;
use prism_projections::{GapPolicy, ProjectionInstance, ProjectionName};
use prism_runtime::Health;
use prism_store::Database;

pub use crate::embedded::Embedded;
use crate::handler::ProjectionHandler;
use crate::observe::Progress;

/// The projection instances `config` asks this process to build.
pub async fn instances(config: &PrismConfig, db: &Database) -> anyhow::Result<Vec<ProjectionInstance>> {
    let mut instances = Vec::new();
    let client = db.client().await?;
    for name in &config.projector.projections {
        let projection: ProjectionName = name.parse().context("projector.projections")?;
        let generation = match config.projector.generation {
            0 => prism_store::read_models::active_generation(&**client, projection).await?.with_context(
                || format!("projection {projection} has no active generation: run `prismctl migrate` first"),
            )?,
            generation => generation,
        };
        instances.push(ProjectionInstance::new(projection, generation));
    }
    anyhow::ensure!(!instances.is_empty(), "projector.projections is empty: nothing to do");
    Ok(instances)
}

/// The consumer group id: `projector.group` under the topic prefix.
pub fn group_id(config: &PrismConfig) -> String {
    prism_kafka::admin::projector_group_id(config)
}

fn consumer_settings(config: &PrismConfig, instances: &[ProjectionInstance]) -> ConsumerSettings {
    let p = &config.projector;
    let mut sources: Vec<prism_events::AggregateType> =
        instances.iter().flat_map(|i| i.projection.sources().iter().copied()).collect();
    sources.sort();
    sources.dedup();
    ConsumerSettings {
        kafka: config.kafka.clone(),
        role: "projector".into(),
        group_id: group_id(config),
        topics: sources.iter().map(|t| t.topic(&config.topics.prefix)).collect(),
        group_instance_id: (!p.group_instance_id.is_empty()).then(|| p.group_instance_id.clone()),
        batch_max_messages: p.batch_max_events,
        batch_max_wait: Duration::from_millis(p.batch_max_wait_ms),
        commit_interval: Duration::from_millis(p.commit_interval_ms),
        session_timeout: Duration::from_millis(p.session_timeout_ms),
        shutdown_deadline: Duration::from_millis(p.shutdown_deadline_ms),
        retry_initial_backoff: Duration::from_millis(p.retry_initial_backoff_ms),
        retry_max_backoff: Duration::from_millis(p.retry_max_backoff_ms),
        max_buffered_per_partition: p.max_buffered_per_partition,
    }
}

/// Runs the configured projections until `shutdown` resolves; then in-flight batches finish
/// (or are aborted after `projector.shutdown_deadline_ms`), landed offsets are committed and
/// the process leaves its group.
pub async fn run(
    config: PrismConfig,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = prism_runtime::telemetry::install();
    let db =
        Database::connect(&config.postgres, "prism-projector").await.context("connecting to PostgreSQL")?;
    let cache = Cache::connect(&config.redis).await.context("connecting to Redis")?;
    let producer =
        EventProducer::new(&config.kafka, "projector-dead-letters", config.topics.max_message_bytes)?;
    let policy = match config.projector.gap_policy {
        GapPolicyConfig::DeadLetter => GapPolicy::DeadLetter,
        GapPolicyConfig::Apply => GapPolicy::Apply,
    };

    let instances = instances(&config, &db).await?;
    let progress = Arc::new(Progress::new(group_id(&config)));
    Progress::preregister_read_models(&instances);
    let handler = Arc::new(ProjectionHandler {
        instances: instances.clone(),
        follow_active: (config.projector.generation == 0).then(|| std::sync::Mutex::new(instances.clone())),
        policy,
        limits: config.events.limits(),
        topic_prefix: config.topics.prefix.clone(),
        key_prefix: config.redis.key_prefix.clone(),
        db: db.clone(),
        cache: cache.clone(),
        producer: producer.clone(),
        progress: progress.clone(),
    });
    let mut consumer = ConsumerRuntime::start(consumer_settings(&config, &instances), handler)?;
    let names: Vec<String> = instances.iter().map(|i| i.id()).collect();
    tracing::info!(group = %group_id(&config), projections = ?names, "projector started");

    let (stop_ops, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let router = prism_runtime::http::ops_router(metrics, health.clone());
    let listen = config.projector.listen.clone();
    let ops = tokio::spawn(async move {
        prism_runtime::http::serve(
            &listen,
            router,
            async {
                let _ = ops_stopped.await;
            },
            |addr| {
                tracing::info!(%addr, "operations endpoints listening");
            },
        )
        .await
    });
    let readiness = tokio::spawn(watch_readiness(
        health,
        db.clone(),
        cache.clone(),
        progress,
        Duration::from_secs(config.projector.stall_after_seconds),
    ));

    let failure = tokio::select! {
        _ = shutdown => None,
        reason = consumer.stopped() => Some(reason),
    };
    tracing::info!("stopping: finishing in-flight batches and committing offsets");
    consumer.shutdown().await;
    readiness.abort();
    let _ = stop_ops.send(());
    let _ = ops.await;
    match failure {
        Some(reason) => anyhow::bail!("a consumer stopped: {reason}"),
        None => Ok(()),
    }
}

/// Keeps `/readyz` current: PostgreSQL and Redis answer, and the group member is not stalled.
async fn watch_readiness(
    health: Health,
    db: Database,
    cache: Cache,
    progress: Arc<Progress>,
    stall_after: Duration,
) {
    loop {
        match db.ping().await {
            Ok(()) => health.set("postgres", true, "connected"),
            Err(err) => health.set("postgres", false, err.to_string()),
        }
        match cache.ping().await {
            Ok(()) => health.set("redis", true, "connected"),
            Err(err) => health.set("redis", false, err.to_string()),
        }
        match progress.stalled(stall_after) {
            Some(reason) => health.set("progress", false, reason),
            None => health.set("progress", true, "making progress"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
