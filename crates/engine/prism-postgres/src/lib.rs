//! PostgreSQL plumbing shared by the engine's two stores (the write side in
//! `prism-event-store`, the read side in `prism-read-store`).
//!
//! - [`pool`]: [`Database`], the connection pool, pinned to the configured schema, and
//!   [`pool::connect_one`], the single connection every other PostgreSQL session uses, and
//!   [`pool::forward_notifications`], which drives one kept open to `LISTEN`.
//! - [`tls`]: TLS (the URL's `sslmode`, `postgres.ssl_root_cert`) and the errors that name
//!   a refused password or an untrusted certificate.
//! - [`migrate`](mod@migrate): the engine's numbered migrations from `migrations/` (event store, outbox,
//!   idempotency, projection state, the read-model registry), applied under an advisory lock.
//! - [`cached`]: statements prepared once per pooled connection, for hot paths.
//! - [`error`]: [`StoreError`] and its transient/permanent class, decided here once.
//!
//! SQL lives in `.sql` files next to the code that runs it.

#![deny(missing_docs)]

pub mod cached;
pub mod error;
pub mod migrate;
pub mod pool;
pub mod tls;

pub use error::{all_or_cause, ErrorClass, StoreError};
pub use migrate::{migrate, MigrationReport, MIGRATIONS};
pub use pool::{connect_one, connect_with, Database};
pub use tls::PgConnection;
