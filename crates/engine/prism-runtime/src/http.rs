//! The operations endpoints every Prism process serves: `/metrics` (Prometheus text),
//! `/healthz` (alive) and `/readyz` (ready to do its job, with the checks as JSON).

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::health::Health;

#[derive(Clone)]
struct OpsState {
    metrics: PrometheusHandle,
    health: Health,
}

/// A router with `/metrics`, `/healthz` and `/readyz`; merge it into a service's own router
/// or serve it alone.
pub fn ops_router(metrics: PrometheusHandle, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readiness))
        .with_state(OpsState { metrics, health })
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    crate::allocator::record_usage();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
        .into_response()
}

async fn readiness(State(state): State<OpsState>) -> Response {
    let checks = state.health.snapshot();
    let ready = checks.values().all(|c| c.ok);
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(serde_json::json!({ "ready": ready, "checks": checks }))).into_response()
}

/// Binds `listen` and serves `router` until `shutdown` resolves. Returns the bound address
/// first (useful with port 0) through `on_bound`.
pub async fn serve(
    listen: &str,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    on_bound(listener.local_addr()?);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await?;
    Ok(())
}
