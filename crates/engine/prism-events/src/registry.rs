//! How an application tells the engine about its events.
//!
//! An application has one Rust type for its events — usually an enum with one variant per
//! event type — and implements [`EventSet`] for it: the list of event types with their
//! aggregate type and current schema version, how a payload at the current version becomes the
//! typed event (validated), how a typed event becomes a payload again, and the upcasters that
//! lift older schema versions. [`EventRegistry::of`] turns that into the value the engine works
//! with: it resolves names read from the wire, upcasts, and decodes payloads into typed bodies
//! the application's folds and aggregates read back with [`crate::Event::body`].
//!
//! The envelope around the payload, its schema and its validation are the engine's
//! ([`crate::decode`]); the payloads, their JSON Schemas and their rules are the application's.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::aggregate::AggregateType;
use crate::envelope::EncodeFn;
use crate::error::{clip, DecodeError};

/// One event type of an application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTypeInfo {
    /// The name carried in the envelope's `event_type` and the Kafka header, e.g.
    /// `OrderPlaced`.
    pub name: &'static str,
    /// The aggregate type that emits it.
    pub aggregate_type: AggregateType,
    /// The schema version this build produces and reads; older versions are upcast to it.
    pub current_version: u32,
}

/// One upcasting step: a payload of `event_type` at `from_version` becomes `from_version + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    /// The event type it applies to.
    pub event_type: &'static str,
    /// The version it reads; it produces the next one.
    pub from_version: u32,
    /// The step itself: the payload object in, the next version's object (or why not) out.
    /// The context carries the rest of the envelope, for a new field that derives from it
    /// (e.g. a timestamp that older producers left to `occurred_at`).
    pub apply: UpcastFn,
}

/// An upcaster's step: the payload object in, the next version's object (or why not) out.
pub type UpcastFn = fn(&UpcastContext<'_>, Map<String, Value>) -> Result<Map<String, Value>, String>;

/// What an upcaster may read besides the payload: the envelope of the event being upcast.
#[derive(Debug, Clone, Copy)]
pub struct UpcastContext<'a> {
    /// The event type.
    pub event_type: &'a str,
    /// The aggregate the event belongs to.
    pub aggregate_id: uuid::Uuid,
    /// Its version within the aggregate.
    pub aggregate_version: u64,
    /// When it occurred (UTC, microseconds).
    pub occurred_at: chrono::DateTime<chrono::Utc>,
}

/// An application's events: implemented by the one type (usually an enum) that holds any of
/// them, decoded and validated.
pub trait EventSet: Sized + Clone + fmt::Debug + Send + Sync + 'static {
    /// Every event type, with its aggregate type and current schema version.
    fn event_types() -> &'static [EventTypeInfo];

    /// The upcasting steps from every older schema version (none by default).
    fn upcasters() -> &'static [Upcaster] {
        &[]
    }

    /// A payload already upcast to the current version of `event_type` (one of
    /// [`Self::event_types`]) as the typed event, with the application's field rules checked.
    /// Errors name the offending field (see [`crate::fields`]).
    fn from_payload(event_type: &'static str, payload: Value) -> Result<Self, DecodeError>;

    /// The event's type name (one of [`Self::event_types`]).
    fn event_type(&self) -> &'static str;

    /// The payload at the current schema version.
    fn to_payload(&self) -> Value;
}

type DecodeFn = fn(&'static str, Value) -> Result<Arc<dyn Any + Send + Sync>, DecodeError>;

/// The engine's view of an application's [`EventSet`]: names resolved, upcasters chained,
/// payloads decoded into typed bodies. Cheap to clone.
#[derive(Clone)]
pub struct EventRegistry {
    /// Event types by name.
    types: Arc<BTreeMap<&'static str, EventTypeInfo>>,
    /// The aggregate types, in the order the application declared them first.
    aggregate_types: Arc<Vec<AggregateType>>,
    /// Upcasting steps by (event type, from version).
    upcasters: Arc<BTreeMap<(&'static str, u32), Upcaster>>,
    /// `E::from_payload`, erased.
    decode: DecodeFn,
    /// `E::to_payload`, erased: how a decoded event writes its payload.
    encode: EncodeFn,
    /// The name of `E`, for messages.
    type_name: &'static str,
}

impl fmt::Debug for EventRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRegistry")
            .field("events", &self.type_name)
            .field("event_types", &self.types.len())
            .field("aggregate_types", &self.aggregate_types)
            .finish()
    }
}

/// Why an application's [`EventSet`] cannot be registered (a bug in the application).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event set {events}: {problem}")]
pub struct RegistryError {
    /// The application's event type.
    pub events: &'static str,
    /// What is wrong.
    pub problem: String,
}

impl EventRegistry {
    /// The registry of `E`'s event types. Fails when the declarations contradict each other:
    /// a name twice, an invalid aggregate type name, a version 0, or an older version with no
    /// upcaster.
    pub fn of<E: EventSet>() -> Result<Self, RegistryError> {
        let events = std::any::type_name::<E>();
        let problem = |problem: String| RegistryError { events, problem };
        let mut types = BTreeMap::new();
        let mut aggregate_types = Vec::new();
        for info in E::event_types() {
            if info.name.is_empty()
                || info.name.len() > 100
                || !info.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(problem(format!(
                    "event type name `{}` must be 1 to 100 letters, digits or `_`",
                    info.name
                )));
            }
            if !AggregateType::is_valid_name(info.aggregate_type.as_str()) {
                return Err(problem(format!(
                    "aggregate type `{}` of {} must be lowercase letters, digits and `_`, starting with a letter",
                    info.aggregate_type, info.name
                )));
            }
            if info.current_version == 0 {
                return Err(problem(format!("{} has schema version 0; versions start at 1", info.name)));
            }
            if types.insert(info.name, *info).is_some() {
                return Err(problem(format!("event type {} is declared twice", info.name)));
            }
            if !aggregate_types.contains(&info.aggregate_type) {
                aggregate_types.push(info.aggregate_type);
            }
        }
        let mut upcasters = BTreeMap::new();
        for step in E::upcasters() {
            let Some(info) = types.get(step.event_type) else {
                return Err(problem(format!("an upcaster names the unknown event type {}", step.event_type)));
            };
            if step.from_version == 0 || step.from_version >= info.current_version {
                return Err(problem(format!(
                    "the upcaster of {} from version {} does not lead to its current version {}",
                    step.event_type, step.from_version, info.current_version
                )));
            }
            upcasters.insert((step.event_type, step.from_version), *step);
        }
        for info in types.values() {
            for from in 1..info.current_version {
                if !upcasters.contains_key(&(info.name, from)) {
                    return Err(problem(format!("{} has no upcaster from version {from}", info.name)));
                }
            }
        }
        let decode: DecodeFn = |event_type, payload| {
            E::from_payload(event_type, payload).map(|body| Arc::new(body) as Arc<dyn Any + Send + Sync>)
        };
        Ok(Self {
            types: Arc::new(types),
            aggregate_types: Arc::new(aggregate_types),
            upcasters: Arc::new(upcasters),
            decode,
            encode: crate::envelope::encode_body::<E>,
            type_name: events,
        })
    }

    /// Every aggregate type of the application (one topic each).
    pub fn aggregate_types(&self) -> &[AggregateType] {
        &self.aggregate_types
    }

    /// The aggregate type called `name`, if the application has one.
    pub fn aggregate_type(&self, name: &str) -> Option<AggregateType> {
        self.aggregate_types.iter().copied().find(|t| t.as_str() == name)
    }

    /// The event type called `name`, if the application has one.
    pub fn event_type(&self, name: &str) -> Option<EventTypeInfo> {
        self.types.get(name).copied()
    }

    /// Every event type.
    pub fn event_types(&self) -> impl Iterator<Item = &EventTypeInfo> {
        self.types.values()
    }

    /// Brings `payload` of `event_type` from `version` to the current version.
    pub fn upcast(
        &self,
        event_type: &EventTypeInfo,
        version: u32,
        context: &UpcastContext<'_>,
        payload: Value,
    ) -> Result<Value, DecodeError> {
        let current = event_type.current_version;
        if version == 0 || version > current {
            return Err(DecodeError::UnsupportedSchemaVersion {
                event_type: event_type.name.to_owned(),
                version,
                current,
            });
        }
        let mut payload = payload;
        for from_version in version..current {
            let failed = |reason: String| DecodeError::UpcastFailed {
                event_type: event_type.name.to_owned(),
                from_version,
                reason: clip(&reason),
            };
            let step = self
                .upcasters
                .get(&(event_type.name, from_version))
                .ok_or_else(|| failed("no upcaster for this version".to_owned()))?;
            let Value::Object(object) = payload else {
                return Err(failed("payload is not a JSON object".to_owned()));
            };
            payload = Value::Object((step.apply)(context, object).map_err(failed)?);
        }
        Ok(payload)
    }

    /// The typed body of a payload at the current version of `event_type`.
    pub(crate) fn decode_body(
        &self,
        event_type: &EventTypeInfo,
        payload: Value,
    ) -> Result<Arc<dyn Any + Send + Sync>, DecodeError> {
        (self.decode)(event_type.name, payload)
    }

    /// How the events this registry decodes write their payload ([`crate::Event::payload`]).
    pub(crate) fn encode(&self) -> EncodeFn {
        self.encode
    }
}
