//! [`ApiError`]: every way a command request can fail, and the one place that maps each to an
//! HTTP status and the error body `{"error": {"code", "reason"?, "field"?, "message"}}`.
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `malformed_json`, `invalid_field`, `invalid_header` | the request cannot be read; `field` names what |
//! | 404 | `not_found` | the addressed aggregate does not exist (or no such route) |
//! | 405 | `method_not_allowed` | the path exists, not with this method (`Allow` lists the methods) |
//! | 409 | `rejected` | a business rule refused the command; `reason` is the rule's stable code |
//! | 409 | `conflict` | `reason` `concurrent_modification` (lost a race) or `version_mismatch` (`If-Match`) |
//! | 413 | `payload_too_large` | body over `commands.max_body_bytes` |
//! | 415 | `unsupported_media_type` | a non-empty body not declared as JSON |
//! | 422 | `idempotency_key_reused` | the key was used for a different request |
//! | 500 | `internal` | stored data the service cannot read, or another permanent failure |
//! | 503 | `unavailable` | PostgreSQL is unreachable or the event store is not migrated; retry later |
//!
//! The application maps its own refusals (not found, rules, fields) with the constructors
//! here and [`ApiError::from_service`]. Every 5xx is logged once, here, with the whole error
//! chain: what failed and, for a missing table, which one.

use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::metrics::Outcome;
use crate::service::{error_chain, ServiceError};

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
    /// Any status and code; prefer the named constructors.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, reason: None, field: None, message: message.into() }
    }

    /// 400 `invalid_field`: a field of the body (or the path) is malformed.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), ..Self::new(StatusCode::BAD_REQUEST, "invalid_field", message) }
    }

    /// 400 `malformed_json`: the body is not JSON at all.
    pub fn malformed_json(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: Some(field.into()), ..Self::new(StatusCode::BAD_REQUEST, "malformed_json", message) }
    }

    /// 400 `invalid_header`: a header is malformed.
    pub fn invalid_header(header: &str, message: impl Into<String>) -> Self {
        Self {
            field: Some(header.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_header", message)
        }
    }

    /// 404 `not_found`: the addressed aggregate does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `rejected`: a business rule refused the command; `reason` is its stable code.
    pub fn rejected(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { reason: Some(reason.into()), ..Self::new(StatusCode::CONFLICT, "rejected", message) }
    }

    /// 409 `conflict`: `reason` is `concurrent_modification` or `version_mismatch`.
    pub fn conflict(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { reason: Some(reason.into()), ..Self::new(StatusCode::CONFLICT, "conflict", message) }
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
        Self::not_found("no such route")
    }

    /// 405 for a path that exists with other methods (axum adds the `Allow` header).
    pub fn method_not_allowed(method: &Method, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {path}; the Allow header lists the methods that are"),
        )
    }

    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500 `internal`.
    pub fn internal() -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }

    /// Renames fields of the domain's vocabulary into the request's (e.g. what an aggregate's
    /// command calls `readings[2]` a request may call `samples[2]`).
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

    /// The answer to a failed command: `refused` maps the application's refusals; everything
    /// else is the engine's (409 conflicts, 422, 503, 500). Server errors are logged here,
    /// naming what failed.
    pub fn from_service<E>(err: ServiceError<E>, refused: impl FnOnce(E) -> ApiError) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let message = err.to_string();
        match err {
            ServiceError::Refused(refusal) => refused(refusal),
            ServiceError::VersionMismatch { .. } => Self::conflict("version_mismatch", message),
            ServiceError::Conflict { .. } => Self::conflict("concurrent_modification", message),
            ServiceError::KeyReused => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused", message)
            }
            ref failure => {
                let chain = error_chain(failure);
                if let Some(table) = failure.missing_table() {
                    tracing::error!(
                        %table,
                        error = %chain,
                        "command failed: the event store's table `{table}` does not exist in the configured schema; run `prismctl migrate`"
                    );
                    Self::unavailable("the event store is not set up yet; retry later")
                } else if failure.is_transient() {
                    tracing::warn!(error = %chain, "command failed: the event store is unavailable");
                    Self::unavailable("the event store is unavailable; retry later")
                } else {
                    tracing::error!(error = %chain, "command failed");
                    Self::internal()
                }
            }
        }
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

    /// The JSON body, `{"error": {...}}`.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(object) = error.as_object_mut() {
            if let Some(reason) = &self.reason {
                object.insert("reason".into(), reason.clone().into());
            }
            if let Some(field) = &self.field {
                object.insert("field".into(), field.clone().into());
            }
        }
        json!({ "error": error })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let outcome = self.outcome();
        let mut response = (self.status, Json(self.body())).into_response();
        response.extensions_mut().insert(outcome);
        response
    }
}

/// The handler of every 405: the error body in JSON, like every other error (axum keeps the
/// `Allow` header it computed).
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let mut response = ApiError::method_not_allowed(&method, uri.path()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_code_reason_field_and_message() {
        let rejected = ApiError::rejected("quota_exceeded", "the quota is used up");
        assert_eq!(
            rejected.body(),
            json!({"error": {"code": "rejected", "reason": "quota_exceeded", "message": "the quota is used up"}})
        );
        let renamed = ApiError::invalid_field("readings[1].value", "readings[1].value is 0")
            .rename_field("readings", "samples");
        assert_eq!(renamed.field.as_deref(), Some("samples[1].value"));
        assert_eq!(renamed.message, "samples[1].value is 0");
        let untouched = ApiError::invalid_field("readingsroom", "x").rename_field("readings", "samples");
        assert_eq!(untouched.field.as_deref(), Some("readingsroom"));
    }

    #[test]
    fn engine_failures_map_to_fixed_statuses() {
        #[derive(Debug, thiserror::Error)]
        #[error("no")]
        struct No;
        let refused: ServiceError<No> = ServiceError::Refused(No);
        assert_eq!(
            ApiError::from_service(refused, |r| ApiError::rejected("no", r.to_string())).status,
            StatusCode::CONFLICT
        );
        let mismatch: ServiceError<No> = ServiceError::VersionMismatch { expected: 1, actual: 2 };
        assert_eq!(
            ApiError::from_service(mismatch, |_| ApiError::internal()).reason.as_deref(),
            Some("version_mismatch")
        );
        let reused: ServiceError<No> = ServiceError::KeyReused;
        assert_eq!(
            ApiError::from_service(reused, |_| ApiError::internal()).status,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let unavailable: ServiceError<No> = prism_postgres::StoreError::PoolTimeout.into();
        assert_eq!(
            ApiError::from_service(unavailable, |_| ApiError::internal()).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
