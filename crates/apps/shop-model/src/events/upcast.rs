//! Upcasters: lift a payload written under an older schema version to the current one.
//!
//! Projections and aggregates only ever see current versions. Each step takes one event type
//! from version N to N+1; the engine chains the steps ([`prism_events::EventRegistry::upcast`]).
//! Adding a schema version means adding its JSON Schema under `schemas/`, bumping the version
//! in [`crate::events`], and adding one step here.

use prism_events::{UpcastContext, Upcaster};
use serde_json::{Map, Value};

/// Every upcasting step of the shop's events, registered with the engine (which chains them
/// and refuses an older version without a step).
pub const UPCASTERS: &[Upcaster] =
    &[Upcaster { event_type: "UserRegistered", from_version: 1, apply: user_registered_v1_to_v2 }];

/// v1 called the display name `name` and had no marketing preference (read as "no").
fn user_registered_v1_to_v2(
    _: &UpcastContext<'_>,
    mut payload: Map<String, Value>,
) -> Result<Map<String, Value>, String> {
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
    use crate::events::{registry, EventType};

    fn upcast(
        event_type: EventType,
        version: u32,
        payload: Value,
    ) -> Result<Value, prism_events::DecodeError> {
        let registry = registry();
        let info = registry.event_type(event_type.as_str()).expect("registered");
        let context = UpcastContext {
            event_type: info.name,
            aggregate_id: uuid::Uuid::nil(),
            aggregate_version: 1,
            occurred_at: chrono::Utc::now(),
        };
        registry.upcast(&info, version, &context, payload)
    }

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
    fn malformed_v1_names_the_missing_field() {
        let err = upcast(EventType::UserRegistered, 1, json!({"email": "a@b.io"})).expect_err("no name");
        assert!(err.to_string().contains("payload.name"), "{err}");
    }
}
