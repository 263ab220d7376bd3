//! The entity routes: one order, product, cart or user profile by id.
//!
//! Read-your-writes: with `?min_version=N` (or `X-Prism-Min-Version: N`; the larger wins) the
//! request waits, up to `query.min_version_wait_ms`, until the read model reflects version N
//! of the aggregate. It answers
//! - `200` with the row once its version is N or later;
//! - `202 Accepted` with `X-Prism-Stale: true`, `Retry-After` and the row as it stands (its
//!   version in `X-Prism-Version`) when the wait ran out; if there is no row yet the body is
//!   the error `not_yet_visible` and `X-Prism-Version: 0`. 202 rather than an error because
//!   the command was accepted and its effect is on its way: the client retries or accepts
//!   the older row.
//!
//! For a user profile the version is the user aggregate's: totals moved by orders do not
//! change it (wait on the order instead).

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ApiError;
use crate::http::{AppState, STALE_HEADER, VERSION_HEADER};
use crate::models::EntityModel;
use crate::params::{self, PathIds, QueryParams};

/// `GET /<entity>/{id}`.
#[tracing::instrument(skip_all, fields(read_model = %V::PROJECTION))]
pub async fn entity<V: EntityModel>(
    State(app): State<AppState>,
    path: PathIds,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path.uuid("id")?;
    let query = query.only(&["min_version"])?;
    // Version 0 is "before the aggregate existed": nothing to wait for.
    let min = params::min_version(&query, &headers)?.filter(|min| *min > 0);
    let Some(min) = min else {
        let row = app.reads.entity::<V>(id, None).await?;
        return row.map(|row| fresh(&row)).ok_or_else(|| ApiError::not_found(V::NOUN));
    };
    let served = app.reads.entity_at_least::<V>(id, min, app.limits.min_version_wait).await?;
    if served.fresh {
        return served.row.map(|row| fresh(&row)).ok_or_else(|| ApiError::not_found(V::NOUN));
    }
    crate::metrics::stale(V::PROJECTION);
    tracing::debug!(min_version = min, served = ?served.row.as_ref().map(EntityModel::version), "stale answer");
    let (version, body) = match &served.row {
        Some(row) => (row.version(), json_of(row)),
        None => (
            0,
            json!({ "error": {
                "code": "not_yet_visible",
                "message": format!("the {} is not in the read model yet; retry later", V::NOUN),
            }}),
        ),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(HeaderName::from_static(STALE_HEADER), HeaderValue::from_static("true"));
    headers.insert(HeaderName::from_static(VERSION_HEADER), HeaderValue::from(version));
    headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(app.limits.retry_after_seconds));
    Ok(response)
}

/// 200 with the row and its version.
fn fresh<V: EntityModel>(row: &V) -> Response {
    let mut response = (StatusCode::OK, Json(json_of(row))).into_response();
    response.headers_mut().insert(HeaderName::from_static(VERSION_HEADER), HeaderValue::from(row.version()));
    response
}

fn json_of<V: EntityModel>(row: &V) -> serde_json::Value {
    serde_json::to_value(row).unwrap_or_else(|err| {
        tracing::error!(error = %err, "cannot serialise a row");
        serde_json::Value::Null
    })
}
