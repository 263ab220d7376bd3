//! A minimal application for the engine's own tests, which need topics and events but no
//! domain: one aggregate type (`probe`) with one event type (`Noted`) and no read models. An
//! engine test that needs read models is a test of an application (the shop's and the
//! telemetry application's test suites run every guarantee through one).

use prism_events::{AggregateType, DecodeError, EventRegistry, EventSet, EventTypeInfo};
use prism_projections::Application;
use serde::{Deserialize, Serialize};

/// The probe's aggregate type: topic `<prefix>probe.events`.
pub const PROBE: AggregateType = AggregateType::new("probe");

/// The probe's one event: something was noted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Noted {
    /// A number, to tell events apart.
    pub n: i64,
}

impl EventSet for Noted {
    fn event_types() -> &'static [EventTypeInfo] {
        &[EventTypeInfo { name: "Noted", aggregate_type: PROBE, current_version: 1 }]
    }

    fn from_payload(_: &'static str, payload: serde_json::Value) -> Result<Self, DecodeError> {
        prism_events::fields::from_value(payload, "payload")
    }

    fn event_type(&self) -> &'static str {
        "Noted"
    }

    fn to_payload(&self) -> serde_json::Value {
        serde_json::json!({ "n": self.n })
    }
}

/// The probe application: its events, no read models.
pub fn application() -> Application {
    let events = EventRegistry::of::<Noted>().unwrap_or_else(|err| panic!("the probe's events: {err}"));
    Application::new("probe", events, Vec::new()).unwrap_or_else(|err| panic!("the probe application: {err}"))
}
