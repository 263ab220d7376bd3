//! Every way an incoming event can be wrong.
//!
//! All decode errors are permanent: the same bytes will fail the same way on every retry, so
//! a consumer dead-letters the event instead of retrying it. [`DecodeError::kind`] is the
//! short, bounded name used in dead-letter headers and metric labels; `Display` is the
//! sentence an operator reads.

/// Why an event could not be decoded, validated or upcast.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message has no value.
    #[error("event has no payload (null message value)")]
    MissingPayload,
    /// The message is larger than `events.max_event_bytes`.
    #[error("event is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The message is not UTF-8 text.
    #[error("event is not valid UTF-8 (first invalid byte at offset {valid_up_to})")]
    InvalidUtf8 {
        /// Bytes before the first invalid one.
        valid_up_to: usize,
    },
    /// Objects or arrays nest deeper than `events.max_depth`.
    #[error("event nests objects or arrays deeper than the limit of {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// The message is not JSON.
    #[error("event is not valid JSON at line {line}, column {column}: {message}")]
    InvalidJson {
        /// Line of the error, from 1.
        line: usize,
        /// Column of the error, from 1.
        column: usize,
        /// The parser's words.
        message: String,
    },
    /// A required field is absent.
    #[error("field `{field}` is missing")]
    MissingField {
        /// Its path, e.g. `payload.lines[0].quantity`.
        field: String,
    },
    /// A field the schema does not have.
    #[error("field `{field}` is not allowed here")]
    UnknownField {
        /// Its path.
        field: String,
    },
    /// A field of the wrong JSON type.
    #[error("field `{field}` has the wrong type: {message}")]
    WrongType {
        /// Its path.
        field: String,
        /// What was expected.
        message: String,
    },
    /// A field whose value breaks a rule of the contract.
    #[error("field `{field}` is invalid: {reason}")]
    InvalidValue {
        /// Its path.
        field: String,
        /// Which rule.
        reason: String,
    },
    /// An event type the application does not have.
    #[error("unknown event type `{event_type}`")]
    UnknownEventType {
        /// The name received (clipped).
        event_type: String,
    },
    /// A schema version this build cannot read.
    #[error(
        "event type `{event_type}` has no schema version {version} (this build reads versions 1 to {current})"
    )]
    UnsupportedSchemaVersion {
        /// The event type.
        event_type: String,
        /// The version received.
        version: u32,
        /// The newest version this build reads.
        current: u32,
    },
    /// The envelope's aggregate type is not the one the event type belongs to.
    #[error("event type `{event_type}` belongs to aggregate type `{expected}`, not `{declared}`")]
    AggregateTypeMismatch {
        /// The event type.
        event_type: String,
        /// The aggregate type the envelope declared.
        declared: String,
        /// The aggregate type of the event type.
        expected: String,
    },
    /// A Kafka header disagrees with the envelope.
    #[error("header `{header}` says `{header_value}` but the payload says `{payload_value}`")]
    HeaderMismatch {
        /// The header's name.
        header: String,
        /// The header's value (clipped).
        header_value: String,
        /// The envelope's value.
        payload_value: String,
    },
    /// An upcaster refused the payload.
    #[error("event type `{event_type}` could not be upcast from schema version {from_version}: {reason}")]
    UpcastFailed {
        /// The event type.
        event_type: String,
        /// The version the failing step reads.
        from_version: u32,
        /// Why.
        reason: String,
    },
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
/// Control characters (NUL, escape sequences that would drive a terminal) are spelled out as
/// `\u{…}`, so what a message held shows in its dead-letter record and cannot corrupt a log.
pub fn clip(s: &str) -> String {
    const MAX_CHARS: usize = 80;
    let mut clipped = String::new();
    for (count, c) in s.chars().enumerate() {
        if count == MAX_CHARS {
            clipped.push('…');
            break;
        }
        if c.is_control() {
            clipped.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            clipped.push(c);
        }
    }
    clipped
}

#[cfg(test)]
mod clip_tests {
    use super::clip;

    #[test]
    fn control_characters_are_spelled_out() {
        assert_eq!(clip("User\0Registered"), "User\\u{0}Registered");
        assert_eq!(clip("\u{1b}[31mred"), "\\u{1b}[31mred");
    }

    #[test]
    fn long_text_is_cut_at_eighty_characters() {
        let long = "é".repeat(100);
        assert_eq!(clip(&long), format!("{}…", "é".repeat(80)));
        assert_eq!(clip(&"a".repeat(80)), "a".repeat(80));
    }
}
