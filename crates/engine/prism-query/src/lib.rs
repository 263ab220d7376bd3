//! `prism-query`: the read side's HTTP API. It serves every read model as JSON: entities
//! from Redis first and PostgreSQL on a miss (refilling Redis under the projector's version
//! guard), lists and ranges from PostgreSQL, always through the views that select each
//! projection's active generation.
//!
//! - [`http`]: the routes, the read-your-writes answer and the list formats.
//! - [`reader`]: cache-aside reads, refills, read-your-writes waits, list queries.
//! - [`notify`]: the one `LISTEN` connection of the process and the per-projection signals
//!   it fans out to waiting requests.
//! - [`generations`]: the active generation per projection, which names the cache keys.
//! - [`models`]: which projection, query, version and revision each entity has.
//! - [`params`], [`cursor`]: request parameters and opaque pagination cursors.
//! - [`error`]: [`ApiError`](error::ApiError) and the status/code table.
//! - [`metrics`]: request, cache and staleness metrics.
//! - this file: [`run`] / [`serve`], which wire the pieces and the background tasks
//!   (listener, readiness probe) and stop them in order on shutdown.
//!
//! `/metrics`, `/healthz` and `/readyz` are served on the same listener as the API;
//! `/readyz` passes while PostgreSQL and Redis answer and the listener is listening.
//! SQL lives in `sql/*.sql`.

pub mod cursor;
pub mod error;
pub mod generations;
pub mod http;
pub mod metrics;
pub mod models;
pub mod notify;
pub mod params;
pub mod reader;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prism_cache::Cache;
use prism_config::PrismConfig;
use prism_runtime::http::ops_router;
use prism_runtime::Health;
use prism_store::Database;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::generations::ActiveGenerations;
use crate::http::{AppState, Limits};
use crate::notify::{AppliedSignals, Listener};
use crate::reader::ReadModels;

/// How often readiness re-checks PostgreSQL and Redis.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for one readiness probe.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `query.listen` and serves until `shutdown` resolves.
pub async fn run(
    config: PrismConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.query.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.query.listen))?;
    serve(config, listener, shutdown).await
}

/// Serves the API on `listener` until `shutdown` resolves, then drains: requests in flight
/// finish (a read-your-writes wait is bounded), background tasks stop.
pub async fn serve(
    config: PrismConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let prometheus = prism_runtime::telemetry::install();
    metrics::describe(&http::ROUTES);
    let db = Database::connect(&config.postgres, "prism-query")
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", config.postgres.url))?;
    let cache = Cache::connect(&config.redis).await.context("connecting to Redis")?;
    let generations = ActiveGenerations::default();
    generations.reload(&db).await.context("reading the active generations")?;
    let signals = AppliedSignals::new();
    let health = Health::new();
    health.set("postgres", true, "connected");
    health.set("redis", true, "connected");
    health.set(notify::HEALTH_CHECK, false, "connecting");

    let reads = ReadModels::new(
        db.clone(),
        cache,
        config.redis.key_prefix.clone(),
        generations.clone(),
        signals.clone(),
    );
    let state = AppState { reads: reads.clone(), limits: Arc::new(Limits::from(&config.query)) };
    let app = http::router(state).merge(ops_router(prometheus, health.clone()));

    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let listener_task =
        Listener { postgres: config.postgres.clone(), db, generations, signals, health: health.clone() };
    tasks.spawn(listener_task.run(stop.clone()));
    tasks.spawn(check_health(reads, health, stop));

    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(%address, "query service listening");
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    tracing::info!("query service draining");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    served.context("serving HTTP")?;
    tracing::info!("query service stopped");
    Ok(())
}

/// Keeps `/readyz` current for PostgreSQL and Redis.
async fn check_health(reads: ReadModels, health: Health, mut stop: watch::Receiver<bool>) {
    loop {
        match tokio::time::timeout(HEALTH_TIMEOUT, reads.probe()).await {
            Ok((postgres, redis)) => {
                match postgres {
                    Ok(()) => health.set("postgres", true, "connected"),
                    Err(err) => health.set("postgres", false, err.to_string()),
                }
                match redis {
                    Ok(()) => health.set("redis", true, "connected"),
                    Err(err) => health.set("redis", false, err.to_string()),
                }
            }
            Err(_) => {
                let detail = format!("no answer within {HEALTH_TIMEOUT:?}");
                health.set("postgres", false, detail.clone());
                health.set("redis", false, detail);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
