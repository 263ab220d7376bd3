//! `prism-commands`: the command side of the Prism engine, as a library for any application.
//!
//! An application's command service loads an aggregate's stream, runs the aggregate's pure
//! [`decide`](prism_events::Aggregate::decide), and appends the decided events with the
//! expected version and their outbox rows in one PostgreSQL transaction; the outbox relay then
//! publishes them to Kafka, in order per aggregate. Nothing here knows what the events mean:
//! the aggregates, the routes and the refusals are the application's.
//!
//! - [`service`]: [`CommandService`] — load → decide → append, `If-Match`, idempotency keys
//!   (request fingerprint, replay, reuse refused), and [`Decision`]s that append to several
//!   aggregates in one transaction.
//! - [`states`]: the states of recently used aggregates, kept between commands so a command
//!   folds only the events appended since its aggregate was last loaded.
//! - [`http`]: what an application's HTTP command API mounts: the error body contract
//!   `{"error": {"code", "reason"?, "field"?, "message"}}` ([`ApiError`](http::ApiError)),
//!   strict JSON object bodies with a size limit, `Idempotency-Key`, `If-Match`,
//!   `X-Correlation-Id`, per-command metrics.
//! - [`relay`]: the outbox relay (lanes, ordering, retries, the window it leaves open). It
//!   reads bytes and needs no application code: the `prism-relay` binary runs it alone, for
//!   command services written in other languages (see `CONTRACT.md` in `prism-event-store`).
//! - [`readiness`]: what `/readyz` checks (PostgreSQL, the event store's tables, the broker).
//! - [`metrics`]: request, backlog and relay metrics.
//! - this file: [`serve`] / [`run`], which serve an application's [`CommandApi`] with the
//!   operations endpoints (`/metrics`, `/healthz`, `/readyz` on the same listener) and the
//!   background tasks (readiness checks, backlog sampling, idempotency purge, relay), and
//!   shut them down in order: stop accepting requests, let requests in flight finish, let the
//!   relay finish its round, return. [`serve_relay`] / [`run_relay`]: the same without an API.

#![deny(missing_docs)]

pub mod http;
pub mod metrics;
pub mod readiness;
pub mod relay;
pub mod service;
pub mod states;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use prism_config::PrismConfig;
use prism_event_store::{idempotency, EventStore};
use prism_events::EventRegistry;
use prism_postgres::Database;
use prism_runtime::http::ops_router;
use prism_runtime::Health;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use prism_event_store::StreamAppend;

pub use crate::http::ApiState;
pub use crate::service::{
    CommandService, Decision, IdempotencyKey, Loaded, Reply, RequestMeta, ServiceError, StreamOutcome,
};

/// Longest pause between idempotency purges (shorter when the retention is shorter).
const PURGE_INTERVAL: Duration = Duration::from_secs(300);

/// An application's command API: its events (how stored streams decode) and its routes.
#[derive(Debug)]
pub struct CommandApi {
    /// The application's events.
    pub events: EventRegistry,
    /// The application's routes; their handlers get the [`ApiState`].
    pub routes: Router<ApiState>,
    /// Names the service in logs (e.g. `shop-commands`).
    pub name: &'static str,
}

/// Binds `commands.listen` and serves `api` until `shutdown` resolves (see [`serve`]).
pub async fn run(
    config: PrismConfig,
    api: CommandApi,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = bind(&config).await?;
    serve(config, api, listener, shutdown).await
}

/// Serves `api` on `listener` with `/metrics`, `/healthz` and `/readyz`, and runs the outbox
/// relay when `relay.enabled`, until `shutdown` resolves; then drains: requests in flight
/// finish, the relay finishes its round, background tasks stop.
///
/// Fails at start when PostgreSQL is unreachable. A schema without the event store's tables
/// does not stop it: `/readyz` answers 503 naming the missing tables until they exist (see
/// [`readiness`]).
pub async fn serve(
    config: PrismConfig,
    api: CommandApi,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    serve_inner(config, Some(api), listener, shutdown).await
}

/// Binds `commands.listen` and runs the outbox relay with the operations endpoints only, until
/// `shutdown` resolves (see [`serve_relay`]).
pub async fn run_relay(
    config: PrismConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = bind(&config).await?;
    serve_relay(config, listener, shutdown).await
}

/// The outbox relay with `/metrics`, `/healthz` and `/readyz` on `listener` and no command
/// routes, whatever `relay.enabled` says: for events appended by a command service in another
/// language through the documented contract.
pub async fn serve_relay(
    mut config: PrismConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.relay.enabled = true;
    serve_inner(config, None, listener, shutdown).await
}

async fn bind(config: &PrismConfig) -> anyhow::Result<TcpListener> {
    TcpListener::bind(&config.commands.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.commands.listen))
}

async fn serve_inner(
    config: PrismConfig,
    api: Option<CommandApi>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let name = api.as_ref().map_or("prism-relay", |api| api.name);
    let prometheus = prism_runtime::telemetry::install();
    metrics::describe();
    let db = Database::connect(&config.postgres, name)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", config.postgres.url))?;
    prism_kafka::client::refuse_wrong_credentials(&config.kafka, name).await?;
    let health = Health::new();
    health.set("postgres", true, "connected");
    if !readiness::check_event_store(&db, &health).await {
        let detail =
            health.snapshot().get(readiness::EVENT_STORE_CHECK).map(|c| c.detail.clone()).unwrap_or_default();
        tracing::warn!(%detail, "the event store is not set up: not ready until it is");
    }
    let ttl = Duration::from_secs(config.commands.idempotency_ttl_seconds);
    let routes = match api {
        Some(CommandApi { events, routes, .. }) => {
            let store = EventStore::new(db.clone(), events, config.topics.prefix.clone());
            let state = ApiState {
                service: Arc::new(
                    CommandService::new(store, ttl).keeping_states(config.commands.cached_aggregates),
                ),
                max_body_bytes: config.commands.max_body_bytes,
            };
            http::finish(routes, state)
        }
        None => Router::new().fallback(|| async { http::ApiError::no_route() }),
    };
    let app = routes
        .merge(ops_router(prometheus, health.clone()))
        .method_not_allowed_fallback(http::method_not_allowed);

    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(readiness::run(config.clone(), db.clone(), health.clone(), stop.clone()));
    tasks.spawn(metrics::sample_backlog(db.clone(), stop.clone()));
    tasks.spawn(purge_idempotency(db.clone(), ttl, stop.clone()));
    let relay = if config.relay.enabled {
        Some(tokio::spawn(relay::run(config.clone(), db.clone(), stop.clone())))
    } else {
        None
    };

    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(%address, service = name, relay = config.relay.enabled, "command service listening");
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    tracing::info!(service = name, "command service draining");
    let _ = stop_tx.send(true);
    if let Some(relay) = relay {
        relay.await.context("the relay task panicked")?.context("the outbox relay could not run")?;
    }
    while tasks.join_next().await.is_some() {}
    served.context("serving HTTP")?;
    tracing::info!(service = name, "command service stopped");
    Ok(())
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
            Err(err) => {
                tracing::warn!(error = %service::error_chain(&err), "purging idempotency records failed")
            }
        }
    }
}
