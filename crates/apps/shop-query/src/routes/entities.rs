//! The entity routes: one order, product, cart or user profile by id, answered by the engine
//! (`prism_query::entity_response`): Redis first, PostgreSQL on a miss, read-your-writes with
//! `?min_version=N` / `X-Prism-Min-Version: N` (200, or 202 stale after
//! `query.min_version_wait_ms`), `X-Prism-Version`, 404 for an unknown id.
//!
//! For a user profile the version is the user aggregate's: totals moved by orders do not change
//! it (wait on the order instead).

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, MethodRouter};
use prism_query::{ApiError, PathIds, QueryParams, ReadPath};

/// `GET /<entity>/{id}` for `read_model`, whose rows are keyed by the aggregate id; `noun`
/// names a row in messages ("order not found").
pub fn entity(read_model: &'static str, noun: &'static str) -> MethodRouter<ReadPath> {
    get(move |State(read): State<ReadPath>, path: PathIds, query: QueryParams, headers: HeaderMap| {
        read_entity(read, read_model, noun, path, query, headers)
    })
}

#[tracing::instrument(skip_all, fields(read_model = read_model))]
async fn read_entity(
    read: ReadPath,
    read_model: &'static str,
    noun: &'static str,
    path: PathIds,
    query: QueryParams,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path.uuid("id")?;
    prism_query::entity_response(&read, read_model, &id.to_string(), noun, query, &headers).await
}
