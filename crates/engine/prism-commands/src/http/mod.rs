//! HTTP plumbing any application's command API mounts; the routes themselves are the
//! application's.
//!
//! - [`ApiState`]: what every handler shares (the [`CommandService`], the body limit).
//! - [`extract`]: body, header and path extractors that fail with [`ApiError`]s.
//! - [`json`]: strict reading of command bodies (objects only, errors in the API's words).
//! - [`error`]: [`ApiError`], the status/code table and the `{"error": {...}}` body.
//! - [`tracked`] wraps a route in the request metrics under its command name; [`respond`]
//!   turns a [`Reply`] into a response.
//!
//! An application writes its routes as a `Router<ApiState>`:
//!
//! ```text
//! Router::new().route("/devices", tracked("register_device", post(register)))
//!
//! async fn register(State(api): State<ApiState>, headers: CommandHeaders, body: JsonBody<Register>)
//!     -> Result<Response, ApiError>
//! {
//!     let id = body.value.device_id.unwrap_or_else(Uuid::new_v4);
//!     let command = DeviceCommand::Register { site: body.value.site };
//!     let reply = api.service.execute::<DeviceState>(id, command, &headers.meta(&body.digest)).await
//!         .map_err(|err| ApiError::from_service(err, my_refusals))?;
//!     Ok(respond(reply))
//! }
//! ```
//!
//! and hands it to [`crate::serve`], which adds the 404 and 405 answers and the operations
//! endpoints.

pub mod error;
pub mod extract;
pub mod json;

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};

pub use error::{method_not_allowed, ApiError};
pub use extract::{digest, path_id, CommandHeaders, JsonBody, PathIds};

use crate::service::{CommandService, Reply};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Load → decide → append.
    pub service: Arc<CommandService>,
    /// Largest accepted request body, in bytes (`commands.max_body_bytes`).
    pub max_body_bytes: usize,
}

/// Wraps a route in the request metrics (`prism_commands_requests_total` and the duration
/// histogram) under `command`, a name from the application's fixed list of commands.
pub fn tracked<S>(command: &'static str, route: MethodRouter<S>) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    route.layer(axum::middleware::from_fn(move |request, next| crate::metrics::track(command, request, next)))
}

/// A reply as an HTTP response; a replay says so in `Idempotent-Replayed: true`.
pub fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let mut response = (status, Json(reply.body)).into_response();
    if reply.replayed {
        response.headers_mut().insert("Idempotent-Replayed", HeaderValue::from_static("true"));
    }
    response
}

/// The application's routes with `state`, a JSON 404 for every other path and a JSON 405
/// for a known path with another method. [`crate::serve`] calls it; exposed for applications
/// that serve the routes themselves.
pub fn finish(routes: Router<ApiState>, state: ApiState) -> Router {
    routes
        .fallback(|| async { ApiError::no_route() })
        .with_state(state)
        .method_not_allowed_fallback(method_not_allowed)
}
