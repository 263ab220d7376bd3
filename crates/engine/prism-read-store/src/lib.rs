//! The read side of the Prism engine, in PostgreSQL, for any application's read models.
//!
//! - [`registry`]: which read models and aggregate types the applications on this schema
//!   registered (so operators' tools need no application code).
//! - [`read_models`]: read-model tables per generation, created from the applications' table
//!   SQL, and the views on the active generation.
//! - [`projection`]: applying a batch of events to the read models it feeds in one
//!   transaction — the version gate, any read model's set-based writes, dead letters and
//!   parking — and redriving dead letters through the same path.
//! - [`rebuild`]: clearing an instance, allocating, verifying, switching to and retiring
//!   generations (in-place and blue/green rebuilds), and the checksum both print.
//! - [`row_sets`]: a set of any table's rows sent in one statement, one text array per column.
//! - [`documents`]: a stored row's document printed from its values as PostgreSQL returns them.
//! - [`requests`]: operator requests that need the application's folds (redrive), left by
//!   `prismctl` for the application's workers.
//!
//! The tables are created by the engine's migrations (`prism-postgres`) and, per read model,
//! by [`read_models::ensure_active`].

#![deny(missing_docs)]

pub mod documents;
pub mod projection;
pub mod read_models;
pub mod rebuild;
pub mod registry;
pub mod requests;
pub mod row_sets;

pub use projection::{apply_batch, BatchOutcome, CacheEntry, DeadLetterRecord, Target};
pub use registry::RegisteredReadModel;
