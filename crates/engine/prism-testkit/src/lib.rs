//! The engine's test harness, for any application built on it. Integration tests run against
//! the real broker, PostgreSQL and Redis; this crate makes that safe to do in parallel and
//! impossible to get silently wrong.
//!
//! - [`binaries`]: workspace binaries of other packages (`prismctl`), built when missing.
//! - [`services`]: where the shared services are, and a check that fails with a message
//!   naming the service and the command that starts it when one is unreachable.
//! - [`env`](mod@env): [`TestEnv`], one per test: its own topic prefix, PostgreSQL schema and Redis
//!   key prefix, migrated, the application's read models registered and its topics created,
//!   removed again when the test ends.
//! - [`kafka`]: producing and consuming raw messages in tests.
//! - [`ports`]: free ports for the servers and workers a test starts, below the range outgoing
//!   connections take their source ports from.
//! - [`private`]: a Kafka broker or three-node cluster, PostgreSQL or Redis of one test's own,
//!   to stop, kill and restart.
//! - [`oracle`]: the fold oracle — every read-model row and cache entry compared with what
//!   the application's independent in-memory fold of the produced events expects.
//! - [`prismctl`]: running the operator CLI as an operator would, from any application's tests.
//! - [`probe`]: a minimal application for the engine's own domain-free tests.
//! - [`layering`]: the check that no engine crate depends on an application crate.
//!
//! Names are random per test (`t` + 10 hex digits), so concurrent tests and leftovers of
//! killed runs never collide.

#![deny(missing_docs)]

pub mod binaries;
pub mod env;
pub mod kafka;
pub mod layering;
pub mod oracle;
pub mod ports;
pub mod prismctl;
pub mod private;
pub mod probe;
pub mod services;

pub use env::TestEnv;
pub use prism_config::GroupProtocol;

/// Defines a group test once per consumer group protocol: `group_protocol_tests!(name =>
/// scenario)` makes `name::classic` and `name::consumer`, each calling `scenario(protocol)`
/// (an `async fn(GroupProtocol)`), so every guarantee is checked under the classic protocol
/// and under KIP-848.
#[macro_export]
macro_rules! group_protocol_tests {
    ($name:ident => $scenario:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn classic() {
                super::$scenario($crate::GroupProtocol::Classic).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn consumer() {
                super::$scenario($crate::GroupProtocol::Consumer).await
            }
        }
    };
}

/// Sends the tests' tracing output to the test harness (shown for failing tests).
/// `RUST_LOG` sets the filter (default `warn`). Safe to call from every test.
pub fn init_logging() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}
pub use services::Services;
