//! The telemetry query routes mounted on the engine's query service (`telemetry-query`).
//!
//! `device_status` (one key column) is served by the engine's generic route,
//! `GET /read-models/device_status/{device id}` (cache-aside, read-your-writes with
//! `?min_version=`). `site_hourly_readings` has a composite key (site, metric, hour), so a
//! site's dashboard reads it through this crate's route, an SQL query over the read model's
//! view (the active generation) run by the engine's read path:
//!
//! `GET /sites/{site_id}/readings?metric=&limit=`: the site's hourly readings, newest first.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prism_query::{ApiError, PathIds, QueryParams, ReadPath};
use serde_json::json;

use crate::events::fields;
use crate::read_models::SITE_HOURLY_READINGS;

/// Rows per answer unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: usize = 48;
const MAX_LIMIT: usize = 1_000;

/// The application's routes, for `prism_query::main`/`serve`.
pub fn routes() -> Router<ReadPath> {
    Router::new().route("/sites/{site_id}/readings", get(site_readings))
}

/// `GET /sites/{site_id}/readings?metric=&limit=`.
async fn site_readings(
    State(read): State<ReadPath>,
    path: PathIds,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let site_id = path.text("site_id");
    fields::site_id("site_id", site_id)
        .map_err(|err| ApiError::invalid_parameter("site_id", err.to_string()))?;
    let query = query.only(&["metric", "limit"])?;
    let metric = query.get("metric").map(str::to_owned);
    if let Some(metric) = &metric {
        fields::metric("metric", metric)
            .map_err(|err| ApiError::invalid_parameter("metric", err.to_string()))?;
    }
    let limit = query.limit(DEFAULT_LIMIT, MAX_LIMIT)?;
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = read
        .query_rows(
            SITE_HOURLY_READINGS,
            include_str!("../sql/readings_of_site.sql"),
            &[&site_id, &metric, &fetch],
        )
        .await?;
    Ok(Json(json!({ "site_id": site_id, "readings": rows })).into_response())
}
