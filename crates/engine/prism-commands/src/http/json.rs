//! Reading a command body: JSON, objects with named fields only, and errors in the API's words.
//!
//! serde's derived structs also accept a JSON array of their fields in declaration order
//! (`[null, "a@example.com", "Ada", true]` would be read as the four fields of a command), and
//! its messages name Rust types (`expected struct Register with 4 elements`, `expected u32`).
//! A command API
//! speaks of fields, so [`parse_json`] reads in two steps:
//!
//! 1. the bytes into a JSON value (syntax errors with line and column, and duplicate keys,
//!    which a plain `serde_json::Value` would silently collapse to the last one);
//! 2. that value into the command type through `Strict`, a deserializer that refuses an
//!    array wherever a struct is expected, at any depth.
//!
//! Both steps track the path of the offending field (`entries[0].count`), and every message
//! goes through [`humanize`], which replaces Rust type names by what a client sends.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Unexpected, Visitor,
};
use serde::forward_to_deserialize_any;
use serde_json::{Map, Value};

use crate::http::error::ApiError;

/// Deserialises a command body, naming the offending field on failure. The body must be a
/// JSON object (`field` `body` otherwise).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let DistinctKeys(value) = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        json_error(&path, err.inner())
    })?;
    deserializer.end().map_err(|err| json_error(".", &err))?;
    if !value.is_object() {
        return Err(ApiError::invalid_field(
            "body",
            format!("the request body must be a JSON object with named fields, not {}", kind(&value)),
        ));
    }
    serde_path_to_error::deserialize(Strict(value)).map_err(|err| {
        let path = err.path().to_string();
        json_error(&path, err.inner())
    })
}

/// "an array", "a string", … for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn json_error(path: &str, err: &serde_json::Error) -> ApiError {
    let field = if path == "." || path.is_empty() { "body".to_owned() } else { path.to_owned() };
    let message = humanize(&strip_position(&err.to_string()));
    if err.is_syntax() || err.is_eof() {
        return ApiError::malformed_json(
            field,
            format!("the body is not valid JSON at line {}, column {}: {message}", err.line(), err.column()),
        );
    }
    // serde names a missing, unknown or repeated field in its message rather than in the path.
    let within = |name: &str| if field == "body" { name.to_owned() } else { format!("{field}.{name}") };
    if let Some(name) = backticked_after(&message, "missing field ") {
        let field = within(&name);
        return ApiError::invalid_field(field.clone(), format!("field `{field}` is missing"));
    }
    if let Some(name) = backticked_after(&message, "duplicate field ") {
        let name: String = name.chars().take(64).collect();
        let field = within(&name);
        return ApiError::invalid_field(field.clone(), format!("field `{field}` appears more than once"));
    }
    if let Some(name) = backticked_after(&message, "unknown field ") {
        let name: String = name.chars().take(64).collect();
        // The path already ends at the unknown key.
        let field =
            if field == name || field.ends_with(&format!(".{name}")) { field.clone() } else { within(&name) };
        return ApiError::invalid_field(field.clone(), format!("field `{field}` is not allowed: {message}"));
    }
    ApiError::invalid_field(field.clone(), format!("field `{field}` has the wrong type or value: {message}"))
}

fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?.strip_prefix('`')?;
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message.to_owned(),
    }
}

/// serde's words for JSON's, and Rust's types for what a client sends: `sequence` → `array`,
/// `map` → `object`, `unit value` → `null`, `struct Entry` → `a JSON object`, `u32` → `a whole
/// number from 0 to 4294967295`.
pub fn humanize(message: &str) -> String {
    let Some((head, expected)) = message.split_once(", expected ") else {
        return words(message);
    };
    format!("{}, expected {}", words(head), expectation(expected))
}

/// JSON's names for what serde calls the value it found.
fn words(text: &str) -> String {
    text.replace("invalid type: sequence", "invalid type: array")
        .replace("invalid type: map", "invalid type: object")
        .replace("invalid type: unit value", "invalid type: null")
        .replace("invalid length ", "wrong number of elements: ")
}

/// What serde's `expected …` should say to a client.
fn expectation(expected: &str) -> String {
    let integer = |min: i128, max: i128| format!("a whole number from {min} to {max}");
    match expected {
        "u8" => integer(0, u8::MAX.into()),
        "u16" => integer(0, u16::MAX.into()),
        "u32" => integer(0, u32::MAX.into()),
        "u64" | "usize" => integer(0, u64::MAX.into()),
        "i8" => integer(i8::MIN.into(), i8::MAX.into()),
        "i16" => integer(i16::MIN.into(), i16::MAX.into()),
        "i32" => integer(i32::MIN.into(), i32::MAX.into()),
        "i64" | "isize" => integer(i64::MIN.into(), i64::MAX.into()),
        "f32" | "f64" => "a number".to_owned(),
        "a sequence" => "an array".to_owned(),
        "a map" => "an object".to_owned(),
        "string or map" => "a string".to_owned(),
        "option" => "a value or null".to_owned(),
        other if other.starts_with("struct ") || other.starts_with("tuple struct ") => {
            "a JSON object".to_owned()
        }
        other if other.starts_with("enum ") => "one of the documented values".to_owned(),
        other => other.to_owned(),
    }
}

/// A JSON value read with duplicate keys refused (`duplicate field` names the key).
struct DistinctKeys(Value);

impl<'de> de::Deserialize<'de> for DistinctKeys {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(DistinctKeysVisitor).map(DistinctKeys)
    }
}

struct DistinctKeysVisitor;

impl<'de> Visitor<'de> for DistinctKeysVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        de::Deserialize::deserialize(deserializer).map(|DistinctKeys(value)| value)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(DistinctKeys(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
            }
            let DistinctKeys(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A JSON value as a deserializer that refuses an array where a struct is expected, at any
/// depth (serde's derived structs would take the fields by position).
struct Strict(Value);

impl<'de> de::Deserializer<'de> for Strict {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(items) => {
                let length = items.len();
                let mut seq = StrictSeq(items.into_iter());
                let value = visitor.visit_seq(&mut seq)?;
                if seq.0.len() == 0 {
                    Ok(value)
                } else {
                    Err(de::Error::invalid_length(length, &"fewer elements in the array"))
                }
            }
            Value::Object(object) => {
                visitor.visit_map(StrictMap { entries: object.into_iter(), value: None })
            }
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Strict(other)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match &self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            Value::Array(_) => {
                Err(de::Error::invalid_type(Unexpected::Other("array"), &"a JSON object with named fields"))
            }
            other => Err(de::Error::invalid_type(unexpected(other), &"a JSON object with named fields")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf unit
        unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Other("null"),
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => Unexpected::Unsigned(u),
            (_, Some(i), _) => Unexpected::Signed(i),
            (_, _, Some(f)) => Unexpected::Float(f),
            _ => Unexpected::Other("number"),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Other("array"),
        Value::Object(_) => Unexpected::Other("object"),
    }
}

struct StrictSeq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for StrictSeq {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0.next().map(|item| seed.deserialize(Strict(item))).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct StrictMap {
    entries: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for StrictMap {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        self.value = Some(value);
        seed.deserialize(IntoDeserializer::<serde_json::Error>::into_deserializer(key)).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Self::Error> {
        let value =
            self.value.take().ok_or_else(|| de::Error::custom("a value was asked for before its key"))?;
        seed.deserialize(Strict(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use uuid::Uuid;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Batch {
        owner_id: Uuid,
        entries: Vec<Entry>,
        #[serde(default)]
        note: Option<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Entry {
        thing_id: Uuid,
        count: u32,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Fast,
        Slow,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Switch {
        mode: Mode,
        #[serde(default)]
        opt_in: Option<bool>,
    }

    const ID: &str = "\"0b6f3c9e-6a3d-4a57-9d8e-2f1c7e5b9a10\"";

    fn refusal(body: &str) -> ApiError {
        parse_json::<Batch>(body.as_bytes()).expect_err("invalid")
    }

    fn field_of(body: &str) -> (String, Option<String>) {
        let err = refusal(body);
        (err.code.to_owned(), err.field)
    }

    #[test]
    fn errors_name_the_field() {
        let thing = ID;
        assert_eq!(field_of("{\"entries\": []}"), ("invalid_field".into(), Some("owner_id".into())));
        assert_eq!(
            field_of(&format!("{{\"owner_id\": {ID}, \"entries\": [], \"extra\": 1}}")),
            ("invalid_field".into(), Some("extra".into()))
        );
        assert_eq!(
            field_of(&format!(
                "{{\"owner_id\": {ID}, \"entries\": [{{\"thing_id\": {thing}, \"count\": -1}}]}}"
            )),
            ("invalid_field".into(), Some("entries[0].count".into()))
        );
        assert_eq!(
            field_of(&format!("{{\"owner_id\": {ID}, \"entries\": [{{\"thing_id\": {thing}}}]}}")),
            ("invalid_field".into(), Some("entries[0].count".into()))
        );
        assert_eq!(
            field_of(&format!(
                "{{\"owner_id\": {ID}, \"entries\": [{{\"thing_id\": {thing}, \"count\": 1, \"x\": 2}}]}}"
            )),
            ("invalid_field".into(), Some("entries[0].x".into()))
        );
        assert_eq!(field_of("{\"owner_id\": "), ("malformed_json".into(), Some("owner_id".into())));
        assert_eq!(field_of(""), ("malformed_json".into(), Some("body".into())));
        assert_eq!(
            field_of(&format!("{{\"owner_id\": {ID}, \"entries\": []}} trailing")).0,
            "malformed_json"
        );
        assert_eq!(field_of("[1]").0, "invalid_field");
    }

    #[test]
    fn bodies_must_be_objects_at_every_depth() {
        let top = refusal(&format!("[{ID}, []]"));
        assert_eq!((top.code, top.field.as_deref()), ("invalid_field", Some("body")));
        assert!(top.message.contains("JSON object") && top.message.contains("array"), "{}", top.message);
        for body in ["\"text\"", "42", "null", "true"] {
            assert_eq!(refusal(body).field.as_deref(), Some("body"), "{body}");
        }
        // A positional line inside an otherwise fine body.
        let nested = refusal(&format!("{{\"owner_id\": {ID}, \"entries\": [[{ID}, 1]]}}"));
        assert_eq!(nested.field.as_deref(), Some("entries[0]"));
        assert!(nested.message.contains("expected a JSON object"), "{}", nested.message);
        assert!(!nested.message.contains("struct"), "{}", nested.message);
    }

    #[test]
    fn messages_speak_json_not_rust() {
        let negative =
            refusal(&format!("{{\"owner_id\": {ID}, \"entries\": [{{\"thing_id\": {ID}, \"count\": -1}}]}}"));
        assert!(negative.message.contains("a whole number from 0 to 4294967295"), "{}", negative.message);
        let text = refusal(&format!("{{\"owner_id\": {ID}, \"entries\": \"many\"}}"));
        assert!(text.message.contains("expected an array"), "{}", text.message);
        let object = refusal(&format!("{{\"owner_id\": {ID}, \"entries\": [\"x\"]}}"));
        assert!(object.message.contains("expected a JSON object"), "{}", object.message);
        for err in [negative, text, object] {
            for rust in ["u32", "struct", "Entry", "Batch", "sequence", "Vec"] {
                assert!(!err.message.contains(rust), "`{rust}` in {}", err.message);
            }
        }
        let wrong = parse_json::<Switch>(b"{\"mode\": 3}").expect_err("number");
        assert_eq!(wrong.field.as_deref(), Some("mode"));
        assert!(!wrong.message.contains("Mode"), "{}", wrong.message);
        let unknown = parse_json::<Switch>(b"{\"mode\": \"medium\"}").expect_err("medium");
        assert!(unknown.message.contains("`fast` or `slow`"), "{}", unknown.message);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let twice = refusal(&format!("{{\"owner_id\": {ID}, \"owner_id\": {ID}, \"entries\": []}}"));
        assert_eq!((twice.code, twice.field.as_deref()), ("invalid_field", Some("owner_id")));
        let nested = refusal(&format!(
            "{{\"owner_id\": {ID}, \"entries\": [{{\"thing_id\": {ID}, \"count\": 1, \"count\": 2}}]}}"
        ));
        assert_eq!(nested.field.as_deref(), Some("entries[0].count"));
    }

    #[test]
    fn valid_bodies_read_as_before() {
        let batch: Batch = parse_json(
            format!(
                "{{\"owner_id\": {ID}, \"entries\": [{{\"thing_id\": {ID}, \"count\": 2}}], \"note\": null}}"
            )
            .as_bytes(),
        )
        .expect("valid");
        assert_eq!((batch.entries.len(), batch.entries[0].count, batch.note), (1, 2, None));
        let switch: Switch = parse_json(b"{\"mode\": \"slow\", \"opt_in\": true}").expect("valid");
        assert_eq!((switch.mode, switch.opt_in), (Mode::Slow, Some(true)));
        let big = parse_json::<Entry>(format!("{{\"thing_id\": {ID}, \"count\": 4294967296}}").as_bytes())
            .expect_err("too big");
        assert_eq!(big.field.as_deref(), Some("count"));
    }
}
