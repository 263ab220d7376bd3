//! PostgreSQL adapter of Prism.
//!
//! - [`pool`]: the connection pool, pinned to the configured schema.
//! - [`migrate`]: numbered migrations from `migrations/`, applied under an advisory lock.
//! - [`read_models`]: read-model tables per projection generation, and the registry of
//!   which generation is active.
//! - [`projection`]: applying a batch of events to a projection instance in one transaction.
//! - [`error`]: [`StoreError`] and its transient/permanent class.
//! - [`event_store`]: [`EventStore`], streams loaded in version order and appended with their
//!   outbox rows in one transaction.
//! - [`outbox`]: what the outbox relay needs: lane claims, reading and deleting rows, backlog.
//! - [`idempotency`]: the recorded first responses to `Idempotency-Key` requests.
//!
//! SQL lives in `.sql` files next to the code that runs it; Rust holds no SQL longer than a
//! line or two.

pub mod error;
pub mod event_store;
pub mod idempotency;
pub mod migrate;
pub mod outbox;
pub mod pool;
pub mod projection;
pub mod read_models;
pub mod rebuild;

pub use error::{ErrorClass, StoreError};
pub use event_store::{outbox_lane, EventStore, EventStoreError, Stream, StreamAppend, OUTBOX_LANES};
pub use idempotency::{IdempotencyRecord, StoredResponse};
pub use migrate::{migrate, MigrationReport, MIGRATIONS};
pub use outbox::{Backlog, ClaimStatus, LaneClaims, OutboxMessage};
pub use pool::Database;
