//! Process plumbing shared by Prism's binaries, so each binary only wires adapters together.
//!
//! - [`allocator`]: jemalloc's options (one arena, freed pages returned after 2 s).
//! - [`logging`]: tracing subscriber set up from `[log]` (text or JSON lines).
//! - [`metric_names`]: every metric name Prism exports, in one place; dashboards, alert
//!   rules and their tests refer to these.
//! - [`telemetry`]: the Prometheus recorder and its upkeep.
//! - [`health`]: [`Health`], the named readiness checks behind `/readyz`.
//! - [`http`]: the operations router (`/metrics`, `/healthz`, `/readyz`) and serving it.
//! - [`shutdown`]: a future that resolves on SIGTERM or Ctrl-C.
//! - [`service`]: the `main` of the long-running binaries: configuration, logging, exit codes.
//!
//! Linking this crate also sets the process's memory allocator to jemalloc: a projector batch
//! allocates and frees tens of thousands of small JSON values across the runtime's threads, and
//! with glibc's malloc half of the projector's CPU went to allocating, freeing and
//! consolidating them (BENCHMARKS.md, "Where Prism's microseconds go"). [`allocator`] sets its
//! arenas and how soon it returns freed memory.

#![deny(missing_docs)]

pub mod allocator;
pub mod health;
pub mod http;
pub mod logging;
pub mod metric_names;
pub mod service;
pub mod shutdown;
pub mod telemetry;

pub use health::Health;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
