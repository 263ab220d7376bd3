//! The event contract of the Prism engine: what a domain event looks like on the wire, and
//! how an application tells the engine about its own events.
//!
//! Everything that crosses the broker is an [`Envelope`]: identity, aggregate position and
//! tracing fields around a JSON `payload` whose shape is fixed by `event_type` and
//! `schema_version`. The envelope, its JSON Schema (`schemas/envelope.schema.json` in this
//! crate) and its validation are the engine's; event types, their payload schemas and their
//! upcasters are the application's, declared by implementing [`EventSet`].
//!
//! - [`aggregate`]: [`AggregateType`], which also names the aggregate's topic, and the
//!   [`Aggregate`] trait (pure decide/evolve) command services run.
//! - [`registry`]: [`EventSet`] (implemented by the application's event type) and
//!   [`EventRegistry`] (the engine's view of it: names, upcasting, typed decoding).
//! - [`envelope`]: the wire [`Envelope`] and the decoded [`Event`], whose typed body the
//!   application reads back with [`Event::body`].
//! - [`decode`]: bytes → [`Event`], with size, nesting, envelope and header checks.
//! - [`fields`]: helpers for payload validation that name the offending field.
//! - [`error`]: [`DecodeError`], every way an incoming event can be wrong. All of them are
//!   permanent: retrying the same bytes cannot succeed.
//!
//! This crate is pure: no I/O, no runtime, no broker or database types.

#![deny(missing_docs)]

pub mod aggregate;
pub mod decode;
pub mod envelope;
pub mod error;
pub mod fields;
pub mod registry;

pub use aggregate::{rehydrate, Aggregate, AggregateType};
pub use decode::{decode_event, Limits, WireHeaders};
pub use envelope::{
    truncate_to_micros, Envelope, Event, EventMeta, EventPosition, HEADER_EVENT_TYPE, HEADER_SCHEMA_VERSION,
};
pub use error::DecodeError;
pub use registry::{EventRegistry, EventSet, EventTypeInfo, RegistryError, UpcastContext, Upcaster};

/// The JSON Schema of the envelope (draft 2020-12), for producers in other languages.
pub const ENVELOPE_SCHEMA: &str = include_str!("../schemas/envelope.schema.json");
