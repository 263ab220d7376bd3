//! Field-level helpers for payload types: typed deserialisation that names the offending
//! field by its full path, and the common length and range rules. Applications use them in
//! [`crate::EventSet::from_payload`], so every event's errors read the same way.

use serde::de::DeserializeOwned;

use crate::error::{clip, DecodeError};

/// Deserialises `value` into `T`, turning serde's message into a [`DecodeError`] that names
/// the field by its full path below `root` (e.g. `payload.lines[2].quantity`).
pub fn from_value<T: DeserializeOwned>(
    value: serde_json::Value,
    root: &str,
) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = join_path(root, &path);
        classify_data_error(&field, &err.into_inner().to_string())
    })
}

/// Same as [`from_value`], straight from text already known to be valid JSON.
pub fn from_str<T: DeserializeOwned>(text: &str, root: &str) -> Result<T, DecodeError> {
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
