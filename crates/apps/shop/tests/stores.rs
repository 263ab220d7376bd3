//! The engine's stores against the real PostgreSQL, with the shop's events and read models.
//! One test binary; each file under `stores/` is a module.
//!
//! - `checksum`: the rebuild's checksum of a table is the same for the same rows in any order,
//!   another for another value, and made for tables of more than 1 GB of row text.
//! - `event_store`: appends, optimistic concurrency, the outbox and its lane claims.
//! - `oracle_wait`: the oracle's wait looks again after a passing failure, and stops at a
//!   refusal that a second look meets again.
//! - `projection_race`: the version gate lands a batch once however many writers race, and a
//!   batch waits for a switch of generations without holding what the switch needs, and
//!   lands only in a generation still active at its commit.
//! - `replay_chunks`: bulk replay chunks land once, whoever loads them.
//! - `roles`: `ops/postgres/roles.sql` grants each role what it needs and nothing more.
//! - `switch`: a blue/green switch's verification holds no batch; the switch compares the
//!   generations' versions again under its lock and changes nothing while they are apart.
//! - `support`: set-ups the tests above share.

#[path = "stores/checksum.rs"]
mod checksum;
#[path = "stores/event_store.rs"]
mod event_store;
#[path = "stores/oracle_wait.rs"]
mod oracle_wait;
#[path = "stores/projection_race.rs"]
mod projection_race;
#[path = "stores/replay_chunks.rs"]
mod replay_chunks;
#[path = "stores/roles.rs"]
mod roles;
#[path = "stores/support.rs"]
mod support;
#[path = "stores/switch.rs"]
mod switch;
