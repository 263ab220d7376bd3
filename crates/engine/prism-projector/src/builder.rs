//! Building the generations blue/green rebuilds register.
//!
//! `prismctl rebuild --mode blue-green` (which has no folds) registers generation N+1 of a read
//! model as `building` and creates its table; every worker of the application that maintains
//! the read model notices (it looks every [`LOOK_EVERY`]) and runs a builder: a projector of that
//! read model alone, at generation N+1, in the group `<prefix>prism.rebuild.<name>.g<N+1>`, with
//! a consumer of its own and the worker's PostgreSQL pool, cache and producer
//! ([`crate::SharedClients`]). What the partitions held at registration is a bulk replay of
//! N+1 (`crate::replay`), loaded by the worker's own replay task with the ranges of every
//! other generation being built ([`Building`]): generations of read models fed by the same
//! topic, registered together by `prismctl rebuild --all --mode blue-green`, have ranges of the
//! same offsets, and one reader lands each chunk in all of them. prismctl committed the build
//! group's offsets at the replay's ends, so the group delivers only the events that came after.
//! Several workers share the build's partitions like any group. prismctl follows the replay
//! and the build group's offsets, verifies and switches; once the generation is no longer
//! `building` (switched to, or abandoned), the builders stop.

use std::collections::BTreeMap;
use std::time::Duration;

use prism_config::{PostgresConfig, PrismConfig};
use prism_postgres::{Database, StoreError};
use prism_projections::{Application, ProjectionInstance};
use tokio::sync::{mpsc, watch};

use crate::{Embedded, SharedClients};

/// How often a worker looks for generations to build.
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

/// The consumer group of the builder of `instance` (under the topic prefix):
/// `prism.rebuild.<name>.g<generation>`.
pub fn build_group(instance: ProjectionInstance) -> String {
    format!("prism.rebuild.{}.g{}", instance.projection, instance.generation)
}

/// The configuration of the builder of `instance`, from a worker's.
pub fn builder_config(config: &PrismConfig, instance: ProjectionInstance) -> PrismConfig {
    let mut config = config.clone();
    config.projector.group = build_group(instance);
    config.projector.generation = instance.generation;
    config.projector.projections = vec![instance.projection.to_owned()];
    config.projector.group_instance_id = String::new();
    // A build replays a backlog, not a trickle: larger batches mean fewer transactions and
    // fewer writes of the same row (a batch writes each aggregate's row once, however many of
    // its events it holds).
    config.projector.batch_max_events = config.projector.batch_max_events.max(BUILD_BATCH_EVENTS);
    // A batch may outgrow the buffer (messages leave it as they are taken), so half a batch
    // buffered keeps the next one coming without holding two per partition.
    config.projector.max_buffered_per_partition =
        config.projector.max_buffered_per_partition.max(config.projector.batch_max_events / 2);
    config.projector.max_buffered_bytes_per_partition =
        config.projector.max_buffered_bytes_per_partition.max(config.projector.batch_max_bytes / 2);
    config
}

/// The smallest batch a builder uses (see [`builder_config`]).
pub const BUILD_BATCH_EVENTS: usize = 5_000;

/// The generations being built, as [`watch()`] last saw them: the worker's replay task
/// (`crate::replay::load_pending`) loads their ranges together with its own instances', so
/// builders run no replay task of their own.
#[derive(Debug, Default)]
pub struct Building {
    instances: std::sync::Mutex<Vec<ProjectionInstance>>,
    changed: tokio::sync::Notify,
}

impl Building {
    /// The generations being built now.
    pub(crate) fn current(&self) -> Vec<ProjectionInstance> {
        self.instances.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records what is being built; wakes the replay task when that changed.
    fn set(&self, building: &[ProjectionInstance]) {
        let mut instances = self.instances.lock().unwrap_or_else(|p| p.into_inner());
        if instances.as_slice() != building {
            *instances = building.to_vec();
            // A permit is kept when the task is busy loading: it looks again once done.
            self.changed.notify_one();
        }
    }

    /// Resolves when what is being built changed since the last call.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Runs builders for the building generations of `read_models` until `stop`, and keeps
/// `building` current for the worker's replay task.
pub async fn watch(
    config: PrismConfig,
    app: Application,
    clients: SharedClients,
    read_models: Vec<&'static str>,
    building_now: std::sync::Arc<Building>,
    mut stop: watch::Receiver<bool>,
) {
    let db = clients.db.clone();
    let mut running: BTreeMap<ProjectionInstance, Embedded> = BTreeMap::new();
    let channel = prism_read_store::read_models::generations_channel(db.schema());
    let mut listener: Option<Registrations> = None;
    loop {
        if listener.is_none() {
            // Listening before looking: a registration committed between the look and the
            // LISTEN would otherwise wait for the next look.
            listener = match Registrations::listen(&config.postgres, &channel).await {
                Ok(listening) => Some(listening),
                Err(err) => {
                    tracing::debug!(error = %err, "cannot listen for registered generations; looking every {LOOK_EVERY:?}");
                    None
                }
            };
        }
        match building(&db, &read_models).await {
            Ok(building) => {
                building_now.set(&building);
                let finished: Vec<ProjectionInstance> =
                    running.keys().filter(|i| !building.contains(i)).copied().collect();
                for instance in finished {
                    if let Some(builder) = running.remove(&instance) {
                        tracing::info!(%instance, "generation no longer building; stopping its builder");
                        if let Err(err) = builder.stop(Duration::from_secs(30)).await {
                            tracing::warn!(%instance, error = %err, "builder stopped with an error");
                        }
                    }
                }
                for instance in building {
                    if let std::collections::btree_map::Entry::Vacant(slot) = running.entry(instance) {
                        tracing::info!(%instance, group = %build_group(instance), "building a new generation");
                        slot.insert(Embedded::start_builder(
                            builder_config(&config, instance),
                            app.clone(),
                            clients.clone(),
                        ));
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "looking for generations to build"),
        }
        tokio::select! {
            _ = stop.wait_for(|stopped| *stopped) => break,
            _ = tokio::time::sleep(LOOK_EVERY) => {}
            notified = Registrations::next(&mut listener) => {
                if !notified {
                    listener = None;
                }
            }
        }
    }
    for (instance, builder) in running {
        if let Err(err) = builder.stop(Duration::from_secs(30)).await {
            tracing::warn!(%instance, error = %err, "builder stopped with an error");
        }
    }
}

/// A dedicated connection listening on the generations channel (a pooled one would stop
/// listening when returned). Every notification (a generation registered, switched or
/// retired) makes the watcher look at once.
struct Registrations {
    _client: tokio_postgres::Client,
    notified: mpsc::UnboundedReceiver<tokio_postgres::Notification>,
}

impl Registrations {
    async fn listen(postgres: &PostgresConfig, channel: &str) -> Result<Self, StoreError> {
        let (client, connection) =
            prism_postgres::pool::connect_one(postgres, "prism-projector-builds").await?;
        // The channel closes when the connection ends, which makes the watcher reconnect.
        let (notified, _driver) = prism_postgres::pool::forward_notifications(connection);
        // The channel name is built from the schema, a checked lowercase identifier.
        client.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
        Ok(Self { _client: client, notified })
    }

    /// Waits for a notification (`true`, with any others already queued taken too) or the
    /// connection's end (`false`); never resolves without a listener.
    async fn next(listener: &mut Option<Self>) -> bool {
        let Some(listener) = listener else { return std::future::pending().await };
        match listener.notified.recv().await {
            Some(_) => {
                while listener.notified.try_recv().is_ok() {}
                true
            }
            None => false,
        }
    }
}

async fn building(db: &Database, read_models: &[&'static str]) -> anyhow::Result<Vec<ProjectionInstance>> {
    let client = db.client().await?;
    Ok(prism_read_store::rebuild::building_instances(&**client, read_models).await?)
}
