//! The transactional outbox, as the relay sees it: claiming lanes, reading a lane's oldest
//! rows, deleting published ones, and the backlog figures behind the gauges.
//!
//! Lanes are claimed with session-level advisory locks held by a [`LaneClaims`] control
//! connection, one per relay instance. Session locks belong to the connection: a relay that
//! dies (or whose connection drops) loses them without any cleanup step, and another
//! instance can take the lanes over. The same connection `LISTEN`s on the outbox channel,
//! and registers the instance under a second lock key so instances can count each other and
//! share the lanes fairly.
//!
//! Rows are read and deleted through the pool: only the locks need the dedicated connection.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prism_config::PostgresConfig;
use tokio::sync::{watch, Notify};
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use crate::event_store::{notify_channel, OUTBOX_LANES};
use prism_postgres::Database;
use prism_postgres::StoreError;

const READ_LANES: &str = include_str!("../sql/event_store/read_lanes.sql");
const HELD_LANES: &str = include_str!("../sql/event_store/held_lanes.sql");
const BACKLOG: &str = include_str!("../sql/event_store/backlog.sql");

/// One outbox row, ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The row's id: publication order within its lane.
    pub id: i64,
    /// The lane it belongs to.
    pub lane: i16,
    /// The topic to publish to.
    pub topic: String,
    /// The message key: the hyphenated aggregate id.
    pub key: String,
    /// The exact envelope bytes.
    pub value: Vec<u8>,
    /// The event's type, for the `event_type` header.
    pub event_type: String,
    /// The event's schema version, for the `schema_version` header.
    pub schema_version: i32,
    /// The event's id (for logs and checks; it is inside `value` too).
    pub event_id: Uuid,
    /// The event's aggregate version (for logs and checks).
    pub aggregate_version: i64,
}

/// The outbox's unpublished rows, in numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backlog {
    /// Rows not yet acknowledged by the broker: counted when fewer than the bound asked for
    /// ([`BACKLOG_COUNTED_UP_TO`] for [`backlog`]), otherwise the span of their ids, never
    /// less than the rows waiting (see `exact`).
    pub events: i64,
    /// Whether `events` was counted row by row rather than taken from the span of the ids.
    pub exact: bool,
    /// Age of the oldest of them, in seconds (0 when empty).
    pub oldest_age_seconds: f64,
}

/// How many outbox rows [`backlog`] counts one by one. A larger backlog is read from the span of
/// its ids, so a sample costs the same whatever the backlog: the gauges are sampled most while
/// the broker is down, which is when the backlog grows without bound. Above the backlog alert's
/// threshold (10 000), so the alert compares with an exact count.
pub const BACKLOG_COUNTED_UP_TO: i64 = 100_000;

/// Reads the oldest `per_lane` rows of each lane in `lanes`, in id order within each lane.
pub async fn read_lanes(
    db: &Database,
    lanes: &[i16],
    per_lane: i64,
) -> Result<Vec<OutboxMessage>, StoreError> {
    if lanes.is_empty() {
        return Ok(Vec::new());
    }
    let client = db.client().await?;
    let statement = client.prepare_cached(READ_LANES).await?;
    let rows = client.query(&statement, &[&lanes, &per_lane]).await?;
    rows.iter()
        .map(|row| {
            Ok(OutboxMessage {
                id: row.try_get("id")?,
                lane: row.try_get("lane")?,
                topic: row.try_get("topic")?,
                key: row.try_get("message_key")?,
                value: row.try_get("message_value")?,
                event_type: row.try_get("event_type")?,
                schema_version: row.try_get("schema_version")?,
                event_id: row.try_get("event_id")?,
                aggregate_version: row.try_get("aggregate_version")?,
            })
        })
        .collect()
}

/// Deletes published rows; returns how many were still there.
pub async fn delete(db: &Database, ids: &[i64]) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let client = db.client().await?;
    Ok(client.execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids]).await?)
}

/// How many rows wait and how old the oldest is, counted exactly up to
/// [`BACKLOG_COUNTED_UP_TO`] rows.
pub async fn backlog(db: &Database) -> Result<Backlog, StoreError> {
    backlog_counted_up_to(db, BACKLOG_COUNTED_UP_TO).await
}

/// [`backlog`] with the bound up to which rows are counted one by one given (at least 1).
pub async fn backlog_counted_up_to(db: &Database, counted_up_to: i64) -> Result<Backlog, StoreError> {
    let client = db.client().await?;
    let row = client.query_one(BACKLOG, &[&counted_up_to.max(1)]).await?;
    Ok(Backlog {
        events: row.try_get("backlog")?,
        exact: row.try_get("exact")?,
        oldest_age_seconds: row.try_get("oldest_age_seconds")?,
    })
}

/// What the control connection holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimStatus {
    /// The lanes this instance holds, ascending.
    pub held: Vec<i16>,
    /// Relay instances registered on this schema, this one included.
    pub instances: i64,
}

/// A relay instance's control connection: its lane locks, its registration and its wake-ups.
#[derive(Debug)]
pub struct LaneClaims {
    /// The dedicated connection; its session owns the locks.
    client: tokio_postgres::Client,
    /// Advisory-lock key (first half) of the lanes of this schema.
    lanes_key: String,
    /// Advisory-lock key (first half) of the registered instances of this schema.
    instances_key: String,
    /// Signalled on every notification from the outbox channel.
    wake: Arc<Notify>,
    /// Turns false when the connection ends: from then on no lock is held.
    alive: watch::Receiver<bool>,
}

impl LaneClaims {
    /// Opens the control connection, listens on the outbox channel and registers the
    /// instance.
    pub async fn connect(config: &PostgresConfig, application_name: &str) -> Result<Self, StoreError> {
        // With the configured TLS, like every other connection; errors name the server.
        let (client, mut connection) = prism_postgres::pool::connect_one(config, application_name).await?;
        let wake = Arc::new(Notify::new());
        let (alive_tx, alive) = watch::channel(true);
        let notify = wake.clone();
        // The connection must be driven by hand to see notifications; when it ends, the
        // session (and every lock it held) is gone.
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => notify.notify_one(),
                    Ok(_) => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "relay control connection failed");
                        break;
                    }
                }
            }
            let _ = alive_tx.send(false);
            // Wake the relay so it notices at once.
            notify.notify_one();
        });
        let schema = config.schema.as_str();
        let claims = Self {
            client,
            lanes_key: format!("prism.outbox.lanes.{schema}"),
            instances_key: format!("prism.outbox.relays.{schema}"),
            wake,
            alive,
        };
        claims.client.batch_execute(&format!("LISTEN {}", notify_channel(schema))).await?;
        claims
            .client
            .execute("SELECT pg_advisory_lock(hashtext($1), pg_backend_pid())", &[&claims.instances_key])
            .await?;
        Ok(claims)
    }

    /// Tries to take `lane`; true when this instance holds it now.
    pub async fn try_claim(&self, lane: i16) -> Result<bool, StoreError> {
        let row = self
            .client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtext($1), $2::int4)",
                &[&self.lanes_key, &i32::from(lane)],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Gives `lane` up. Only call it when nothing of the lane is in flight.
    pub async fn release(&self, lane: i16) -> Result<(), StoreError> {
        self.client
            .execute(
                "SELECT pg_advisory_unlock(hashtext($1), $2::int4)",
                &[&self.lanes_key, &i32::from(lane)],
            )
            .await?;
        Ok(())
    }

    /// The lanes held and the instance count, as PostgreSQL sees them right now. Failing or
    /// timing out means the locks cannot be vouched for.
    pub async fn status(&self, timeout: Duration) -> Result<ClaimStatus, StoreError> {
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&self.lanes_key, &self.instances_key];
        let query = self.client.query_one(HELD_LANES, &params);
        let row = tokio::time::timeout(timeout, query).await.map_err(|_| StoreError::Unreachable {
            target: "postgres (relay control connection)".into(),
            detail: format!("lock status query took longer than {timeout:?}"),
        })??;
        let held: Vec<i32> = row.try_get("held")?;
        let held = held
            .into_iter()
            .filter_map(|lane| i16::try_from(lane).ok())
            .filter(|lane| (0..OUTBOX_LANES).contains(lane))
            .collect();
        Ok(ClaimStatus { held, instances: row.try_get("instances")? })
    }

    /// Resolves at the next notification on the outbox channel (or when the connection
    /// ends). A notification that arrived while nobody waited is kept for the next call.
    pub async fn notified(&self) {
        self.wake.notified().await;
    }

    /// Whether the connection (and with it every lock) is still there.
    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }
}
