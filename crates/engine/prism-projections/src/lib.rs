//! The read side of the Prism engine as pure values and functions: how an application defines
//! a read model, and which events may change it.
//!
//! - [`application`]: [`Application`], an application's name, events and read models.
//! - [`read_model`]: the projection API — [`ReadModel`] with its [fold](ReadModel::fold) (one
//!   row per aggregate) and [sum](ReadModel::sum) (rows fed by many aggregates) feeds.
//! - [`projection`]: [`ProjectionInstance`], a read model at one generation, and the names of
//!   its table, gate rows and cache keys.
//! - [`gate`]: the version gate and the batch planner — duplicates skipped, gaps detected,
//!   aggregates parked behind dead letters — as a pure function over a batch, property-tested.
//! - [`fold`]: [`Fold`](fold::Fold), a fold feed erased over its row type, whose rows stay
//!   typed while a batch folds them.
//! - [`error`]: [`Unprojectable`], an event a fold cannot apply (a permanent error).
//!
//! Nothing here does I/O: the PostgreSQL side is `prism-read-store`, the consumer side
//! `prism-projector`.

#![deny(missing_docs)]

pub mod application;
pub mod error;
pub mod fold;
pub mod gate;
pub mod projection;
pub mod read_model;

pub use application::Application;
pub use error::Unprojectable;
pub use gate::{AggregateKey, GapPolicy, GateState, ItemOutcome, PlannedItem};
pub use projection::{intern, key_value_text, ProjectionInstance};
pub use read_model::{DefinitionError, Feed, FeedKind, ReadModel, Row, REVISION_COLUMN, VERSION_COLUMN};
