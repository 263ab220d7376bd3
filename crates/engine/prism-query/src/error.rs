//! [`ApiError`]: every way a query can fail, and the one place that maps each to an HTTP
//! status and the error body `{"error": {"code", "field"?, "message"}}` (the command API's
//! shape, so clients parse one format).
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `invalid_parameter` | a path or query parameter is malformed or out of bounds; `field` names it |
//! | 400 | `invalid_header` | `X-Prism-Min-Version` is malformed; `field` names it |
//! | 404 | `not_found` | no row for the id (or no such route) |
//! | 500 | `internal` | stored data this build cannot read |
//! | 503 | `unavailable` | PostgreSQL is unreachable or the read model is not set up; retry later |
//!
//! A stale read-your-writes answer is not an error: it is a 202 with the row served (see
//! [`crate::http`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prism_store::StoreError;
use serde_json::json;

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// For 400: the offending parameter or header, as the client named it.
    pub field: Option<String>,
    /// A sentence for a human.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, field: None, message: message.into() }
    }

    /// 400: parameter `field` (path or query) is malformed or out of bounds.
    pub fn invalid_parameter(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), ..Self::new(StatusCode::BAD_REQUEST, "invalid_parameter", message) }
    }

    /// 400: a header is malformed.
    pub fn invalid_header(header: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(header.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_header", message)
        }
    }

    /// 404: nothing under this id.
    pub fn not_found(noun: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{noun} not found"))
    }

    /// 404 for a path that names no route.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 503: a dependency is away; the client may retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        // 42P01 (undefined table): the views do not exist yet, i.e. `prismctl migrate` has not
        // run against this schema. An operator fixes that; clients can retry meanwhile.
        let missing_view = err.sql_state().is_some_and(|s| s.code() == "42P01");
        if err.is_transient() || missing_view {
            tracing::warn!(error = %err, "query failed on PostgreSQL");
            Self::unavailable("the read models are unavailable; retry later")
        } else {
            tracing::error!(error = %err, "query failed");
            Self::internal()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let (Some(object), Some(field)) = (error.as_object_mut(), &self.field) {
            object.insert("field".into(), field.clone().into());
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}
