//! [`ApiError`]: every way a request can fail, and the one place that maps each to an HTTP
//! status and the error body `{"error": {"code", "reason"?, "field"?, "message"}}`.
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `malformed_json`, `invalid_field`, `invalid_header` | the request cannot be read; `field` names what |
//! | 404 | `not_found` | the addressed aggregate does not exist (or no such route) |
//! | 409 | `rejected` | a business rule refused the command; `reason` is the rule's stable code |
//! | 409 | `conflict` | `reason` `concurrent_modification` (lost a race) or `version_mismatch` (`If-Match`) |
//! | 413 | `payload_too_large` | body over `commands.max_body_bytes` |
//! | 415 | `unsupported_media_type` | body is not declared as JSON |
//! | 422 | `idempotency_key_reused` | the key was used for a different request |
//! | 500 | `internal` | stored data the service cannot read |
//! | 503 | `unavailable` | PostgreSQL is unreachable; retry later |

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prism_domain::DomainError;
use serde_json::json;

use crate::metrics::Outcome;
use crate::service::ServiceError;

/// A failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// For 409: the rule or conflict kind.
    pub reason: Option<String>,
    /// For 400: the offending field, as the client named it.
    pub field: Option<String>,
    /// A sentence for a human.
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, reason: None, field: None, message: message.into() }
    }

    /// 400: a field of the body (or the path) is malformed.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message) }
    }

    /// 400: the body is not JSON at all.
    pub fn malformed_json(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), ..Self::new(StatusCode::BAD_REQUEST, "malformed_json", message) }
    }

    /// 400: a header is malformed.
    pub fn invalid_header(header: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(header.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_header", message)
        }
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 415.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the request body must be JSON, sent with Content-Type: application/json",
        )
    }

    /// 404 for a path that names no route.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// Renames fields of the domain's vocabulary into the request's (e.g. an order's `lines`
    /// are the request's `items`).
    pub fn rename_field(mut self, from: &str, to: &str) -> Self {
        if let Some(field) = &self.field {
            if let Some(rest) = field.strip_prefix(from) {
                if rest.is_empty() || rest.starts_with(['.', '[']) {
                    self.field = Some(format!("{to}{rest}"));
                    self.message = self.message.replacen(from, to, 1);
                }
            }
        }
        self
    }

    /// The metric outcome of this error.
    fn outcome(&self) -> Outcome {
        match (self.status, self.code) {
            (StatusCode::NOT_FOUND, _) => Outcome::NotFound,
            (StatusCode::CONFLICT, "rejected") => Outcome::Rejected,
            (StatusCode::CONFLICT, _) => Outcome::Conflict,
            (status, _) if status.is_server_error() => Outcome::Error,
            _ => Outcome::Invalid,
        }
    }
}

impl From<DomainError> for ApiError {
    fn from(err: DomainError) -> Self {
        match err {
            DomainError::NotFound { aggregate_type } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", format!("{aggregate_type} not found"))
            }
            DomainError::Rejected { reason, message } => Self {
                reason: Some(reason.as_str().to_owned()),
                ..Self::new(StatusCode::CONFLICT, "rejected", message)
            },
            DomainError::InvalidField { field, reason } => {
                let message = format!("field `{field}` is invalid: {reason}");
                Self::invalid_field(field, message)
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        let message = err.to_string();
        let conflict = |reason: &str| Self {
            reason: Some(reason.to_owned()),
            ..Self::new(StatusCode::CONFLICT, "conflict", message.clone())
        };
        match err {
            ServiceError::Domain(domain) => domain.into(),
            ServiceError::VersionMismatch { .. } => conflict("version_mismatch"),
            ServiceError::Conflict { .. } => conflict("concurrent_modification"),
            ServiceError::KeyReused => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", message)
            }
            ref store_error if store_error.is_transient() => {
                tracing::warn!(error = %store_error, "command failed on a transient store error");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the event store is unavailable; retry later",
                )
            }
            other => {
                tracing::error!(error = %other, "command failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(object) = error.as_object_mut() {
            if let Some(reason) = &self.reason {
                object.insert("reason".into(), reason.clone().into());
            }
            if let Some(field) = &self.field {
                object.insert("field".into(), field.clone().into());
            }
        }
        let outcome = self.outcome();
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        response.extensions_mut().insert(outcome);
        response
    }
}
