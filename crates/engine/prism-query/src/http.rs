//! The HTTP side of the read path: the engine's generic route, the entity answer applications
//! reuse in their own routes, and the router that puts an application's routes together with
//! the engine's.
//!
//! | route | answers |
//! |---|---|
//! | `GET /read-models/{name}/{key}` | the row of read model `name` under `key` (read models with one key column) |
//!
//! Entity answers ([`entity_response`], used by the generic route and by applications' own
//! entity routes):
//! - `200` with the row's JSON (the application's columns) and `X-Prism-Version` (the
//!   aggregate version the row reflects);
//! - with `?min_version=N` or `X-Prism-Min-Version: N` (the larger wins), the read waits up to
//!   `query.min_version_wait_ms` for the row to reflect version N; if it does not in time:
//!   `202 Accepted`, `X-Prism-Stale: true`, `Retry-After` and the row as it stands (its version
//!   in `X-Prism-Version`), or, with no row yet, the error `not_yet_visible` and
//!   `X-Prism-Version: 0`. 202 rather than an error because the command was accepted and its
//!   effect is on its way: the client retries or accepts the older row;
//! - `404` when there is no row.
//!
//! Every error has the body `{"error": {...}}` of [`crate::error`], including a path no route
//! knows (404) and a method a path does not take (405, with `Allow`).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::error::ApiError;
use crate::params::{self, PathIds, QueryParams};
use crate::read_path::{ReadPath, Served};

/// `X-Prism-Version`: the version of the row served.
pub const VERSION_HEADER: &str = "x-prism-version";
/// `X-Prism-Stale: true`: the row served is older than the `min_version` asked for.
pub const STALE_HEADER: &str = "x-prism-stale";
/// The engine's generic route (also its metrics' `route` label).
pub const READ_MODEL_ROUTE: &str = "/read-models/{name}/{key}";

/// The engine's routes: `GET /read-models/{name}/{key}`.
pub fn read_model_routes() -> Router<ReadPath> {
    Router::new().route(READ_MODEL_ROUTE, get(read_model_entity))
}

/// The whole API of an application: the engine's routes and `app_routes`, every request
/// counted and timed under its route template, a JSON 404 for unknown paths and a JSON 405
/// for known paths with another method. `app_routes` must not set a fallback.
pub fn router(read: ReadPath, app_routes: Router<ReadPath>) -> Router {
    read_model_routes()
        .merge(app_routes)
        .fallback(|| async { ApiError::no_route() })
        .layer(axum::middleware::from_fn(crate::metrics::track))
        .with_state(read)
}

/// Middleware body (`axum::middleware::map_response`): gives a 405 that has no body of its own
/// (axum's) the JSON error body, keeping its `Allow` header. Applied to the whole service,
/// operations endpoints included.
pub async fn json_method_not_allowed(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut json = ApiError::method_not_allowed().into_response();
    if let Some(allow) = allow {
        json.headers_mut().insert(header::ALLOW, allow);
    }
    json
}

/// `GET /read-models/{name}/{key}`.
#[tracing::instrument(skip_all)]
async fn read_model_entity(
    State(read): State<ReadPath>,
    path: PathIds,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = path.text("name");
    let Some(model) = read.app().read_model(name) else {
        let shown: String = name.chars().take(64).collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no read model named `{shown}`"),
        ));
    };
    let noun = format!("{} row", model.name());
    entity_response(&read, model.name(), path.text("key"), &noun, query, &headers).await
}

/// The entity answer for `key` of `read_model` (see the module docs): accepts only the
/// `min_version` query parameter (any other is a 400 naming it) and the `X-Prism-Min-Version`
/// header. `noun` names the row in messages (`"device"` → "device not found").
pub async fn entity_response(
    read: &ReadPath,
    read_model: &str,
    key: &str,
    noun: &str,
    query: QueryParams,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let query = query.only(&["min_version"])?;
    let min_version = params::min_version(&query, headers)?;
    let served = read.entity(read_model, key, min_version).await?;
    respond(served, noun, read.config().retry_after_seconds)
}

/// Renders an entity read: 200 (fresh), 202 (stale, with `Retry-After: retry_after_seconds`)
/// or 404 (no row, nothing asked for).
pub fn respond(served: Served, noun: &str, retry_after_seconds: u64) -> Result<Response, ApiError> {
    if served.fresh {
        let row = served.row.ok_or_else(|| ApiError::not_found(noun))?;
        let mut response = (StatusCode::OK, Json(row.document)).into_response();
        response
            .headers_mut()
            .insert(HeaderName::from_static(VERSION_HEADER), HeaderValue::from(row.version));
        return Ok(response);
    }
    let (version, body) = match served.row {
        Some(row) => (row.version, row.document),
        None => (
            0,
            json!({ "error": {
                "code": "not_yet_visible",
                "message": format!("the {noun} is not in the read model yet; retry later"),
            }}),
        ),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(HeaderName::from_static(STALE_HEADER), HeaderValue::from_static("true"));
    headers.insert(HeaderName::from_static(VERSION_HEADER), HeaderValue::from(version));
    headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_seconds));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;
    use crate::read_path::StoredRow;

    async fn body(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("body");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[tokio::test]
    async fn entity_answers_are_200_202_or_404() {
        let row = StoredRow { document: json!({"id": "a"}), version: 4, revision: 9 };
        let fresh = respond(Served { row: Some(row.clone()), fresh: true }, "thing", 1).expect("200");
        assert_eq!(fresh.status(), StatusCode::OK);
        assert_eq!(fresh.headers()[VERSION_HEADER], "4");
        assert_eq!(body(fresh).await, json!({"id": "a"}));

        let stale = respond(Served { row: Some(row), fresh: false }, "thing", 3).expect("202");
        assert_eq!(stale.status(), StatusCode::ACCEPTED);
        assert_eq!(stale.headers()[STALE_HEADER], "true");
        assert_eq!(stale.headers()[header::RETRY_AFTER], "3");

        let invisible = respond(Served { row: None, fresh: false }, "thing", 1).expect("202");
        assert_eq!(invisible.headers()[VERSION_HEADER], "0");
        assert_eq!(body(invisible).await["error"]["code"], "not_yet_visible");

        let missing = respond(Served { row: None, fresh: true }, "thing", 1).expect_err("404");
        assert_eq!((missing.status, missing.message.as_str()), (StatusCode::NOT_FOUND, "thing not found"));
    }

    #[tokio::test]
    async fn an_empty_405_gets_the_json_error_body_and_keeps_allow() {
        let mut bare = StatusCode::METHOD_NOT_ALLOWED.into_response();
        bare.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        let answered = json_method_not_allowed(bare).await;
        assert_eq!(answered.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answered.headers()[header::ALLOW], "GET,HEAD");
        assert_eq!(answered.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(body(answered).await["error"]["code"], "method_not_allowed");
        let other = json_method_not_allowed(StatusCode::NOT_FOUND.into_response()).await;
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
    }
}
