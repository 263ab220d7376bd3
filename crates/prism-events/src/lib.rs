//! The event contract of Prism: what a domain event looks like on the wire and in Rust.
//!
//! Everything that crosses the broker is an [`Envelope`]: identity, aggregate position and
//! tracing fields around a JSON `payload` whose shape is fixed by `event_type` and
//! `schema_version`. The JSON Schemas under `schemas/` at the repository root are the
//! contract other languages code against; this crate holds the matching Rust types, and the
//! tests in `tests/schemas.rs` check one against the other.
//!
//! - [`aggregate`]: the aggregate types and the topic each one publishes to.
//! - [`envelope`]: the wire envelope and the typed [`Event`] it decodes into.
//! - [`events`]: one module per aggregate with its payload types, and [`DomainEvent`].
//! - [`decode`]: bytes → [`Event`], with size, nesting and field validation.
//! - [`upcast`]: the hook that lifts older schema versions to the current one before
//!   anything downstream sees them.
//! - [`error`]: [`DecodeError`], every way an incoming event can be wrong. All of them are
//!   permanent: retrying the same bytes cannot succeed.
//!
//! This crate is pure: no I/O, no runtime, no broker or database types.

pub mod aggregate;
pub mod decode;
pub mod envelope;
pub mod error;
pub mod events;
pub mod upcast;
mod validate;

pub use aggregate::AggregateType;
pub use decode::{decode_event, Limits, WireHeaders};
pub use envelope::{
    truncate_to_micros, Envelope, Event, EventMeta, HEADER_EVENT_TYPE, HEADER_SCHEMA_VERSION,
};
pub use error::DecodeError;
pub use events::{DomainEvent, EventType};
pub use validate::bounds;
