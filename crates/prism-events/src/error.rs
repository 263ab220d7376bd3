//! Every way an incoming event can be wrong.
//!
//! All decode errors are permanent: the same bytes will fail the same way on every retry, so
//! a consumer dead-letters the event instead of retrying it. [`DecodeError::kind`] is the
//! short, bounded name used in dead-letter headers and metric labels; `Display` is the
//! sentence an operator reads.

/// Why an event could not be decoded, validated or upcast.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event has no payload (null message value)")]
    MissingPayload,
    #[error("event is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("event is not valid UTF-8 (first invalid byte at offset {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    #[error("event nests objects or arrays deeper than the limit of {limit} levels")]
    TooDeep { limit: usize },
    #[error("event is not valid JSON at line {line}, column {column}: {message}")]
    InvalidJson { line: usize, column: usize, message: String },
    #[error("field `{field}` is missing")]
    MissingField { field: String },
    #[error("field `{field}` is not allowed here")]
    UnknownField { field: String },
    #[error("field `{field}` has the wrong type: {message}")]
    WrongType { field: String, message: String },
    #[error("field `{field}` is invalid: {reason}")]
    InvalidValue { field: String, reason: String },
    #[error("unknown event type `{event_type}`")]
    UnknownEventType { event_type: String },
    #[error(
        "event type `{event_type}` has no schema version {version} (this build reads versions 1 to {current})"
    )]
    UnsupportedSchemaVersion { event_type: String, version: u32, current: u32 },
    #[error("event type `{event_type}` belongs to aggregate type `{expected}`, not `{declared}`")]
    AggregateTypeMismatch { event_type: String, declared: String, expected: String },
    #[error("header `{header}` says `{header_value}` but the payload says `{payload_value}`")]
    HeaderMismatch { header: String, header_value: String, payload_value: String },
    #[error("event type `{event_type}` could not be upcast from schema version {from_version}: {reason}")]
    UpcastFailed { event_type: String, from_version: u32, reason: String },
}

impl DecodeError {
    /// A short, bounded name for the kind of error: dead-letter headers, metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MissingPayload => "missing_payload",
            Self::TooLarge { .. } => "too_large",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::TooDeep { .. } => "too_deep",
            Self::InvalidJson { .. } => "invalid_json",
            Self::MissingField { .. } => "missing_field",
            Self::UnknownField { .. } => "unknown_field",
            Self::WrongType { .. } => "wrong_type",
            Self::InvalidValue { .. } => "invalid_value",
            Self::UnknownEventType { .. } => "unknown_event_type",
            Self::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            Self::AggregateTypeMismatch { .. } => "aggregate_type_mismatch",
            Self::HeaderMismatch { .. } => "header_mismatch",
            Self::UpcastFailed { .. } => "upcast_failed",
        }
    }

    /// Shorthand for [`DecodeError::InvalidValue`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidValue { field: field.into(), reason: reason.into() }
    }
}

/// Bounds a string taken from event data before it goes into an error message, so a hostile
/// event cannot make its own dead-letter record or log line arbitrarily large.
pub(crate) fn clip(s: &str) -> String {
    const MAX_CHARS: usize = 80;
    if s.chars().count() <= MAX_CHARS {
        s.to_owned()
    } else {
        let mut clipped: String = s.chars().take(MAX_CHARS).collect();
        clipped.push('…');
        clipped
    }
}
