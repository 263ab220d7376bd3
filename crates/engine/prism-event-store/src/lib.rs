//! The write side of the Prism engine, in PostgreSQL: the event store, the transactional
//! outbox and the idempotency records of commands. A documented contract too: a command service
//! in another language appends to these tables and Prism's relay publishes what it wrote (see
//! `CONTRACT.md` in this crate).
//!
//! - [`event_store`]: [`EventStore`], streams loaded in version order and appended with their
//!   outbox rows in one transaction, under an optimistic concurrency check.
//! - [`outbox`]: what the outbox relay needs: lane claims, reading and deleting rows, backlog.
//! - [`idempotency`]: the recorded first responses to commands sent with an idempotency key.
//!
//! The tables are created by the engine's migrations (`prism-postgres`).

#![deny(missing_docs)]

pub mod event_store;
pub mod idempotency;
pub mod outbox;

pub use event_store::{
    notify_channel, outbox_lane, Continuation, EventStore, EventStoreError, Stream, StreamAppend,
    OUTBOX_LANES,
};
pub use idempotency::{IdempotencyRecord, StoredResponse};
pub use outbox::{Backlog, ClaimStatus, LaneClaims, OutboxMessage};
