//! The projector's batch handler: decode → apply in PostgreSQL (gate, fold, write, dead
//! letters) → write the cache → copy dead letters to their topic. Only then does the consumer
//! runtime store the offsets.
//!
//! Every failure here is transient from the partition's point of view (PostgreSQL, Redis or
//! the broker away): the runtime retries the whole batch. That is safe because the
//! PostgreSQL step is idempotent (the gate turns the retried events into duplicates) and
//! still returns the cache entries and the unpublished dead letters, so the later steps are
//! simply done again.
//!
//! A permanent PostgreSQL error (the database refuses data, not an outage) is pinned to one
//! message by bisecting the batch; that message is dead-lettered and the rest proceed.
//!
//! Following a blue/green switch (`projector.generation = 0`): every batch's transaction
//! takes the gate table's write lock and reads the active generations of its read models
//! first (`apply_batch_while_active`); a switch must take that table's share lock to commit,
//! so it either committed before (the batch sees it) or waits for the batch's commit. A batch
//! that finds a generation switched applies nothing and is reported as a transient failure,
//! retried — from the same offsets — against the new generation (its events already there are
//! skipped as duplicates by the version gate). The offsets of a batch are therefore stored
//! only after it landed in generations that were active when its transaction committed; with
//! `prismctl rebuild`'s switch (both generations equal at the switch) the new generation
//! misses no event and sees no gap.

use std::sync::Arc;
use std::time::Duration;

use metrics::counter;
use prism_cache::{Cache, Entry};
use prism_events::aggregate::aggregate_name_of_topic;
use prism_events::{AggregateType, Limits};
use prism_kafka::consumer::{BatchHandler, ConsumerObserver, PartitionId, TransientError};
use prism_kafka::ConsumedMessage;
use prism_kafka::EventProducer;
use prism_postgres::{Database, StoreError};
use prism_projections::{Application, GapPolicy, ProjectionInstance};
use prism_read_store::projection::{self, ActiveBatch, BatchOutcome, PartitionBatch, SourceMessage, Target};
use prism_runtime::metric_names as m;

use crate::decode::decode;
use crate::observe::Progress;

/// Everything the group member's batches need.
#[derive(Debug)]
pub struct ProjectionHandler {
    /// The application: its events (to decode) and read models (to apply).
    pub app: Application,
    /// The read models (at their generations) this member maintains, in a fixed order.
    pub instances: Vec<ProjectionInstance>,
    /// `Some` when this member follows the active generation (`projector.generation = 0`):
    /// the instances currently active, updated when a batch finds that a switch happened.
    pub follow_active: Option<std::sync::Mutex<Vec<ProjectionInstance>>>,
    /// What to do about version gaps.
    pub policy: GapPolicy,
    /// Decode bounds.
    pub limits: Limits,
    /// Topic prefix, to tell which aggregate type a topic carries.
    pub topic_prefix: String,
    /// Prefix of every cache key (`redis.key_prefix`).
    pub key_prefix: String,
    /// PostgreSQL.
    pub db: Database,
    /// Redis.
    pub cache: Cache,
    /// Producer for the dead-letter topics.
    pub producer: EventProducer,
    /// Metrics and readiness state.
    pub progress: Arc<Progress>,
    /// The brokers, for the partition readers of bulk replays.
    pub kafka: prism_config::KafkaConfig,
    /// How large a chunk of a bulk replay is at most (`projector.replay_chunk_events` and
    /// `projector.replay_chunk_bytes`).
    pub replay_chunk: prism_kafka::partition_reader::ChunkSize,
    /// The replay ranges of the instances, as far as this process knows them.
    pub replays: crate::replay::Replays,
}

fn transient(dependency: &'static str, error: impl std::fmt::Display) -> TransientError {
    TransientError { dependency, detail: error.to_string() }
}

impl ProjectionHandler {
    /// The instances batches are applied to now.
    pub(crate) fn current_instances(&self) -> Vec<ProjectionInstance> {
        match &self.follow_active {
            Some(current) => current.lock().map(|c| c.clone()).unwrap_or_else(|p| p.into_inner().clone()),
            None => self.instances.clone(),
        }
    }

    /// Records `now_active` (generations that replaced ones this member applied batches to)
    /// for the next attempt, and returns the transient failure that makes the runtime retry
    /// the batch, from the same offsets, against them.
    fn follow_switch(&self, now_active: &[ProjectionInstance]) -> TransientError {
        let mut detail = Vec::with_capacity(now_active.len());
        if let Some(current) = &self.follow_active {
            let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
            for instance in current.iter_mut() {
                if let Some(to) = now_active.iter().find(|to| to.projection == instance.projection) {
                    if instance != to {
                        detail.push(format!("{instance} -> {to}"));
                        *instance = *to;
                    }
                }
            }
        }
        tracing::info!(switched = ?detail, "active generation switched; applying the batch to the new generation");
        TransientError::switch(format!(
            "active generation switched ({}); applying the batch again to the new generation",
            detail.join(", ")
        ))
    }

    /// Applies `messages` to `targets` in one transaction ([`projection::apply_batch`]); when
    /// this member follows the active generation, only while every target still is its read
    /// model's active generation ([`projection::apply_batch_while_active`]). The outer error is
    /// a switch found before the batch began — also when the batch's statements then failed,
    /// as they do on a retired generation's dropped table: nothing was applied, and the batch
    /// is retried against the new generation.
    async fn apply_once(
        &self,
        targets: &[Target<'_>],
        source: AggregateType,
        partition: &PartitionId,
        messages: &[SourceMessage],
    ) -> Result<Result<Vec<(ProjectionInstance, BatchOutcome)>, StoreError>, TransientError> {
        let batch =
            PartitionBatch { source, topic: &partition.topic, partition: partition.partition, messages };
        if self.follow_active.is_none() {
            return Ok(projection::apply_batch(&self.db, targets, self.policy, batch).await);
        }
        match projection::apply_batch_while_active(&self.db, targets, self.policy, batch).await {
            Ok(ActiveBatch::Landed(applied)) => Ok(Ok(applied)),
            Ok(ActiveBatch::Switched(now_active)) => Err(self.follow_switch(&now_active)),
            Err(err) => Ok(Err(err)),
        }
    }

    /// The read models of `instances`, as apply targets.
    fn targets(&self, instances: &[ProjectionInstance]) -> Vec<Target<'_>> {
        instances
            .iter()
            .filter_map(|instance| {
                self.app.read_model(instance.projection).map(|model| Target { instance: *instance, model })
            })
            .collect()
    }

    /// Applies the batch to `instances` in PostgreSQL, isolating messages the database refuses.
    async fn apply(
        &self,
        instances: &[ProjectionInstance],
        source: AggregateType,
        partition: &PartitionId,
        messages: &[SourceMessage],
    ) -> Result<Vec<(ProjectionInstance, BatchOutcome)>, TransientError> {
        let targets = self.targets(instances);
        let mut outcomes = Vec::new();
        // Slices still to apply, in offset order (last pushed is next).
        let mut pending: Vec<&[SourceMessage]> = vec![messages];
        while let Some(slice) = pending.pop() {
            match self.apply_once(&targets, source, partition, slice).await? {
                Ok(applied) => outcomes.extend(applied),
                Err(err) if err.is_transient() => return Err(transient("postgres", err)),
                // Refused by a transaction that found every target active (a retired
                // generation's missing table shows as a switch first, see `apply_once`).
                Err(err) => {
                    if slice.len() == 1 {
                        outcomes.extend(self.isolate(&targets, source, partition, &slice[0]).await?);
                    } else {
                        tracing::warn!(%partition, messages = slice.len(), error = %err, "database refused a batch; bisecting");
                        let (left, right) = slice.split_at(slice.len() / 2);
                        pending.push(right);
                        pending.push(left);
                    }
                }
            }
        }
        Ok(outcomes)
    }

    /// One message the database refused: apply it to each instance on its own, and
    /// dead-letter it for the instances that still refuse it.
    async fn isolate(
        &self,
        targets: &[Target<'_>],
        source: AggregateType,
        partition: &PartitionId,
        message: &SourceMessage,
    ) -> Result<Vec<(ProjectionInstance, BatchOutcome)>, TransientError> {
        let mut outcomes = Vec::new();
        for target in targets {
            let instance = target.instance;
            let single = std::slice::from_ref(message);
            match self.apply_once(std::slice::from_ref(target), source, partition, single).await? {
                Ok(applied) => outcomes.extend(applied),
                Err(err) if err.is_transient() => return Err(transient("postgres", err)),
                Err(err) => {
                    tracing::error!(%partition, offset = message.offset, projection = %instance, error = %err, "database refused an event; dead-lettering it");
                    let unpublished = projection::dead_letter_one(
                        &self.db,
                        instance,
                        &partition.topic,
                        partition.partition,
                        message,
                        &err,
                    )
                    .await
                    .map_err(|e| transient("postgres", e))?;
                    let outcome = BatchOutcome {
                        dead_lettered: vec![("rejected_by_database".into(), 1)],
                        unpublished_dead_letters: unpublished,
                        ..Default::default()
                    };
                    outcomes.push((instance, outcome));
                }
            }
        }
        Ok(outcomes)
    }

    pub(crate) async fn write_cache(
        &self,
        instance: ProjectionInstance,
        outcome: &BatchOutcome,
    ) -> Result<(), TransientError> {
        let Some(kind) = self.app.read_model(instance.projection).and_then(|m| m.cache_kind()) else {
            return Ok(());
        };
        let prefix = instance.cache_prefix(kind, &self.key_prefix);
        if outcome.cache_entries.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = outcome.cache_entries.iter().map(|e| format!("{prefix}{}", e.id)).collect();
        let entries: Vec<Entry<'_>> = outcome
            .cache_entries
            .iter()
            .zip(&keys)
            .map(|(e, key)| Entry { key, revision: e.revision, version: e.version, document: &e.document })
            .collect();
        self.cache.put_if_newer(&entries).await.map_err(|e| transient("redis", e))?;
        Ok(())
    }

    pub(crate) async fn publish_dead_letters(&self, outcome: &BatchOutcome) -> Result<(), TransientError> {
        if outcome.unpublished_dead_letters.is_empty() {
            return Ok(());
        }
        crate::dead_letters::publish(&self.producer, &outcome.unpublished_dead_letters)
            .await
            .map_err(|e| transient("kafka", e))?;
        let ids: Vec<i64> = outcome.unpublished_dead_letters.iter().map(|r| r.id).collect();
        projection::mark_dead_letters_published(&self.db, &ids).await.map_err(|e| transient("postgres", e))
    }

    /// A parked event may be the one a version gap waited for: then the chain behind the gap
    /// applies now, in version order (after this batch's commit; a crash in between leaves
    /// the chain to the workers' periodic sweep, see `requests`).
    pub(crate) async fn heal(
        &self,
        instance: ProjectionInstance,
        parked: &[prism_projections::AggregateKey],
    ) -> Result<(), TransientError> {
        if parked.is_empty() || self.policy != GapPolicy::DeadLetter {
            return Ok(());
        }
        let Some(model) = self.app.read_model(instance.projection) else { return Ok(()) };
        let targets = [Target { instance, model }];
        let reports = projection::redrive::heal(
            &self.db,
            &targets,
            Some(parked),
            self.policy,
            |letter: &projection::redrive::DeadLetter| {
                crate::requests::decode_stored(&self.app, &self.limits, letter)
            },
        )
        .await
        .map_err(|e| transient("postgres", e))?;
        for report in &reports {
            counter!(m::PROJECTOR_EVENTS_APPLIED, "projection" => instance.id())
                .increment(report.applied.len() as u64);
            counter!(m::PROJECTOR_GAPS_HEALED, "projection" => instance.id()).increment(1);
            if let Some(kind) = model.cache_kind() {
                crate::requests::write_cache(
                    &self.cache,
                    &instance.cache_prefix(kind, &self.key_prefix),
                    report,
                )
                .await
                .map_err(|e| transient("redis", format!("{e:#}")))?;
            }
        }
        Ok(())
    }

    pub(crate) fn count(&self, instance: ProjectionInstance, outcome: &BatchOutcome) {
        let label = instance.id();
        counter!(m::PROJECTOR_EVENTS_APPLIED, "projection" => label.clone()).increment(outcome.applied);
        if outcome.conflicts > 0 {
            counter!(m::PROJECTOR_EVENTS_SKIPPED, "projection" => label.clone(), "reason" => "conflict")
                .increment(outcome.conflicts);
            tracing::warn!(
                projection = %label,
                conflicts = ?outcome.conflict_details,
                "events skipped: another event was already applied at their aggregate version (two writers decided the same version)"
            );
        }
        if outcome.duplicates > 0 {
            counter!(m::PROJECTOR_EVENTS_SKIPPED, "projection" => label.clone(), "reason" => "duplicate")
                .increment(outcome.duplicates);
        }
        if outcome.applied_across_gap > 0 {
            counter!(m::PROJECTOR_VERSION_GAPS, "projection" => label.clone(), "policy" => "apply")
                .increment(outcome.applied_across_gap);
        }
        for (kind, count) in &outcome.dead_lettered {
            if kind == "version_gap" {
                counter!(m::PROJECTOR_VERSION_GAPS, "projection" => label.clone(), "policy" => "dead_letter")
                    .increment(*count);
            }
            counter!(m::PROJECTOR_EVENTS_DEAD_LETTERED, "projection" => label.clone(), "kind" => kind.clone())
                .increment(*count);
        }
    }
}

impl ConsumerObserver for ProjectionHandler {
    fn on_rebalance(&self, added: &[PartitionId], removed: &[PartitionId], total: usize) {
        self.progress.rebalanced(added, removed, total);
    }

    fn on_batch(&self, partition: &PartitionId, messages: usize, elapsed: Duration) {
        self.progress.batch_landed(partition, messages, elapsed);
    }

    fn on_transient(&self, partition: &PartitionId, error: &TransientError, _backoff: Duration) {
        self.progress.transient(partition, error);
    }

    fn on_lag(&self, partition: &PartitionId, messages: i64, seconds: f64) {
        self.progress.lag(partition, messages, seconds);
    }

    fn on_commit(&self, error: Option<&str>) {
        self.progress.committed(error);
    }
}

impl BatchHandler for ProjectionHandler {
    async fn handle(
        &self,
        partition: &PartitionId,
        messages: &[ConsumedMessage],
    ) -> Result<(), TransientError> {
        let topic_type = aggregate_name_of_topic(&partition.topic, &self.topic_prefix)
            .and_then(|name| self.app.events().aggregate_type(name));
        let Some(topic_type) = topic_type else {
            // Subscriptions name only event topics; a stray topic is a deployment error worth
            // waiting on rather than dead-lettering everything in it.
            return Err(transient(
                "kafka",
                format!("{} is not an event topic of this deployment", partition.topic),
            ));
        };
        let instances: Vec<ProjectionInstance> = self
            .current_instances()
            .into_iter()
            .filter(|i| self.app.read_model(i.projection).is_some_and(|m| m.is_fed_by(topic_type)))
            .collect();
        let mut phases = Phases::start();
        // An instance whose range of this partition was replayed in bulk has the events below
        // its end already (a pending range is loaded now, before anything after it).
        let mut first_needed = Vec::with_capacity(instances.len());
        for instance in &instances {
            let below = self.replayed_below(*instance, &partition.topic, partition.partition).await?;
            first_needed.push(below.map_or(0, |end| messages.partition_point(|m| m.offset() < end)));
        }
        let skipped = first_needed.iter().copied().min().unwrap_or(0);
        phases.done("replays");
        let decoded: Vec<SourceMessage> = messages[skipped..]
            .iter()
            .map(|m| decode(m, self.app.events(), topic_type, &self.limits))
            .collect();
        phases.done("decode");
        let mut outcomes = Vec::new();
        let all_of_it: Vec<ProjectionInstance> = instances
            .iter()
            .zip(&first_needed)
            .filter(|(_, first)| **first == skipped)
            .map(|(i, _)| *i)
            .collect();
        outcomes.extend(self.apply(&all_of_it, topic_type, partition, &decoded).await?);
        for (instance, first) in instances.iter().zip(&first_needed).filter(|(_, first)| **first > skipped) {
            outcomes.extend(
                self.apply(
                    std::slice::from_ref(instance),
                    topic_type,
                    partition,
                    &decoded[first - skipped..],
                )
                .await?,
            );
        }
        // Each transaction above landed only in generations active until its commit.
        phases.done("postgres");
        // Counted once the transaction committed: a retry after a cache or broker failure
        // finds these events again as duplicates, and must not count them as applied twice.
        for (instance, outcome) in &outcomes {
            self.count(*instance, outcome);
        }
        // Each read model's entries have keys of their own: written side by side, a batch of
        // a topic that feeds several cached read models waits for one round trip, not one each.
        futures::future::try_join_all(
            outcomes.iter().map(|(instance, outcome)| self.write_cache(*instance, outcome)),
        )
        .await?;
        phases.done("cache");
        for (instance, outcome) in &outcomes {
            self.publish_dead_letters(outcome).await?;
            self.heal(*instance, &outcome.parked_aggregates).await?;
        }
        phases.done("dead_letters");
        Ok(())
    }
}

/// Times a batch's steps into [`m::PROJECTOR_BATCH_PHASE`], each from the end of the one before.
struct Phases {
    since: std::time::Instant,
}

impl Phases {
    fn start() -> Self {
        Self { since: std::time::Instant::now() }
    }

    fn done(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        metrics::histogram!(m::PROJECTOR_BATCH_PHASE, "phase" => phase)
            .record(now.duration_since(self.since).as_secs_f64());
        self.since = now;
    }
}
