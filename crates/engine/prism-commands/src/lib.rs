//! `prism-commands`: the write side of Prism. It turns HTTP commands into domain events,
//! stores them with their outbox rows in one PostgreSQL transaction, and (optionally) runs
//! the outbox relay that publishes them to Kafka.
//!
//! - [`http`]: the routes of each bounded context, the request extractors and the error
//!   table. Which contexts a process serves is `commands.contexts`; they can run together or
//!   in separate processes, since they share only the event store.
//! - [`service`]: load → decide → append, idempotency keys, `If-Match`.
//! - [`relay`]: the outbox relay (lanes, ordering, retries, the window it leaves open).
//! - [`metrics`]: request, backlog and relay metrics.
//! - this file: [`run`] / [`serve`], which wire the pieces and the background tasks
//!   (readiness checks, backlog sampling, idempotency purge, relay) and shut them down in
//!   order: stop accepting requests, let requests in flight finish, let the relay finish
//!   its round, return.
//!
//! `/metrics`, `/healthz` and `/readyz` are served on the same listener as the API.
//! `/readyz` fails while PostgreSQL is unreachable and, when the relay runs here, while the
//! broker is.

pub mod http;
pub mod metrics;
pub mod relay;
pub mod service;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prism_config::PrismConfig;
use prism_runtime::http::ops_router;
use prism_runtime::Health;
use prism_store::{idempotency, Database, EventStore};
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::http::AppState;
use crate::service::CommandService;

/// How often readiness re-checks PostgreSQL and the broker.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for one readiness probe.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between idempotency purges (shorter when the retention is shorter).
const PURGE_INTERVAL: Duration = Duration::from_secs(300);

/// Binds `commands.listen` and serves until `shutdown` resolves.
pub async fn run(
    config: PrismConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.commands.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.commands.listen))?;
    serve(config, listener, shutdown).await
}

/// Serves the API on `listener` until `shutdown` resolves, then drains: requests in flight
/// finish, the relay finishes its round, background tasks stop.
pub async fn serve(
    config: PrismConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let prometheus = prism_runtime::telemetry::install();
    metrics::describe();
    let db = Database::connect(&config.postgres, "prism-commands")
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", config.postgres.url))?;
    let health = Health::new();
    health.set("postgres", true, "connected");
    let ttl = Duration::from_secs(config.commands.idempotency_ttl_seconds);
    let store = EventStore::new(db.clone(), config.topics.prefix.clone());
    let state = AppState {
        service: Arc::new(CommandService::new(store, ttl)),
        max_body_bytes: config.commands.max_body_bytes,
    };
    let app = http::router(state, &config.commands.contexts).merge(ops_router(prometheus, health.clone()));

    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(check_health(config.clone(), db.clone(), health.clone(), stop.clone()));
    tasks.spawn(metrics::sample_backlog(db.clone(), stop.clone()));
    tasks.spawn(purge_idempotency(db.clone(), ttl, stop.clone()));
    let relay = if config.relay.enabled {
        Some(tokio::spawn(relay::run(config.clone(), db.clone(), stop.clone())))
    } else {
        None
    };

    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(%address, contexts = ?config.commands.contexts, relay = config.relay.enabled, "command service listening");
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    tracing::info!("command service draining");
    let _ = stop_tx.send(true);
    if let Some(relay) = relay {
        relay.await.context("the relay task panicked")?.context("the outbox relay could not run")?;
    }
    while tasks.join_next().await.is_some() {}
    served.context("serving HTTP")?;
    tracing::info!("command service stopped");
    Ok(())
}

/// Keeps `/readyz` current: PostgreSQL always, the broker when the relay runs here.
async fn check_health(config: PrismConfig, db: Database, health: Health, mut stop: watch::Receiver<bool>) {
    let admin: Option<AdminClient<DefaultClientContext>> = if config.relay.enabled {
        match prism_kafka::base_client_config(&config.kafka, "commands-health").create() {
            Ok(admin) => Some(admin),
            Err(err) => {
                health.set("kafka", false, format!("cannot create a client: {err}"));
                None
            }
        }
    } else {
        None
    };
    let admin = admin.map(Arc::new);
    loop {
        match tokio::time::timeout(HEALTH_TIMEOUT, db.ping()).await {
            Ok(Ok(())) => health.set("postgres", true, "connected"),
            Ok(Err(err)) => health.set("postgres", false, err.to_string()),
            Err(_) => health.set("postgres", false, format!("no answer within {HEALTH_TIMEOUT:?}")),
        }
        if let Some(admin) = &admin {
            let admin = admin.clone();
            let probe = tokio::task::spawn_blocking(move || {
                admin.inner().fetch_metadata(None, HEALTH_TIMEOUT).map(|metadata| metadata.brokers().len())
            })
            .await;
            match probe {
                Ok(Ok(brokers)) => health.set("kafka", true, format!("{brokers} brokers")),
                Ok(Err(err)) => health.set(
                    "kafka",
                    false,
                    format!("{} unreachable: {err}", config.kafka.bootstrap_servers),
                ),
                Err(err) => health.set("kafka", false, format!("probe failed: {err}")),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// Removes idempotency records past their retention, periodically.
async fn purge_idempotency(db: Database, ttl: Duration, mut stop: watch::Receiver<bool>) {
    let interval = (ttl / 4).clamp(Duration::from_secs(1), PURGE_INTERVAL);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        match idempotency::purge_expired(&db, ttl).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "expired idempotency records purged"),
            Err(err) => tracing::warn!(error = %err, "purging idempotency records failed"),
        }
    }
}
