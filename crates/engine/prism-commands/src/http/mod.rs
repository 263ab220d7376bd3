//! The HTTP command API: one route group per bounded context, mounted according to
//! `commands.contexts`.
//!
//! - [`users`], [`catalog`], [`carts`], [`orders`]: request bodies and handlers.
//! - [`extract`]: body, header and path extractors that fail with [`ApiError`]s.
//! - [`error`]: [`ApiError`] and the status/code table.
//!
//! Each route is wrapped in [`crate::metrics::track`] under its command name, so every
//! answer (including extractor failures) is counted and timed.

pub mod carts;
pub mod catalog;
pub mod error;
pub mod extract;
pub mod orders;
pub mod users;

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use prism_config::BoundedContext;
use uuid::Uuid;

pub use error::ApiError;

use crate::service::{CommandService, Reply};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Load → decide → append.
    pub service: Arc<CommandService>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
}

/// The API routes of the given contexts (without the operations endpoints).
pub fn router(state: AppState, contexts: &[BoundedContext]) -> Router {
    let mut router = Router::new();
    for context in contexts {
        router = router.merge(match context {
            BoundedContext::Users => users::routes(),
            BoundedContext::Catalog => catalog::routes(),
            BoundedContext::Carts => carts::routes(),
            BoundedContext::Orders => orders::routes(),
        });
    }
    router.fallback(|| async { ApiError::no_route() }).with_state(state)
}

/// Wraps a route in the request metrics under `command`.
pub(crate) fn tracked(command: &'static str, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.layer(axum::middleware::from_fn(move |request, next| crate::metrics::track(command, request, next)))
}

/// A reply as an HTTP response; a replay says so in `Idempotent-Replayed: true`.
pub(crate) fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut response = (status, Json(reply.body)).into_response();
    if reply.replayed {
        response.headers_mut().insert("Idempotent-Replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The raw path parameters, read without axum's plain-text rejection.
#[derive(Debug)]
pub struct PathIds(Vec<(String, String)>);

impl PathIds {
    /// The parameter `name` as a UUID.
    pub fn uuid(&self, name: &str) -> Result<Uuid, ApiError> {
        let raw = self.0.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str()).unwrap_or("");
        extract::path_id(name, raw)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid_field("path", "the path is not valid UTF-8"))?;
        Ok(Self(params.iter().map(|(key, value)| (key.to_owned(), value.to_owned())).collect()))
    }
}
