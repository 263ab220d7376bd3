//! Prism's configuration: one [`PrismConfig`] shared by every binary, loaded in layers.
//!
//! Layers, later ones winning: `config/default.toml` (compiled in, so a binary needs no
//! files to start), `config/<PRISM_ENV>.toml`, files passed with `--config`, then
//! environment variables `PRISM__<SECTION>__<KEY>` (librdkafka's pass-through properties as
//! `PRISM__KAFKA__PROPERTIES__<NAME>`, `_` for the dots of the name). A variable ending in
//! `_FILE` reads its value from the named file, for secrets mounted by an orchestrator. Every
//! struct denies unknown fields, so a misspelt key is an error that names the key and where it
//! came from.
//!
//! - [`sections`]: the typed sections, one struct each.
//! - [`secret`]: [`Secret`], a string that never shows in `Debug` or logs.
//! - [`load`]: the layering, taking files and environment as parameters so tests drive it.
//! - [`tls`]: TLS towards PostgreSQL, Redis and Kafka as configuration sees it (the
//!   `sslmode` of a PostgreSQL URL, rules across the TLS and SASL keys).

#![deny(missing_docs)]

pub mod load;
pub mod secret;
pub mod sections;
pub mod tls;

pub use load::{ConfigError, ConfigSources, DEFAULT_TOML};
pub use secret::Secret;
pub use sections::*;
pub use tls::{PostgresSslMode, PostgresTls};
