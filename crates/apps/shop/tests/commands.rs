//! The shop's command side end to end: `shop_commands::serve` (the engine's command service
//! with the shop's routes) and the `shop-commands` binary against the real PostgreSQL and
//! broker, each test in its own environment. One test binary; each file under `commands/` is a
//! module.
//!
//! - `http`: every status code of the error table, idempotent replays, contexts, concurrent
//!   commands, readiness, and the hardening of the HTTP edge (a missing schema named, object bodies only,
//!   JSON 405s, empty bodies on all-optional commands).
//! - `stock`: the rules across aggregates — carts and orders only for registered users, stock
//!   reserved with the order (409 `insufficient_stock` when short), released on cancel,
//!   shipped with the order, racing orders never overselling.
//! - `relay`: the outbox relay through a broker outage, a SIGKILL mid-publish and two relays
//!   at once, read back and checked against the event store.
//! - `contract`: the event store and outbox as a documented contract, proven by a Python
//!   program (`commands/append_via_contract.py`) whose events are relayed and projected.

#[path = "commands/support.rs"]
mod support;

#[path = "commands/contract.rs"]
mod contract;
#[path = "commands/http.rs"]
mod http;
#[path = "commands/relay.rs"]
mod relay;
#[path = "commands/stock.rs"]
mod stock;
