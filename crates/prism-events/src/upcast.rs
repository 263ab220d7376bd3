//! Upcasters: lift a payload written under an older schema version to the current one.
//!
//! Projections and aggregates only ever see current versions. Each step takes one event type
//! from version N to N+1; [`upcast`] chains steps until the current version. Adding a schema
//! version means adding its JSON Schema under `schemas/`, bumping the version in
//! [`crate::events`], and adding one step here.

use serde_json::{Map, Value};

use crate::error::DecodeError;
use crate::events::EventType;

/// A payload object in, the next version's payload object (or why not) out.
type StepFn = fn(Map<String, Value>) -> Result<Map<String, Value>, String>;

/// One step: `event_type` at `from_version` becomes `from_version + 1`.
struct Step {
    event_type: EventType,
    from_version: u32,
    apply: StepFn,
}

const STEPS: &[Step] =
    &[Step { event_type: EventType::UserRegistered, from_version: 1, apply: user_registered_v1_to_v2 }];

/// Brings `payload` from `version` to the current version of `event_type`.
pub fn upcast(event_type: EventType, version: u32, payload: Value) -> Result<Value, DecodeError> {
    let current = event_type.current_schema_version();
    if version == 0 || version > current {
        return Err(DecodeError::UnsupportedSchemaVersion {
            event_type: event_type.as_str().to_owned(),
            version,
            current,
        });
    }
    let mut payload = payload;
    for from_version in version..current {
        let failed = |reason: String| DecodeError::UpcastFailed {
            event_type: event_type.as_str().to_owned(),
            from_version,
            reason,
        };
        let step = STEPS
            .iter()
            .find(|s| s.event_type == event_type && s.from_version == from_version)
            .ok_or_else(|| failed("no upcaster for this version".to_owned()))?;
        let Value::Object(object) = payload else {
            return Err(failed("payload is not a JSON object".to_owned()));
        };
        payload = Value::Object((step.apply)(object).map_err(failed)?);
    }
    Ok(payload)
}

/// v1 called the display name `name` and had no marketing preference (read as "no").
fn user_registered_v1_to_v2(mut payload: Map<String, Value>) -> Result<Map<String, Value>, String> {
    let name = payload.remove("name").ok_or("field `payload.name` is missing")?;
    if payload.contains_key("display_name") || payload.contains_key("marketing_opt_in") {
        return Err("a version 1 payload must not contain version 2 fields".to_owned());
    }
    payload.insert("display_name".to_owned(), name);
    payload.insert("marketing_opt_in".to_owned(), Value::Bool(false));
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn user_registered_v1_becomes_v2() {
        let v1 = json!({"email": "ada@example.com", "name": "Ada"});
        let v2 = upcast(EventType::UserRegistered, 1, v1).expect("upcast");
        assert_eq!(v2, json!({"email": "ada@example.com", "display_name": "Ada", "marketing_opt_in": false}));
    }

    #[test]
    fn current_version_passes_through_unchanged() {
        let v2 = json!({"email": "a@b.io", "display_name": "A", "marketing_opt_in": true});
        assert_eq!(upcast(EventType::UserRegistered, 2, v2.clone()).expect("noop"), v2);
    }

    #[test]
    fn future_and_zero_versions_are_refused() {
        for version in [0, 3, 99] {
            let err = upcast(EventType::UserRegistered, version, json!({})).expect_err("refused");
            assert_eq!(err.kind(), "unsupported_schema_version", "{err}");
        }
    }

    #[test]
    fn every_older_version_has_a_step() {
        for &event_type in EventType::ALL {
            for from in 1..event_type.current_schema_version() {
                assert!(
                    STEPS.iter().any(|s| s.event_type == event_type && s.from_version == from),
                    "{event_type} has no upcaster from version {from}"
                );
            }
        }
    }

    #[test]
    fn malformed_v1_names_the_missing_field() {
        let err = upcast(EventType::UserRegistered, 1, json!({"email": "a@b.io"})).expect_err("no name");
        assert!(err.to_string().contains("payload.name"), "{err}");
    }
}
