//! What `/readyz` of a command service checks, kept current by a background task:
//!
//! - `postgres`: the server answers.
//! - `event_store`: the engine's tables the command side writes (`events`, `outbox`,
//!   `command_idempotency`) exist in the configured schema. A schema that was never migrated
//!   leaves the service running but not ready, with a body naming the missing tables, until
//!   `prismctl migrate` has run; then it turns ready by itself. (Not refusing to start: in an
//!   orchestrator the migration job and the service often start together, and readiness is
//!   what keeps traffic away meanwhile. A command that arrives anyway answers 503 and its log
//!   line names the table.)
//! - `kafka`: the brokers answer metadata requests, when this process runs the relay.

use std::sync::Arc;
use std::time::Duration;

use prism_config::PrismConfig;
use prism_postgres::{Database, StoreError};
use prism_runtime::Health;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use tokio::sync::watch;

use crate::service::error_chain;

/// The engine's tables the command side reads and writes.
pub const EVENT_STORE_TABLES: [&str; 3] = ["events", "outbox", "command_idempotency"];

/// The readiness check naming the event store's tables.
pub const EVENT_STORE_CHECK: &str = "event_store";

/// How often readiness re-checks PostgreSQL and the broker.
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Longest wait for one readiness probe.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

const MISSING_TABLES: &str = include_str!("../sql/missing_tables.sql");

/// Which of [`EVENT_STORE_TABLES`] do not exist in `db`'s schema.
pub async fn missing_tables(db: &Database) -> Result<Vec<String>, StoreError> {
    let client = db.client().await?;
    let tables: Vec<&str> = EVENT_STORE_TABLES.to_vec();
    let rows = client.query(MISSING_TABLES, &[&tables, &db.schema()]).await?;
    rows.iter().map(|row| row.try_get::<_, String>(0).map_err(StoreError::from)).collect()
}

/// Checks the event store's tables once and records the verdict in `health`; returns it.
pub async fn check_event_store(db: &Database, health: &Health) -> bool {
    match tokio::time::timeout(HEALTH_TIMEOUT, missing_tables(db)).await {
        Ok(Ok(missing)) if missing.is_empty() => {
            health.set(EVENT_STORE_CHECK, true, format!("tables {} present", EVENT_STORE_TABLES.join(", ")));
            true
        }
        Ok(Ok(missing)) => {
            let names: Vec<String> = missing.iter().map(|t| format!("`{t}`")).collect();
            let detail = format!(
                "table{} {} missing in schema `{}`: run `prismctl migrate` against it",
                if missing.len() == 1 { "" } else { "s" },
                names.join(", "),
                db.schema()
            );
            health.set(EVENT_STORE_CHECK, false, detail);
            false
        }
        Ok(Err(err)) => {
            health.set(EVENT_STORE_CHECK, false, format!("cannot check the tables: {}", error_chain(&err)));
            false
        }
        Err(_) => {
            health.set(EVENT_STORE_CHECK, false, format!("no answer within {HEALTH_TIMEOUT:?}"));
            false
        }
    }
}

/// Keeps `/readyz` current until `stop` turns true: PostgreSQL and the event store's tables
/// always, the broker when the relay runs here.
pub async fn run(config: PrismConfig, db: Database, health: Health, mut stop: watch::Receiver<bool>) {
    let admin: Option<AdminClient<DefaultClientContext>> = if config.relay.enabled {
        match prism_kafka::base_client_config(&config.kafka, "commands-health").create() {
            Ok(admin) => Some(admin),
            Err(err) => {
                health.set("kafka", false, format!("cannot create a client: {err}"));
                None
            }
        }
    } else {
        None
    };
    let admin = admin.map(Arc::new);
    let mut tables_ok = true;
    loop {
        match tokio::time::timeout(HEALTH_TIMEOUT, db.ping()).await {
            Ok(Ok(())) => {
                health.set("postgres", true, "connected");
                let ok = check_event_store(&db, &health).await;
                if ok && !tables_ok {
                    tracing::info!(schema = db.schema(), "the event store's tables are there now");
                }
                tables_ok = ok;
            }
            Ok(Err(err)) => health.set("postgres", false, error_chain(&err)),
            Err(_) => health.set("postgres", false, format!("no answer within {HEALTH_TIMEOUT:?}")),
        }
        if let Some(admin) = &admin {
            let admin = admin.clone();
            let probe = tokio::task::spawn_blocking(move || {
                admin.inner().fetch_metadata(None, HEALTH_TIMEOUT).map(|metadata| metadata.brokers().len())
            })
            .await;
            match probe {
                Ok(Ok(brokers)) => health.set("kafka", true, format!("{brokers} brokers")),
                Ok(Err(err)) => health.set(
                    "kafka",
                    false,
                    format!("{} unreachable: {err}", config.kafka.bootstrap_servers),
                ),
                Err(err) => health.set("kafka", false, format!("probe failed: {err}")),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(HEALTH_INTERVAL) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
    }
}
