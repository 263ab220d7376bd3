//! The one PostgreSQL `LISTEN` connection of the process, and the signals it fans out.
//!
//! Projectors `pg_notify(applied_channel, '<read model>_g<N>')` in the transaction of every
//! batch, so the notification arrives exactly when the batch's rows become visible. This
//! module keeps one dedicated connection (not a pooled one: a pooled connection would stop
//! listening when it is returned) listening on that channel and on `generations_channel`,
//! and turns each notification into a bump of a per-read-model [`tokio::sync::watch`]
//! counter. A request waiting for a version subscribes to its read model's counter and
//! re-reads only when it moves: no polling, and one connection however many requests wait.
//!
//! Notifications are sent by the primary only (PostgreSQL does not deliver `NOTIFY` on a hot
//! standby), so this connection stays on the primary even when reads go to replicas.
//!
//! Notifications sent while the connection is down are lost, so every (re)connect bumps
//! every counter and reloads the active generations: waiters re-check once and nothing
//! waits for a notification that will never come.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prism_config::PostgresConfig;
use prism_postgres::{Database, StoreError};
use prism_projections::ProjectionInstance;
use prism_read_store::read_models::{applied_channel, generations_channel};
use prism_runtime::Health;
use tokio::sync::watch;

use crate::generations::ActiveGenerations;

/// The readiness check this module maintains.
pub const HEALTH_CHECK: &str = "notifications";
/// First and longest pause before reconnecting the listener.
const RECONNECT_INITIAL: Duration = Duration::from_millis(200);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Generations are also reloaded this often, in case a switch's notification was lost.
const GENERATIONS_REFRESH: Duration = Duration::from_secs(30);

/// Per read model, a counter bumped whenever a batch of it may have landed. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppliedSignals {
    /// One counter per read model of the application; all exist from the start, so
    /// subscribing never races with creation.
    senders: Arc<BTreeMap<&'static str, watch::Sender<u64>>>,
}

impl AppliedSignals {
    /// A counter at zero per read model.
    pub fn new(read_models: &[&'static str]) -> Self {
        Self { senders: Arc::new(read_models.iter().map(|name| (*name, watch::channel(0).0)).collect()) }
    }

    /// A receiver that sees every bump after this call (the current value counts as seen);
    /// `None` for a read model the application does not have.
    pub fn subscribe(&self, read_model: &str) -> Option<watch::Receiver<u64>> {
        self.senders.get(read_model).map(watch::Sender::subscribe)
    }

    /// Wakes the waiters of `read_model`.
    pub fn bump(&self, read_model: &str) {
        if let Some(sender) = self.senders.get(read_model) {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every waiter (after a reconnect: notifications may have been missed).
    pub fn bump_all(&self) {
        for sender in self.senders.values() {
            sender.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Handles an applied-channel payload, `<read model>_g<N>`. An unreadable payload wakes
    /// everyone: an extra re-check is cheap, a missed one costs a stale answer. A read model of
    /// another application on the same schema wakes no one.
    pub fn on_applied(&self, payload: &str) {
        match ProjectionInstance::parse(payload) {
            Some(instance) => self.bump(instance.projection),
            None => self.bump_all(),
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
                        tracing::trace!(instance = notification.payload(), "batch applied");
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
    use super::*;

    #[tokio::test]
    async fn a_batch_wakes_only_its_read_model_and_garbage_wakes_all() {
        let signals = AppliedSignals::new(&["devices", "sites"]);
        let mut devices = signals.subscribe("devices").expect("devices");
        let sites = signals.subscribe("sites").expect("sites");
        assert!(signals.subscribe("other").is_none());
        signals.on_applied("devices_g1");
        assert!(devices.has_changed().expect("open"));
        assert!(!sites.has_changed().expect("open"));
        devices.borrow_and_update();
        signals.on_applied("someone_elses_g3");
        assert!(!devices.has_changed().expect("open"), "another application's read model wakes no one");
        signals.on_applied("???");
        assert!(devices.has_changed().expect("open"));
        assert!(sites.has_changed().expect("open"));
    }
}
