//! PostgreSQL plumbing shared by the engine's two stores (the write side in
//! `prism-event-store`, the read side in `prism-read-store`).
//!
//! - [`pool`]: [`Database`], the connection pool, pinned to the configured schema.
//! - [`migrate`]: the engine's numbered migrations from `migrations/` (event store, outbox,
//!   idempotency, projection state, the read-model registry), applied under an advisory lock.
//! - [`error`]: [`StoreError`] and its transient/permanent class, decided here once.
//!
//! SQL lives in `.sql` files next to the code that runs it.

#![warn(missing_docs)]

pub mod error;
pub mod migrate;
pub mod pool;

pub use error::{ErrorClass, StoreError};
pub use migrate::{migrate, MigrationReport, MIGRATIONS};
pub use pool::Database;
