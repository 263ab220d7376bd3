//! The two error layers of the query side.
//!
//! - [`ReadError`]: why the read path could not read, classed once as transient (retry later:
//!   PostgreSQL away) or permanent.
//! - [`ApiError`]: what an HTTP client gets, and the one place that maps each case to a status
//!   and the error body `{"error": {"code", "message", "field"?}}` — the command API's shape, so
//!   clients parse one format.
//!
//! | status | code | when |
//! |---|---|---|
//! | 400 | `invalid_parameter` | a path or query parameter is malformed or out of bounds; `field` names it |
//! | 400 | `invalid_header` | `X-Prism-Min-Version` is malformed; `field` names it |
//! | 404 | `not_found` | no row for the key, no such read model, or no such route |
//! | 405 | `method_not_allowed` | the path exists, the method does not (`Allow` lists the methods) |
//! | 500 | `internal` | stored data this build cannot read, or a bug in an application's route |
//! | 503 | `unavailable` | PostgreSQL is unreachable or the read model is not set up; retry later |
//!
//! A stale read-your-writes answer is not an error: it is a 202 with the row served (see
//! [`crate::http`]).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prism_postgres::StoreError;
use serde_json::json;

/// Why the read path could not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The application has no read model of this name (a bug in the application's route).
    #[error("the application has no read model named `{0}`")]
    UnknownReadModel(String),
    /// The read model's key has several columns: rows cannot be read by one key.
    #[error("read model {read_model} has {columns} key columns; only read models with one key column are read by key")]
    NotReadableByKey {
        /// The read model.
        read_model: &'static str,
        /// How many key columns it has.
        columns: usize,
    },
    /// The key does not read as a value of the key column's type (e.g. not a UUID).
    #[error("`{key}` is not a key of read model {read_model}: {detail}")]
    InvalidKey {
        /// The read model.
        read_model: &'static str,
        /// The key as given (cut to 64 characters).
        key: String,
        /// PostgreSQL's reason.
        detail: String,
    },
    /// A stored row is not what the engine writes (a JSON object with its bookkeeping columns).
    #[error("unexpected data in read model {read_model}: {detail}")]
    Corrupt {
        /// The read model.
        read_model: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ReadError {
    /// True when retrying later can help (PostgreSQL unreachable, a failover, a pool timeout).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(err) => err.is_transient(),
            Self::UnknownReadModel(_)
            | Self::NotReadableByKey { .. }
            | Self::InvalidKey { .. }
            | Self::Corrupt { .. } => false,
        }
    }
}

impl From<tokio_postgres::Error> for ReadError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Store(err.into())
    }
}

/// A failed request, as the client sees it.
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
    /// An error without a field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
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

    /// 404: nothing under this key; the message is "`noun` not found".
    pub fn not_found(noun: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{noun} not found"))
    }

    /// 404 for a path that names no route.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 405: the path exists but not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this path does not accept this method; the Allow header lists the ones it does",
        )
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
        // 42P01 (undefined table): the views do not exist yet, i.e. the application's
        // `migrate` has not run against this schema. An operator fixes that; clients retry.
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

impl From<ReadError> for ApiError {
    fn from(err: ReadError) -> Self {
        match err {
            ReadError::Store(err) => err.into(),
            ReadError::InvalidKey { .. } => Self::invalid_parameter("key", err.to_string()),
            ReadError::NotReadableByKey { .. } => {
                Self::new(StatusCode::NOT_FOUND, "not_found", err.to_string())
            }
            ReadError::UnknownReadModel(_) | ReadError::Corrupt { .. } => {
                tracing::error!(error = %err, "read failed");
                Self::internal()
            }
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
