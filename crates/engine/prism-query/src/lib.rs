//! `prism-query`: the engine's read side over HTTP, for any application.
//!
//! An application mounts its query routes on the engine's read path and serves them with
//! [`serve`] (or its whole binary is [`main`]). Every registered read model is then readable by
//! key at `GET /read-models/{name}/{key}`, and the application's own routes use the same
//! building blocks:
//!
//! ```no_run
//! use axum::extract::State;
//! use axum::http::HeaderMap;
//! use axum::response::Response;
//! use axum::routing::get;
//! use axum::Router;
//! use prism_query::{entity_response, ApiError, PathIds, QueryParams, ReadPath};
//!
//! async fn device(State(read): State<ReadPath>, path: PathIds, query: QueryParams, headers: HeaderMap)
//!     -> Result<Response, ApiError> {
//!     let id = path.uuid("id")?;
//!     entity_response(&read, "device_status", &id.to_string(), "device", query, &headers).await
//! }
//!
//! # fn app() -> prism_projections::Application { unimplemented!() }
//! fn main() -> std::process::ExitCode {
//!     prism_query::main(app(), Router::new().route("/devices/{id}", get(device)))
//! }
//! ```
//!
//! What lives where:
//! - [`read_path`]: [`ReadPath`] — by key (Redis first, PostgreSQL on a miss, refilling Redis
//!   with the projector's compare-and-set), read-your-writes with `min_version`, and
//!   [`ReadPath::query_rows`] for an application's lists and ranges. PostgreSQL is reached
//!   through one small seam (`read_path::source`), which reads from the primary or its read replicas.
//! - [`http`]: the generic route, the entity answer (200 / 202 stale / 404, `X-Prism-Version`)
//!   and the router that puts the engine's and an application's routes together.
//! - [`params`]: query string, path, `limit`, dates and `min_version` parsing, each failing with
//!   a 400 naming the parameter.
//! - [`error`]: [`ReadError`] (the read path's, classed transient/permanent) and [`ApiError`]
//!   (the `{"error": {...}}` body and its status table).
//! - [`notify`]: the one `LISTEN` connection of the process and the per-read-model signals it
//!   fans out to waiting requests.
//! - [`generations`]: the active generation per read model, which names the cache keys; reads
//!   follow a blue/green switch as soon as it is notified.
//! - [`metrics`]: request, cache, PostgreSQL-read and staleness metrics.
//! - [`service`]: [`serve`], [`run`] and [`main`], with readiness: ready while PostgreSQL and
//!   the listener are; a Redis outage degrades (shown in `/readyz` and metrics), it does not
//!   make the service unready, since every read is still served.
//!
//! SQL lives in `sql/*.sql`; the statements that read a row by key are generated once per read
//! model from its definition.

#![deny(missing_docs)]

pub mod error;
pub mod generations;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod params;
pub mod read_path;
pub mod service;

pub use error::{ApiError, ReadError};
pub use http::{entity_response, respond};
pub use params::{PathIds, QueryParams};
pub use read_path::{ReadPath, Served, StoredRow};
pub use service::{main, run, serve};
/// Parameter values of [`ReadPath::query_rows`] (PostgreSQL's types: `Uuid`, `String`,
/// `chrono` times, integers, `Option`s of them, …).
pub use tokio_postgres::types::ToSql;
