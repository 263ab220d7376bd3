//! `prism-projector`: keeps an application's read models exact.
//!
//! An application runs its projector workers with [`main`] (its binary is a few lines: see the
//! shop's `shop-projector`), or [`run`] from its own code. Every worker of a deployment is a
//! member of one consumer group (`projector.group`) that consumes the event topics of the
//! configured read models. Per batch of one partition: decode and validate → version gate →
//! the read models' folds and sums, for every read model the topic feeds → one PostgreSQL
//! transaction → version-guarded Redis writes → dead letters copied to their topic → offsets
//! stored for commit. The README's guarantees list the invariants this upholds.
//!
//! Besides the live group, each worker does what `prismctl` asks of the application (it has the
//! folds, prismctl has none): it builds the generations a blue/green rebuild registered
//! ([`builder`]) and runs the redrives operators request ([`requests`]).
//!
//! - [`decode`]: Kafka message → event or poison.
//! - [`handler`]: the batch handler (the steps above).
//! - [`dead_letters`]: the dead-letter topic format.
//! - [`observe`]: metrics and the stall verdict behind `/readyz`.
//! - [`replay`]: loading the ranges a rebuild registered, in bulk, before the instance takes
//!   batches of those partitions.
//! - [`builder`]: building a new generation under its own group.
//! - [`requests`]: redrives requested by operators.
//! - [`setup`]: registering the read models and creating their tables ([`migrate`]).
//! - [`embedded`]: a projector on a task of another process, with a clean stop.

#![deny(missing_docs)]

pub mod builder;
pub mod dead_letters;
pub mod decode;
pub mod embedded;
pub mod handler;
pub mod observe;
pub mod replay;
pub mod requests;
pub mod setup;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prism_cache::Cache;
use prism_config::{GapPolicyConfig, PrismConfig};
use prism_kafka::consumer::{ConsumerRuntime, ConsumerSettings};
use prism_kafka::EventProducer;
use prism_postgres::Database;
use prism_projections::{Application, GapPolicy, ProjectionInstance};
use prism_runtime::Health;

pub use crate::embedded::Embedded;
use crate::handler::ProjectionHandler;
use crate::observe::Progress;
pub use crate::setup::migrate;

/// The read models `config` asks this process to maintain: `projector.projections`, or all of
/// the application's when that is empty. Unknown names are an error naming the known ones.
pub fn selected_read_models(config: &PrismConfig, app: &Application) -> anyhow::Result<Vec<&'static str>> {
    if config.projector.projections.is_empty() {
        return Ok(app.read_models().iter().map(|m| m.name()).collect());
    }
    config
        .projector
        .projections
        .iter()
        .map(|name| {
            app.read_model(name).map(|m| m.name()).with_context(|| {
                let known: Vec<&str> = app.read_models().iter().map(|m| m.name()).collect();
                format!(
                    "projector.projections names `{name}`, which {} does not define (it has: {})",
                    app.name(),
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// The projection instances this process builds: the configured read models at
/// `projector.generation`, or at their active generation when it is 0. Their tables must
/// exist and match the application's definitions (the application's `migrate` sets them up).
pub async fn instances(
    config: &PrismConfig,
    app: &Application,
    db: &Database,
) -> anyhow::Result<Vec<ProjectionInstance>> {
    let client = db.client().await?;
    setup::check_registered(&**client, app).await?;
    let mut instances = Vec::new();
    for name in selected_read_models(config, app)? {
        let generation = match config.projector.generation {
            0 => prism_read_store::read_models::active_generation(&**client, name).await?.with_context(
                || {
                    format!(
                        "read model {name} has no active generation: run `{}-projector migrate` first",
                        app.name()
                    )
                },
            )?,
            generation => generation,
        };
        let instance = ProjectionInstance::new(name, generation);
        anyhow::ensure!(
            prism_read_store::read_models::table_exists(&**client, instance).await?,
            "the table of {instance} does not exist: run `{}-projector migrate` (or the rebuild that allocated it) first",
            app.name()
        );
        instances.push(instance);
    }
    anyhow::ensure!(!instances.is_empty(), "no read model to maintain");
    Ok(instances)
}

/// The consumer group id: `projector.group` under the topic prefix.
pub fn group_id(config: &PrismConfig) -> String {
    prism_kafka::admin::projector_group_id(config)
}

fn consumer_settings(
    config: &PrismConfig,
    app: &Application,
    instances: &[ProjectionInstance],
) -> ConsumerSettings {
    let p = &config.projector;
    let mut sources: Vec<prism_events::AggregateType> =
        instances.iter().filter_map(|i| app.read_model(i.projection)).flat_map(|m| m.sources()).collect();
    sources.sort();
    sources.dedup();
    ConsumerSettings {
        kafka: config.kafka.clone(),
        role: format!("{}-projector", app.name()),
        group_id: group_id(config),
        topics: sources.iter().map(|t| t.topic(&config.topics.prefix)).collect(),
        group_instance_id: (!p.group_instance_id.is_empty()).then(|| p.group_instance_id.clone()),
        batch_max_messages: p.batch_max_events,
        batch_max_bytes: p.batch_max_bytes,
        batch_max_wait: Duration::from_millis(p.batch_max_wait_ms),
        commit_interval: Duration::from_millis(p.commit_interval_ms),
        commit_when_caught_up: p.commit_when_caught_up,
        session_timeout: Duration::from_millis(p.session_timeout_ms),
        shutdown_deadline: Duration::from_millis(p.shutdown_deadline_ms),
        retry_initial_backoff: Duration::from_millis(p.retry_initial_backoff_ms),
        retry_max_backoff: Duration::from_millis(p.retry_max_backoff_ms),
        max_buffered_per_partition: p.max_buffered_per_partition,
        max_buffered_bytes_per_partition: p.max_buffered_bytes_per_partition,
        max_concurrent_batches: p.max_concurrent_batches,
        max_messages_in_flight: p.max_messages_in_flight,
        max_bytes_in_flight: p.max_bytes_in_flight,
    }
}

/// The gap policy of the configuration.
pub fn gap_policy(config: &PrismConfig) -> GapPolicy {
    match config.projector.gap_policy {
        GapPolicyConfig::DeadLetter => GapPolicy::DeadLetter,
        GapPolicyConfig::Apply => GapPolicy::Apply,
    }
}

/// What a worker runs besides its live group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duties {
    /// Builds generations registered by blue/green rebuilds and runs requested redrives: every
    /// worker of a deployment.
    All,
    /// Only the consumer group: a builder started by another worker.
    GroupOnly,
}

/// Runs the configured read models of `app` until `shutdown` resolves; then in-flight batches
/// finish (or are aborted after `projector.shutdown_deadline_ms`), landed offsets are committed
/// and the process leaves its group.
pub async fn run(
    config: PrismConfig,
    app: Application,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with(config, app, health, Duties::All, shutdown).await
}

/// A worker's clients of PostgreSQL, Redis and Kafka's producer, lent to the builders it starts
/// (`crate::builder`): a builder connects to the same services with the same settings, and a
/// pool, a Redis connection and a librdkafka producer of its own for each generation being
/// built held memory the worker's own already hold.
#[derive(Debug, Clone)]
pub struct SharedClients {
    /// The worker's PostgreSQL pool.
    pub db: Database,
    /// The worker's cache.
    pub cache: Cache,
    /// The worker's producer of dead letters' copies.
    pub producer: EventProducer,
}

/// [`run`], choosing the worker's [`Duties`].
pub async fn run_with(
    config: PrismConfig,
    app: Application,
    health: Health,
    duties: Duties,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_sharing(config, app, health, duties, None, shutdown).await
}

/// [`run_with`], with the clients of the worker that started it when it is a builder (else it
/// connects its own).
pub(crate) async fn run_sharing(
    config: PrismConfig,
    app: Application,
    health: Health,
    duties: Duties,
    shared: Option<SharedClients>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = prism_runtime::telemetry::install();
    let application_name = format!("{}-projector", app.name());
    let SharedClients { db, cache, producer } = match shared {
        Some(shared) => shared,
        None => {
            let db = Database::connect(&config.postgres, &application_name)
                .await
                .context("connecting to PostgreSQL")?;
            let cache = Cache::connect(&config.redis).await.context("connecting to Redis")?;
            prism_kafka::client::refuse_wrong_credentials(&config.kafka, &application_name).await?;
            let producer =
                EventProducer::new(&config.kafka, "projector-dead-letters", config.topics.max_message_bytes)?;
            SharedClients { db, cache, producer }
        }
    };
    let policy = gap_policy(&config);

    let instances = instances(&config, &app, &db).await?;
    let progress = Arc::new(Progress::new(group_id(&config)));
    Progress::preregister_read_models(&instances);
    let handler = Arc::new(ProjectionHandler {
        app: app.clone(),
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
        kafka: config.kafka.clone(),
        replay_chunk: prism_kafka::partition_reader::ChunkSize {
            messages: config.projector.replay_chunk_events,
            bytes: config.projector.replay_chunk_bytes,
        },
        replays: replay::Replays::default(),
    });
    let mut consumer = ConsumerRuntime::start(consumer_settings(&config, &app, &instances), handler.clone())?;
    let names: Vec<String> = instances.iter().map(|i| i.id()).collect();
    tracing::info!(group = %group_id(&config), application = app.name(), read_models = ?names, "projector started");

    let (stop_duties, duties_stopped) = tokio::sync::watch::channel(false);
    let mut background = Vec::new();
    if duties == Duties::All {
        // The generations being built are loaded by this task too (a builder runs none): one
        // reader for the ranges of the same offsets of every instance, live or being built.
        let building = (config.projector.generation == 0).then(|| Arc::new(builder::Building::default()));
        background.push(tokio::spawn(replay::load_pending(
            handler,
            config.projector.replay_concurrency,
            building.clone(),
            duties_stopped.clone(),
        )));
        if let Some(building) = building {
            let read_models: Vec<&'static str> = instances.iter().map(|i| i.projection).collect();
            background.push(tokio::spawn(builder::watch(
                config.clone(),
                app.clone(),
                SharedClients { db: db.clone(), cache: cache.clone(), producer: producer.clone() },
                read_models.clone(),
                building,
                duties_stopped.clone(),
            )));
            background.push(tokio::spawn(requests::serve(
                app.clone(),
                db.clone(),
                cache.clone(),
                config.redis.key_prefix.clone(),
                policy,
                config.events.limits(),
                read_models,
                duties_stopped.clone(),
            )));
        }
    }

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
    let _ = stop_duties.send(true);
    consumer.shutdown().await;
    for task in background {
        let _ = task.await;
    }
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

/// The command line of an application's projector binary.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// Extra configuration file (repeatable; later files win; PRISM__SECTION__KEY variables
    /// win over all).
    #[arg(long, value_name = "FILE", global = true)]
    config: Vec<PathBuf>,
    /// What to do (default: run).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Keep the read models up to date until SIGTERM or Ctrl-C (the default).
    Run,
    /// Apply the engine's migrations, register the application's read models and aggregate
    /// types, and create the tables of their active generations. Idempotent; run it with the
    /// schema owner's role before the workers (they never run DDL).
    Migrate,
}

/// The `main` of an application's projector binary (`<app>-projector [run|migrate]`): loads
/// configuration, then runs or migrates. Exits 0 after a clean shutdown.
pub fn main(app: Application) -> ExitCode {
    use clap::Parser;
    let cli = Cli::parse();
    let name: &'static str = Box::leak(format!("{}-projector", app.name()).into_boxed_str());
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => prism_runtime::service::main(name, cli.config, move |config| {
            run(config, app, prism_runtime::Health::new(), prism_runtime::shutdown::signal())
        }),
        Command::Migrate => prism_runtime::service::main(name, cli.config, move |config| async move {
            let report = migrate(&config, &app).await?;
            println!("{report}");
            Ok(())
        }),
    }
}
