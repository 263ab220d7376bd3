//! The query service of an application: [`serve`] wires the read path, the engine's and the
//! application's routes, the operations endpoints and the background tasks (notification
//! listener, readiness probe) and stops them in order; [`run`] binds `query.listen`; [`main`]
//! is an application's whole `<app>-query` binary.
//!
//! Readiness (`/readyz`) says what the service can serve: it fails while PostgreSQL does not
//! answer or the notification listener is down (read-your-writes would only end at its
//! deadline). Redis being down does not fail it — every read is still served, from
//! PostgreSQL — but shows as degraded in the `redis` check's detail and in the
//! `prism_query_cache_up` gauge. Likewise a read replica that is down or too far behind only
//! degrades (the primary answers its reads): the `replicas` check, present when
//! `query.replica_urls` lists any, says which and why, as do the `prism_query_replica_up` and
//! `prism_query_replica_lag_seconds` gauges.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use prism_cache::Cache;
use prism_config::{PrismConfig, RedisConfig};
use prism_projections::Application;
use prism_runtime::http::ops_router;
use prism_runtime::Health;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::notify::{self, Listener};
use crate::read_path::source::{self, ReplicaReport};
use crate::read_path::ReadPath;
use crate::{http, metrics};

/// How often readiness re-checks PostgreSQL and Redis.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for one readiness probe.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// The readiness check of PostgreSQL.
pub const POSTGRES_CHECK: &str = "postgres";
/// The readiness check of Redis: always passing (reads do not need it), its detail says
/// `connected` or starts with `degraded:`.
pub const REDIS_CHECK: &str = "redis";
/// The readiness check of the read replicas, when any are configured: always passing (the
/// primary answers what they cannot), its detail says how many serve or starts with
/// `degraded:` and names each replica skipped and why.
pub const REPLICAS_CHECK: &str = "replicas";

/// Binds `query.listen` and serves `app` with `app_routes` until `shutdown` resolves.
pub async fn run(
    config: PrismConfig,
    app: Application,
    app_routes: Router<ReadPath>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&config.query.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.query.listen))?;
    serve(config, app, app_routes, listener, shutdown).await
}

/// Serves `app`'s read models on `listener` until `shutdown` resolves: the engine's routes
/// ([`http::read_model_routes`]), `app_routes` (the application's own, with [`ReadPath`] as
/// their state; they must not set a fallback) and `/metrics`, `/healthz`, `/readyz`. Then it
/// drains: requests in flight finish (a read-your-writes wait is bounded), background tasks
/// stop. Refuses to start when PostgreSQL does not answer or `app`'s read models are not set
/// up (the error says what to run).
pub async fn serve(
    config: PrismConfig,
    app: Application,
    app_routes: Router<ReadPath>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let prometheus = prism_runtime::telemetry::install();
    metrics::describe(&app);
    metrics::declare_routes(&[http::READ_MODEL_ROUTE]);
    let read = ReadPath::connect(&config, app).await?;
    let health = Health::new();
    health.set(POSTGRES_CHECK, true, "connected");
    health.set(notify::HEALTH_CHECK, false, "connecting");
    redis_state(&read, &health, read.cache_slot().is_connected().then_some(Ok(())));
    let replicas = read.row_source().has_replicas();
    if replicas {
        metrics::describe_replicas(read.app());
        // Connecting measured them once already.
        replicas_state(&health, &read.row_source().replica_reports());
    }

    let service = http::router(read.clone(), app_routes)
        .merge(ops_router(prometheus, health.clone()))
        .layer(axum::middleware::map_response(http::json_method_not_allowed));

    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let listener_task = Listener {
        postgres: config.postgres.clone(),
        db: read.primary().clone(),
        generations: read.generations().clone(),
        signals: read.signals().clone(),
        health: health.clone(),
    };
    tasks.spawn(listener_task.run(stop.clone()));
    if replicas {
        tasks.spawn(watch_replicas(read.clone(), health.clone(), stop.clone()));
    }
    tasks.spawn(check_health(read, config.redis.clone(), health, stop));

    let address: SocketAddr = listener.local_addr()?;
    tracing::info!(%address, "query service listening");
    let served = axum::serve(listener, service).with_graceful_shutdown(shutdown).await;
    tracing::info!("query service draining");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    served.context("serving HTTP")?;
    tracing::info!("query service stopped");
    Ok(())
}

/// Keeps `/readyz` current for PostgreSQL and Redis, connects Redis when it was away at
/// start, and tells the read path whether to use the cache. Each dependency is probed under its
/// own time bound, so a slow Redis never makes PostgreSQL look away.
async fn check_health(read: ReadPath, redis: RedisConfig, health: Health, mut stop: watch::Receiver<bool>) {
    loop {
        let slot = read.cache_slot();
        if !slot.is_connected() {
            match tokio::time::timeout(HEALTH_TIMEOUT, Cache::connect(&redis)).await {
                Ok(Ok(cache)) => {
                    tracing::info!("redis answers; connected the cache");
                    slot.fill(cache);
                }
                Ok(Err(err)) => tracing::debug!(error = %err, "redis still unreachable"),
                Err(_) => tracing::debug!("redis still not answering"),
            }
        }
        let (postgres, cache) = tokio::join!(
            tokio::time::timeout(HEALTH_TIMEOUT, read.ping_postgres()),
            tokio::time::timeout(HEALTH_TIMEOUT, slot.ping()),
        );
        match postgres {
            Ok(Ok(())) => health.set(POSTGRES_CHECK, true, "connected"),
            Ok(Err(err)) => health.set(POSTGRES_CHECK, false, err.to_string()),
            Err(_) => health.set(POSTGRES_CHECK, false, format!("no answer within {HEALTH_TIMEOUT:?}")),
        }
        let cache = match cache {
            Ok(probe) => probe.map(|answer| answer.map_err(|err| err.to_string())),
            Err(_) => Some(Err(format!("no answer within {HEALTH_TIMEOUT:?}"))),
        };
        redis_state(&read, &health, cache);
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}

/// Records what a Redis probe saw (`None`: not connected): in the `redis` check's detail, the
/// cache gauge and the read path's use of the cache. Never fails readiness.
fn redis_state(read: &ReadPath, health: &Health, probe: Option<Result<(), String>>) {
    let degraded = match probe {
        Some(Ok(())) => None,
        Some(Err(err)) => Some(err),
        None => Some("not connected".to_owned()),
    };
    let changed = read.cache_slot().probed(degraded.is_none());
    metrics::cache_up(degraded.is_none());
    match degraded {
        None => {
            if changed {
                tracing::info!("cache available again");
            }
            health.set(REDIS_CHECK, true, "connected");
        }
        Some(reason) => {
            if changed {
                tracing::warn!(reason = %reason, "cache degraded; serving reads from PostgreSQL");
            }
            health.set(REDIS_CHECK, true, format!("degraded: {reason}; reads are served from PostgreSQL"));
        }
    }
}

/// Probes the read replicas every [`source::PROBE_INTERVAL`] (connecting those away at start,
/// measuring lag) and keeps the `replicas` check current.
async fn watch_replicas(read: ReadPath, health: Health, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(source::PROBE_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let reports = read.row_source().probe_replicas().await;
        replicas_state(&health, &reports);
    }
}

/// Records what a replica probe saw in the `replicas` check. Never fails readiness.
fn replicas_state(health: &Health, reports: &[ReplicaReport]) {
    let skipped: Vec<String> = reports
        .iter()
        .filter_map(|report| match (&report.trouble, report.lagging) {
            (Some(trouble), _) => Some(format!("{} is down ({trouble})", report.target)),
            (None, true) => Some(match report.lag {
                Some(lag) => format!(
                    "{} is {:.1}s behind the primary, beyond query.replica_max_lag_ms",
                    report.target,
                    lag.as_secs_f64()
                ),
                None => format!("{} has not been seen caught up with the primary yet", report.target),
            }),
            (None, false) => None,
        })
        .collect();
    let serving = reports.len() - skipped.len();
    let detail = if skipped.is_empty() {
        format!("{serving} of {} serving reads", reports.len())
    } else {
        format!(
            "degraded: {}; {serving} of {} serving reads, the primary answers the rest",
            skipped.join("; "),
            reports.len()
        )
    };
    health.set(REPLICAS_CHECK, true, detail);
}

/// The command line of an application's query binary.
#[derive(Debug, clap::Parser)]
struct Cli {
    /// Extra configuration file, layered over config/default.toml and PRISM_ENV's file
    /// (repeatable; later files win). Environment variables PRISM__SECTION__KEY win over all.
    #[arg(long, value_name = "FILE")]
    config: Vec<PathBuf>,
}

/// The `main` of an application's query binary (`<app>-query [--config FILE]…`): loads
/// configuration, serves until SIGTERM or Ctrl-C, then drains. Exits 0 after a clean shutdown,
/// 1 when the service failed, 2 for bad arguments or configuration.
pub fn main(app: Application, app_routes: Router<ReadPath>) -> ExitCode {
    use clap::Parser;
    let name = format!("{}-query", app.name());
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    prism_runtime::service::main(&name, cli.config, move |config| {
        run(config, app, app_routes, prism_runtime::shutdown::signal())
    })
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn the_config_flag_repeats() {
        let cli =
            Cli::try_parse_from(["notes-query", "--config", "a.toml", "--config", "b.toml"]).expect("parses");
        assert_eq!(cli.config, vec![PathBuf::from("a.toml"), PathBuf::from("b.toml")]);
        assert!(Cli::try_parse_from(["notes-query", "--bogus"]).is_err());
        Cli::command().debug_assert();
    }
}
