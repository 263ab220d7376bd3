//! The one PostgreSQL `LISTEN` connection of the process, and the signals it fans out.
//!
//! Projectors `pg_notify(applied_channel, '<read model>_g<N>')` in the transaction of every
//! batch, so the notification arrives exactly when the batch's rows become visible. This
//! module keeps one dedicated connection (not a pooled one: a pooled connection would stop
//! listening when it is returned) listening on that channel and on `generations_channel`,
//! and fans each notification out to the requests waiting on its read model
//! ([`tokio::sync::broadcast`]). A notification names the rows whose version the batch may have
//! moved (or none: any row may have), and a request waiting for a version re-reads only when a
//! batch names its row: no polling, one connection however many requests wait, and a read per
//! request that its own batch answers rather than one per batch of its read model.
//!
//! Notifications are sent by the primary only (PostgreSQL does not deliver `NOTIFY` on a hot
//! standby), so this connection stays on the primary even when reads go to replicas.
//!
//! Notifications sent while the connection is down are lost, so every (re)connect wakes
//! every waiter (as a batch that names no rows does) and reloads the active generations:
//! waiters re-check once and nothing waits for a notification that will never come.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prism_config::PostgresConfig;
use prism_postgres::{Database, StoreError};
use prism_projections::ProjectionInstance;
use prism_read_store::read_models::{
    applied_channel, generations_channel, parse_applied_payload, AppliedRows,
};
use prism_runtime::Health;
use tokio::sync::{broadcast, watch};

use crate::generations::ActiveGenerations;

/// The readiness check this module maintains.
pub const HEALTH_CHECK: &str = "notifications";
/// First and longest pause before reconnecting the listener.
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Generations are also reloaded this often, in case a switch's notification was lost.
const GENERATIONS_REFRESH: Duration = Duration::from_secs(30);

/// How many notifications a waiter may fall behind by before it stops telling them apart and
/// looks again (a waiter reads PostgreSQL between two, so it seldom falls behind by more than
/// a few).
const BACKLOG_PER_WAITER: usize = 64;

/// Per read model, the batches that landed, fanned out to the requests waiting on it. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct AppliedSignals {
    /// One sender per read model of the application; all exist from the start, so
    /// subscribing never races with creation.
    senders: Arc<BTreeMap<&'static str, broadcast::Sender<Arc<AppliedRows>>>>,
}

impl AppliedSignals {
    /// A sender per read model, with no one subscribed yet.
    pub fn new(read_models: &[&'static str]) -> Self {
        Self {
            senders: Arc::new(
                read_models.iter().map(|name| (*name, broadcast::channel(BACKLOG_PER_WAITER).0)).collect(),
            ),
        }
    }

    /// A waiter that sees every batch of `read_model` landing after this call; `None` for a
    /// read model the application does not have.
    pub fn subscribe(&self, read_model: &str) -> Option<AppliedWaiter> {
        self.senders.get(read_model).map(|sender| AppliedWaiter { landed: sender.subscribe() })
    }

    /// Wakes every waiter of `read_model`.
    pub fn bump(&self, read_model: &str) {
        self.send(read_model, AppliedRows::Any);
    }

    /// Wakes every waiter (after a reconnect: notifications may have been missed).
    pub fn bump_all(&self) {
        for sender in self.senders.values() {
            let _ = sender.send(Arc::new(AppliedRows::Any));
        }
    }

    /// Handles an applied-channel payload (`prism_read_store::read_models::applied_payload`):
    /// wakes the waiters of its read model on the rows it names, or all of them when it names
    /// none. An unreadable payload wakes everyone: an extra re-check is cheap, a missed one costs
    /// a stale answer. A read model of another application on the same schema wakes no one.
    pub fn on_applied(&self, payload: &str) {
        let (instance, rows) = parse_applied_payload(payload);
        match ProjectionInstance::parse(instance) {
            Some(instance) => self.send(instance.projection, rows),
            None => self.bump_all(),
        }
    }

    fn send(&self, read_model: &str, rows: AppliedRows) {
        if let Some(sender) = self.senders.get(read_model) {
            // No one waiting is not an error: the notification concerns no one.
            let _ = sender.send(Arc::new(rows));
        }
    }
}

/// One request's view of the batches landing for its read model, from its subscription on.
#[derive(Debug)]
pub struct AppliedWaiter {
    landed: broadcast::Receiver<Arc<AppliedRows>>,
}

impl AppliedWaiter {
    /// Waits for a batch that may have moved the row under `key` (its text as batches name rows,
    /// `prism_projections::key_value_text`), or any batch when `key` is `None`. `false` once the
    /// signals are gone (shutdown). A waiter that fell behind looks again rather than miss one.
    pub async fn landed_for(&mut self, key: Option<&str>) -> bool {
        loop {
            match self.landed.recv().await {
                Ok(rows) if rows.concern(key) => return true,
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => return true,
                Err(broadcast::error::RecvError::Closed) => return false,
            }
        }
    }
}

/// What the listener task needs.
#[derive(Debug, Clone)]
pub struct Listener {
    /// How to open the dedicated connection.
    pub postgres: PostgresConfig,
    /// For reloading generations.
    pub db: Database,
    /// Updated on switches.
    pub generations: ActiveGenerations,
    /// Bumped on applied batches.
    pub signals: AppliedSignals,
    /// Where the connection's state is reported.
    pub health: Health,
}

impl Listener {
    /// Listens until `stop` turns true, reconnecting with capped backoff.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = RECONNECT_INITIAL;
        loop {
            let outcome = self.session(&mut stop, &mut backoff).await;
            if *stop.borrow() {
                return;
            }
            let detail = match outcome {
                Ok(()) => "the listening connection closed".to_owned(),
                Err(err) => format!("the listening connection failed: {err}"),
            };
            tracing::warn!(detail = %detail, retry_in_ms = backoff.as_millis() as u64, "notification listener down");
            self.health.set(HEALTH_CHECK, false, detail);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            backoff = (backoff * 2).min(RECONNECT_MAX);
        }
    }

    /// One connection's life: connect, LISTEN, resynchronise, dispatch until it ends.
    async fn session(
        &self,
        stop: &mut watch::Receiver<bool>,
        backoff: &mut Duration,
    ) -> Result<(), StoreError> {
        let (client, connection) =
            prism_postgres::pool::connect_one(&self.postgres, "prism-query-listener").await?;
        let (mut notifications, driver) = prism_postgres::pool::forward_notifications(connection);
        let applied = applied_channel(self.db.schema());
        let switched = generations_channel(self.db.schema());
        // Channel names are built from the schema, which configuration checks is a plain
        // lowercase identifier; quoting keeps them exact.
        let listening = client.batch_execute(&format!("LISTEN \"{applied}\"; LISTEN \"{switched}\";")).await;
        if let Err(err) = listening {
            driver.abort();
            return Err(err.into());
        }
        // Listening from here on: anything that landed before is visible to a re-read, so
        // wake every waiter once and pick up any switch missed while disconnected.
        if let Err(err) = self.generations.reload(&self.db).await {
            tracing::warn!(error = %err, "reloading active generations failed");
        }
        self.signals.bump_all();
        self.health.set(HEALTH_CHECK, true, "listening");
        *backoff = RECONNECT_INITIAL;
        tracing::info!(channel = %applied, "listening for applied batches");

        let mut refresh = tokio::time::interval(GENERATIONS_REFRESH);
        refresh.tick().await;
        let ended = loop {
            tokio::select! {
                notification = notifications.recv() => match notification {
                    Some(notification) if notification.channel() == applied => {
                        tracing::trace!(payload = notification.payload(), "batch applied");
                        self.signals.on_applied(notification.payload());
                    }
                    Some(_) => self.refresh_generations().await,
                    None => break true,
                },
                _ = refresh.tick() => self.refresh_generations().await,
                // The guard `wait_for` returns is not Send; drop it inside the branch future.
                _ = async { let _ = stop.wait_for(|stopped| *stopped).await; } => break false,
            }
        };
        drop(client);
        if !ended {
            driver.abort();
            return Ok(());
        }
        match driver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.into()),
            Err(err) => Err(StoreError::Unreachable { target: "listener".into(), detail: err.to_string() }),
        }
    }

    /// Reloads generations; read models that switched wake their waiters (they now read
    /// another generation).
    async fn refresh_generations(&self) {
        match self.generations.reload(&self.db).await {
            Ok(changed) => {
                for read_model in changed {
                    let instance = self.generations.instance(read_model).map(ProjectionInstance::id);
                    tracing::info!(read_model, instance = ?instance, "active generation switched");
                    self.signals.bump(read_model);
                }
            }
            Err(err) => tracing::warn!(error = %err, "reloading active generations failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `waiter` is woken for `key` by what was sent so far.
    async fn woken(waiter: &mut AppliedWaiter, key: Option<&str>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), waiter.landed_for(key)).await == Ok(true)
    }

    #[tokio::test]
    async fn a_batch_wakes_only_its_read_model_and_garbage_wakes_all() {
        let signals = AppliedSignals::new(&["devices", "sites"]);
        let mut devices = signals.subscribe("devices").expect("devices");
        let mut sites = signals.subscribe("sites").expect("sites");
        assert!(signals.subscribe("other").is_none());
        signals.on_applied("devices_g1");
        assert!(woken(&mut devices, Some("d1")).await);
        assert!(!woken(&mut sites, None).await);
        signals.on_applied("someone_elses_g3");
        assert!(!woken(&mut devices, None).await, "another application's read model wakes no one");
        signals.on_applied("???");
        assert!(woken(&mut devices, Some("d1")).await);
        assert!(woken(&mut sites, Some("s1")).await);
    }

    #[tokio::test]
    async fn a_batch_that_names_its_rows_wakes_only_the_waiters_on_them() {
        let signals = AppliedSignals::new(&["devices"]);
        let mut on_d1 = signals.subscribe("devices").expect("devices");
        let mut on_d2 = signals.subscribe("devices").expect("devices");
        let mut on_any = signals.subscribe("devices").expect("devices");
        signals.on_applied(r#"devices_g1 ["d2","d3"]"#);
        assert!(!woken(&mut on_d1, Some("d1")).await, "a batch of other rows");
        assert!(woken(&mut on_d2, Some("d2")).await);
        assert!(woken(&mut on_any, None).await, "a waiter that knows no key wakes on every batch");
        // Rows the folds did not write (a batch of sums only): no one with a key.
        signals.on_applied("devices_g1 []");
        assert!(!woken(&mut on_d1, Some("d1")).await);
        // The instance alone, an unreadable list, a switch: every waiter.
        for wake in ["devices_g1", r#"devices_g1 ["d2""#] {
            signals.on_applied(wake);
            assert!(woken(&mut on_d1, Some("d1")).await, "{wake}");
        }
        signals.bump("devices");
        assert!(woken(&mut on_d1, Some("d1")).await, "a switch");
    }

    #[tokio::test]
    async fn a_waiter_that_fell_behind_looks_again() {
        let signals = AppliedSignals::new(&["devices"]);
        let mut waiter = signals.subscribe("devices").expect("devices");
        for _ in 0..=BACKLOG_PER_WAITER {
            signals.on_applied(r#"devices_g1 ["d2"]"#);
        }
        assert!(woken(&mut waiter, Some("d1")).await, "notifications it never saw may have named its row");
    }
}
