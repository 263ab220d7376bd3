//! Field-level helpers for payload types: typed deserialisation that names the offending
//! field by its full path, and the common length and range rules. Applications use them in
//! [`crate::EventSet::from_payload`], so every event's errors read the same way.

use serde::de::DeserializeOwned;

use crate::error::{clip, DecodeError};

/// Deserialises `value` into `T`, turning serde's message into a [`DecodeError`] that names
/// the field by its full path below `root` (e.g. `payload.lines[2].quantity`).
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value, root: &str) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = join_path(root, &path);
        classify_data_error(&field, &err.into_inner().to_string())
    })
}

/// Same as [`from_value`], straight from text already known to be valid JSON.
pub fn from_str<T: DeserializeOwned>(text: &str, root: &str) -> Result<T, DecodeError> {
    // Valid input, the usual case, is read once without tracking paths; only a failure is read
    // again with them, for the message (every event passes here, so the difference counts).
    if let Ok(value) = serde_json::from_str(text) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    // Depth is bounded by our own scan before this point; serde_json's own limit stays on as
    // a second guard.
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let field = join_path(root, &path);
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            DecodeError::InvalidJson {
                line: inner.line(),
                column: inner.column(),
                message: strip_position(&inner.to_string()),
            }
        } else {
            classify_data_error(&field, &inner.to_string())
        }
    })
}

fn join_path(root: &str, path: &str) -> String {
    match (root.is_empty(), path == ".") {
        (true, _) => path.to_owned(),
        (false, true) => root.to_owned(),
        (false, false) if path.starts_with('[') => format!("{root}{path}"),
        (false, false) => format!("{root}.{path}"),
    }
}

/// serde reports data errors as text; its messages have stable prefixes that tell a
/// missing field from an unknown one from a type mismatch.
fn classify_data_error(field: &str, message: &str) -> DecodeError {
    let message = strip_position(message);
    let within = |name: &str| {
        if field == "." || field.is_empty() {
            name.to_owned()
        } else {
            format!("{field}.{name}")
        }
    };
    if let Some(name) = backticked_after(&message, "missing field ") {
        return DecodeError::MissingField { field: within(&name) };
    }
    if let Some(name) = backticked_after(&message, "unknown field ") {
        return DecodeError::UnknownField { field: within(&clip(&name)) };
    }
    DecodeError::WrongType { field: field.to_owned(), message }
}

fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(idx) => message[..idx].to_owned(),
        None => message.to_owned(),
    }
}

/// A string field's length must lie in `min..=max` characters.
pub fn text(field: &str, value: &str, min: usize, max: usize) -> Result<(), DecodeError> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(DecodeError::invalid(field, format!("length {len} is outside {min}..={max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(DecodeError::invalid(field, "contains control characters"));
    }
    Ok(())
}

/// A number field must lie in `min..=max`.
pub fn range(field: &str, value: i64, min: i64, max: i64) -> Result<(), DecodeError> {
    if value < min || value > max {
        return Err(DecodeError::invalid(field, format!("{value} is outside {min}..={max}")));
    }
    Ok(())
}

/// Serde for payload and envelope timestamps: RFC 3339 in UTC (`Z` or `+00:00`; a local offset
/// on the wire is a producer bug worth catching, not something to convert silently), read at
/// microsecond precision (what PostgreSQL keeps, so an entity reads the same from PostgreSQL
/// and from Redis whatever precision a producer wrote). Use with
/// `#[serde(with = "prism_events::fields::utc_timestamp")]`.
pub mod utc_timestamp {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Writes `at` as RFC 3339 in UTC (`…Z`), with as many fractional digits as it has.
    pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    }

    /// Reads an RFC 3339 timestamp in UTC, truncated to microseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }

    pub(super) fn parse(text: &str) -> Result<DateTime<Utc>, String> {
        let parsed = DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("expected an RFC 3339 timestamp in UTC: {e}"))?;
        if parsed.offset().local_minus_utc() != 0 {
            return Err("expected an RFC 3339 timestamp in UTC (Z), got an offset".to_owned());
        }
        Ok(crate::truncate_to_micros(parsed.with_timezone(&Utc)))
    }
}

/// [`utc_timestamp`] for an optional field (`null` or absent is `None`). Use with
/// `#[serde(default, with = "prism_events::fields::optional_utc_timestamp")]`.
pub mod optional_utc_timestamp {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{de, Deserialize, Deserializer, Serializer};

    /// Writes `Some` as RFC 3339 in UTC, `None` as null.
    pub fn serialize<S: Serializer>(at: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            None => s.serialize_none(),
        }
    }

    /// Reads an RFC 3339 timestamp in UTC (truncated to microseconds), or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => super::utc_timestamp::parse(&text).map(Some).map_err(de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod timestamp_tests {
    use chrono::{DateTime, Utc};
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct At {
        #[serde(with = "super::utc_timestamp")]
        at: DateTime<Utc>,
    }

    #[test]
    fn nanoseconds_are_truncated_to_microseconds_and_offsets_refused() {
        let at: At = serde_json::from_str(r#"{"at": "2026-03-01T12:00:00.123456789Z"}"#).expect("parses");
        assert_eq!(at.at.to_rfc3339(), "2026-03-01T12:00:00.123456+00:00");
        let err =
            serde_json::from_str::<At>(r#"{"at": "2026-03-01T12:00:00+02:00"}"#).err().expect("refused");
        assert!(err.to_string().contains("in UTC"), "{err}");
    }
}
