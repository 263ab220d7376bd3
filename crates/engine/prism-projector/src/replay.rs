//! Bulk replays: loading the ranges `prismctl rebuild` registered for an instance this worker
//! maintains (see `prism_read_store::projection::replay` for what a range is and why chunks
//! land exactly once).
//!
//! A range is loaded by reading its partition directly ([`PartitionReader`]) in chunks of
//! `projector.replay_chunk_events` (or `projector.replay_chunk_bytes`), decoding them as a batch is decoded, and landing each
//! chunk with its progress in one transaction; then, as after a batch, the cache is written,
//! dead letters are copied to their topic and healable chains redriven. Two paths load:
//!
//! - [`load_pending`], a task of every projector process, loads the pending ranges of the
//!   instances it maintains when it starts (and of an instance it starts following after a
//!   switch), and of the generations its builders build (`crate::builder::Building`),
//!   `projector.replay_concurrency` at a time — partitions without new events get no batch
//!   that would load them;
//! - the batch handler, before it applies a batch of a partition to an instance whose range
//!   there is still pending (`ProjectionHandler::replayed_below`): its events must follow
//!   the range's, never meet an empty gate.
//!
//! Within a process one loader per range runs at a time; across processes the range's row lock
//! decides, and a loader that finds the range moved on continues from where it is. A process
//! keeps the readers of finished ranges for the next ones: an instance has a range per source
//! partition, and opening and closing a client for each cost as much as replaying a small one.
//!
//! Instances whose ranges of a partition cover the same offsets from the same point — every
//! read model a topic feeds, rebuilt together by `prismctl rebuild --all`, in place or
//! blue/green — are loaded together by [`load_pending`]: one reader, each chunk decoded once
//! and landed in all of them in one transaction ([`replay::apply_shared_chunk`]), as a live
//! batch feeds every instance of its topic. When their ranges stop agreeing (another loader
//! moved one) or PostgreSQL refuses the chunk, each range goes on on its own, where a refused
//! message is isolated.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use prism_events::aggregate::aggregate_name_of_topic;
use prism_events::AggregateType;
use prism_kafka::consumer::TransientError;
use prism_kafka::partition_reader::PartitionReader;
use prism_projections::ProjectionInstance;
use prism_read_store::projection::replay::{self, ChunkOutcome, ReplayRange, SharedChunkOutcome, Step};
use prism_read_store::projection::{BatchOutcome, PartitionBatch, SourceMessage, Target};
use tokio::sync::watch;

use crate::decode::decode;
use crate::handler::ProjectionHandler;

/// How often [`load_pending`] looks for instances it has not looked at yet (the active
/// generation it follows changed).
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// An instance's ranges by (topic, partition).
type RangesByPartition = HashMap<(String, i32), ReplayRange>;

/// The lock one loader of a range holds while it loads.
type LoaderLock = Arc<tokio::sync::Mutex<()>>;

/// What this process knows of its instances' ranges.
#[derive(Debug, Default)]
pub struct Replays {
    /// Per instance looked at, its ranges; an instance present without an entry for a
    /// partition has no range there.
    known: Mutex<HashMap<ProjectionInstance, RangesByPartition>>,
    /// One loader per range at a time within the process.
    loaders: Mutex<HashMap<(ProjectionInstance, String, i32), LoaderLock>>,
    /// Readers whose range is done, kept for the next: connecting a client and ending one
    /// cost more than a small range's replay.
    idle_readers: Mutex<Vec<PartitionReader>>,
}

/// How many idle readers a process keeps.
const IDLE_READERS: usize = 4;

fn transient(dependency: &'static str, error: impl std::fmt::Display) -> TransientError {
    TransientError { dependency, detail: error.to_string() }
}

/// How a chunk's landing ended.
enum Landing {
    /// Landed: the range is at the chunk's end.
    Landed,
    /// Another loader moved the range: continue from here.
    Moved(i64),
    /// The range is no longer registered.
    Gone,
}

/// How loading ranges together ended.
enum SharedLoading {
    /// Every range is loaded and settled.
    Done,
    /// The ranges no longer agree, or PostgreSQL refused a chunk: each goes on on its own.
    OnTheirOwn,
}

/// Whether two pending ranges can be loaded by one reader: the same partition, the same
/// offsets still to load, nothing landed without its later steps.
fn loadable_together(a: &ReplayRange, b: &ReplayRange) -> bool {
    a.topic == b.topic
        && a.partition == b.partition
        && a.loaded_to == b.loaded_to
        && a.end == b.end
        && a.settled_to == a.loaded_to
        && b.settled_to == b.loaded_to
}

/// `pending` (in the order of the instances) grouped into ranges loaded together, each group
/// in that order.
fn group_loadable_together(
    pending: Vec<(ProjectionInstance, ReplayRange)>,
) -> Vec<Vec<(ProjectionInstance, ReplayRange)>> {
    let mut groups: Vec<Vec<(ProjectionInstance, ReplayRange)>> = Vec::new();
    for (instance, range) in pending {
        match groups.iter_mut().find(|group| loadable_together(&group[0].1, &range)) {
            Some(group) => group.push((instance, range)),
            None => groups.push(vec![(instance, range)]),
        }
    }
    groups
}

impl Replays {
    fn lock_known(&self) -> std::sync::MutexGuard<'_, HashMap<ProjectionInstance, RangesByPartition>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn loader(
        &self,
        instance: ProjectionInstance,
        topic: &str,
        partition: i32,
    ) -> Arc<tokio::sync::Mutex<()>> {
        let mut loaders = self.loaders.lock().unwrap_or_else(|p| p.into_inner());
        loaders.entry((instance, topic.to_owned(), partition)).or_default().clone()
    }

    /// What is known of `instance`'s range of `topic`/`partition`: `None` when the instance
    /// was not looked at yet, `Some(None)` when it has no range there.
    fn known_range(
        &self,
        instance: ProjectionInstance,
        topic: &str,
        partition: i32,
    ) -> Option<Option<ReplayRange>> {
        self.lock_known().get(&instance).map(|r| r.get(&(topic.to_owned(), partition)).cloned())
    }

    /// A reader of `topic`/`partition` at `from`: an idle one that read the same topic pointed
    /// there, or a new one. (A reader pointed at another topic first waits for that topic's
    /// metadata — about 0.4 s measured, where a new client reads at once.)
    fn reader(
        &self,
        kafka: &prism_config::KafkaConfig,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<PartitionReader, prism_kafka::KafkaError> {
        let idle = {
            let mut idle = self.idle_readers.lock().unwrap_or_else(|p| p.into_inner());
            idle.iter().position(|reader| reader.partition().0 == topic).map(|index| idle.remove(index))
        };
        match idle {
            Some(mut reader) => {
                reader.retarget(topic, partition, from)?;
                Ok(reader)
            }
            None => PartitionReader::open(kafka, topic, partition, from),
        }
    }

    /// Keeps `reader`, no longer fetching, for the next range of its topic; the oldest idle one
    /// beyond [`IDLE_READERS`] is ended off the runtime's threads (ending a client waits for its
    /// threads).
    fn give_back(&self, reader: PartitionReader) {
        if let Err(err) = reader.stop_fetching() {
            // It still works when pointed at its next range; it only goes on fetching meanwhile.
            tracing::debug!(error = %err, "stopping an idle replay reader's fetches");
        }
        let mut idle = self.idle_readers.lock().unwrap_or_else(|p| p.into_inner());
        idle.push(reader);
        if idle.len() > IDLE_READERS {
            let oldest = idle.remove(0);
            drop(idle);
            tokio::task::spawn_blocking(move || drop(oldest));
        }
    }

    fn record(&self, instance: ProjectionInstance, range: &ReplayRange) {
        if let Some(ranges) = self.lock_known().get_mut(&instance) {
            ranges.insert((range.topic.clone(), range.partition), range.clone());
        }
    }
}

impl ProjectionHandler {
    /// The aggregate type whose events `topic` carries.
    fn source_of(&self, topic: &str) -> Result<AggregateType, TransientError> {
        aggregate_name_of_topic(topic, &self.topic_prefix)
            .and_then(|name| self.app.events().aggregate_type(name))
            .ok_or_else(|| transient("kafka", format!("{topic} is not an event topic of this deployment")))
    }

    /// A chunk's messages decoded as a batch's are.
    fn decode_chunk(
        &self,
        messages: &[prism_kafka::ConsumedMessage],
        source: AggregateType,
    ) -> Vec<SourceMessage> {
        messages.iter().map(|m| decode(m, self.app.events(), source, &self.limits)).collect()
    }

    /// The ranges of `instance` as PostgreSQL has them now.
    async fn stored_ranges(&self, instance: ProjectionInstance) -> Result<Vec<ReplayRange>, TransientError> {
        let client = self.db.client().await.map_err(|e| transient("postgres", e))?;
        replay::ranges(&**client, &[instance.id()]).await.map_err(|e| transient("postgres", e))
    }

    /// The ranges of `instance`, read from PostgreSQL the first time.
    async fn ranges_of(&self, instance: ProjectionInstance) -> Result<Vec<ReplayRange>, TransientError> {
        if let Some(ranges) = self.replays.lock_known().get(&instance) {
            return Ok(ranges.values().cloned().collect());
        }
        let ranges = self.stored_ranges(instance).await?;
        let by_partition: RangesByPartition =
            ranges.iter().map(|r| ((r.topic.clone(), r.partition), r.clone())).collect();
        self.replays.lock_known().entry(instance).or_insert(by_partition);
        Ok(ranges)
    }

    /// For a batch of `topic`/`partition`: the offset below which `instance` already has every
    /// event from a replayed range (`None`: it has no range there). A range still pending is
    /// loaded first.
    pub(crate) async fn replayed_below(
        &self,
        instance: ProjectionInstance,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, TransientError> {
        let range = match self.replays.known_range(instance, topic, partition) {
            Some(range) => range,
            None => self
                .ranges_of(instance)
                .await?
                .into_iter()
                .find(|r| r.topic == topic && r.partition == partition),
        };
        let Some(range) = range else { return Ok(None) };
        if range.is_settled() {
            return Ok(Some(range.end));
        }
        self.load(instance, range).await
    }

    /// Loads `range` of `instance` unless another loader of this process did meanwhile;
    /// returns the offset below which the instance has the range's events (`None`: the range
    /// is no longer registered).
    async fn load(
        &self,
        instance: ProjectionInstance,
        range: ReplayRange,
    ) -> Result<Option<i64>, TransientError> {
        let loader = self.replays.loader(instance, &range.topic, range.partition);
        let _loading = loader.lock().await;
        let current =
            self.replays.known_range(instance, &range.topic, range.partition).flatten().unwrap_or(range);
        if current.is_settled() {
            return Ok(Some(current.end));
        }
        self.load_range(instance, current).await
    }

    async fn load_range(
        &self,
        instance: ProjectionInstance,
        range: ReplayRange,
    ) -> Result<Option<i64>, TransientError> {
        let reader = self
            .replays
            .reader(&self.kafka, &range.topic, range.partition, range.settled_to)
            .map_err(|e| transient("kafka", e))?;
        let loaded = self.load_with(instance, range, &reader).await;
        self.replays.give_back(reader);
        loaded
    }

    /// [`Self::load_range`] with `reader` at the range's `settled_to`.
    async fn load_with(
        &self,
        instance: ProjectionInstance,
        mut range: ReplayRange,
        reader: &PartitionReader,
    ) -> Result<Option<i64>, TransientError> {
        let Some(model) = self.app.read_model(instance.projection) else { return Ok(None) };
        let source = self.source_of(&range.topic)?;
        let target = Target { instance, model };
        let started = Instant::now();
        let first = range.loaded_to;
        let mut events = 0usize;
        tracing::info!(%instance, topic = %range.topic, partition = range.partition, from = range.loaded_to, to = range.end, "replaying a range");
        if range.settled_to < range.loaded_to {
            self.resettle(&target, source, &range, reader).await?;
            range.settled_to = range.loaded_to;
            self.replays.record(instance, &range);
        }
        // Where the time went, for the closing log line.
        let (mut reading, mut decoding, mut landing, mut after_steps) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        while !range.is_loaded() {
            let at = Instant::now();
            let chunk = reader.read(range.end, self.replay_chunk).await.map_err(|e| transient("kafka", e))?;
            reading += at.elapsed();
            let at = Instant::now();
            let decoded: Vec<SourceMessage> = self.decode_chunk(&chunk.messages, source);
            decoding += at.elapsed();
            let step = Step { from: range.loaded_to, to: chunk.next };
            let at = Instant::now();
            let landed = self.land(&target, source, &range, step, &decoded, &mut after_steps).await?;
            landing += at.elapsed();
            match landed {
                Landing::Landed => {
                    events += decoded.len();
                    range.loaded_to = step.to;
                    self.settle(instance, &range, step.to).await?;
                    range.settled_to = step.to;
                }
                Landing::Moved(loaded_to) => {
                    tracing::debug!(%instance, topic = %range.topic, partition = range.partition, loaded_to, "range moved on by another loader");
                    // The other loader may have died before its chunks' later steps: do them
                    // again (harmless when it did not: cache writes compare revisions).
                    let Some(moved) = self.fetch_range(instance, &range).await? else {
                        return self.gone(instance, &range);
                    };
                    range = moved;
                    if range.settled_to < range.loaded_to {
                        reader.seek(range.settled_to).map_err(|e| transient("kafka", e))?;
                        self.resettle(&target, source, &range, reader).await?;
                        range.settled_to = range.loaded_to;
                    } else if !range.is_loaded() {
                        reader.seek(range.loaded_to).map_err(|e| transient("kafka", e))?;
                    }
                }
                Landing::Gone => return self.gone(instance, &range),
            }
            self.replays.record(instance, &range);
        }
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            %instance, topic = %range.topic, partition = range.partition, offsets = range.end - first, events,
            seconds, events_per_second = (events as f64 / seconds.max(1e-6)).round(),
            read_seconds = reading.as_secs_f64(), decode_seconds = decoding.as_secs_f64(),
            postgres_seconds = landing.saturating_sub(after_steps).as_secs_f64(),
            cache_and_dead_letter_seconds = after_steps.as_secs_f64(),
            "range replayed"
        );
        Ok(Some(range.end))
    }

    /// Loads `group`'s ranges (see [`loadable_together`]) with one reader, each chunk decoded
    /// once and landed in every instance together; a range that stops agreeing with the others,
    /// or a chunk PostgreSQL refuses, sends every range of the group on on its own.
    async fn load_together(
        &self,
        group: Vec<(ProjectionInstance, ReplayRange)>,
    ) -> Result<(), TransientError> {
        let loaders: Vec<LoaderLock> = group
            .iter()
            .map(|(instance, range)| self.replays.loader(*instance, &range.topic, range.partition))
            .collect();
        // Taken in the group's order, the order of the instances every group is built in.
        let mut loading = Vec::with_capacity(loaders.len());
        for loader in &loaders {
            loading.push(loader.lock().await);
        }
        // What the batch path may have loaded while this waited.
        let mut ranges: Vec<(ProjectionInstance, ReplayRange)> = group
            .into_iter()
            .map(|(instance, range)| {
                let current = self
                    .replays
                    .known_range(instance, &range.topic, range.partition)
                    .flatten()
                    .unwrap_or(range);
                (instance, current)
            })
            .filter(|(_, range)| !range.is_settled())
            .collect();
        let together =
            ranges.len() > 1 && ranges.iter().all(|(_, range)| loadable_together(&ranges[0].1, range));
        let loaded = if together {
            let (topic, partition, from) =
                (ranges[0].1.topic.clone(), ranges[0].1.partition, ranges[0].1.loaded_to);
            let reader = self
                .replays
                .reader(&self.kafka, &topic, partition, from)
                .map_err(|e| transient("kafka", e))?;
            let loaded = self.load_together_with(&mut ranges, &reader).await;
            self.replays.give_back(reader);
            loaded?
        } else {
            SharedLoading::OnTheirOwn
        };
        drop(loading);
        if let SharedLoading::OnTheirOwn = loaded {
            for (instance, range) in ranges {
                self.load(instance, range).await?;
            }
        }
        Ok(())
    }

    /// [`Self::load_together`] with `reader` at the ranges' common `loaded_to`.
    async fn load_together_with(
        &self,
        ranges: &mut [(ProjectionInstance, ReplayRange)],
        reader: &PartitionReader,
    ) -> Result<SharedLoading, TransientError> {
        let (topic, partition, end) = (ranges[0].1.topic.clone(), ranges[0].1.partition, ranges[0].1.end);
        let source = self.source_of(&topic)?;
        let targets: Vec<Target<'_>> = ranges
            .iter()
            .filter_map(|(instance, _)| {
                self.app.read_model(instance.projection).map(|model| Target { instance: *instance, model })
            })
            .collect();
        if targets.len() != ranges.len() {
            return Ok(SharedLoading::OnTheirOwn);
        }
        let instances: Vec<String> = ranges.iter().map(|(instance, _)| instance.id()).collect();
        let (started, first) = (Instant::now(), ranges[0].1.loaded_to);
        let mut events = 0usize;
        tracing::info!(?instances, %topic, partition, from = first, to = end, "replaying a range for several instances together");
        let (mut reading, mut decoding, mut landing, mut after_steps) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
        while !ranges[0].1.is_loaded() {
            let at = Instant::now();
            let chunk = reader.read(end, self.replay_chunk).await.map_err(|e| transient("kafka", e))?;
            reading += at.elapsed();
            let at = Instant::now();
            let decoded: Vec<SourceMessage> = self.decode_chunk(&chunk.messages, source);
            decoding += at.elapsed();
            let step = Step { from: ranges[0].1.loaded_to, to: chunk.next };
            let at = Instant::now();
            let batch = PartitionBatch { source, topic: &topic, partition, messages: &decoded };
            let landed = replay::apply_shared_chunk(&self.db, &targets, self.policy, batch, step).await;
            landing += at.elapsed();
            // What the later steps need is in the outcomes: the chunk's messages, raw and
            // decoded, are let go before the cache is written rather than after.
            let messages = decoded.len();
            drop((decoded, chunk));
            match landed {
                Ok(SharedChunkOutcome::Landed(outcomes)) => {
                    let at = Instant::now();
                    for (instance, outcome) in &outcomes {
                        self.after_chunk(*instance, outcome).await;
                    }
                    after_steps += at.elapsed();
                    events += messages;
                    for (instance, range) in ranges.iter_mut() {
                        range.loaded_to = step.to;
                        self.settle(*instance, range, step.to).await?;
                        range.settled_to = step.to;
                        self.replays.record(*instance, range);
                    }
                }
                Ok(SharedChunkOutcome::Diverged) => {
                    tracing::debug!(?instances, %topic, partition, at = step.from, "ranges no longer agree; loading each on its own");
                    return Ok(SharedLoading::OnTheirOwn);
                }
                Err(err) if err.is_transient() => return Err(transient("postgres", err)),
                Err(err) => {
                    tracing::warn!(?instances, %topic, partition, messages, error = %err, "database refused a chunk replayed for several instances; landing it for each on its own");
                    return Ok(SharedLoading::OnTheirOwn);
                }
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            ?instances, %topic, partition, offsets = end - first, events,
            seconds, events_per_second = (events as f64 / seconds.max(1e-6)).round(),
            read_seconds = reading.as_secs_f64(), decode_seconds = decoding.as_secs_f64(),
            postgres_seconds = landing.as_secs_f64(),
            cache_and_dead_letter_seconds = after_steps.as_secs_f64(),
            "range replayed for several instances together"
        );
        Ok(SharedLoading::Done)
    }

    fn gone(&self, instance: ProjectionInstance, range: &ReplayRange) -> Result<Option<i64>, TransientError> {
        tracing::info!(%instance, topic = %range.topic, partition = range.partition, "range no longer registered; stopping its replay");
        self.replays.lock_known().remove(&instance);
        Ok(None)
    }

    /// The range's row as PostgreSQL has it now (`None`: no longer registered).
    async fn fetch_range(
        &self,
        instance: ProjectionInstance,
        range: &ReplayRange,
    ) -> Result<Option<ReplayRange>, TransientError> {
        let ranges = self.stored_ranges(instance).await?;
        Ok(ranges.into_iter().find(|r| r.topic == range.topic && r.partition == range.partition))
    }

    async fn settle(
        &self,
        instance: ProjectionInstance,
        range: &ReplayRange,
        to: i64,
    ) -> Result<(), TransientError> {
        let client = self.db.client().await.map_err(|e| transient("postgres", e))?;
        replay::settle(&**client, instance, &range.topic, range.partition, to)
            .await
            .map_err(|e| transient("postgres", e))
    }

    /// Redelivers the part of `range` that landed without its later steps (`settled_to` to
    /// `loaded_to`; `reader` is at `settled_to`): applies it again — all duplicates — and does
    /// the steps, chunk by chunk, moving `settled_to`. Leaves `reader` at `loaded_to`.
    async fn resettle(
        &self,
        target: &Target<'_>,
        source: AggregateType,
        range: &ReplayRange,
        reader: &PartitionReader,
    ) -> Result<(), TransientError> {
        let instance = target.instance;
        tracing::info!(%instance, topic = %range.topic, partition = range.partition, from = range.settled_to, to = range.loaded_to, "redelivering a replayed part whose cache and dead letters may be missing");
        let mut at = range.settled_to;
        while at < range.loaded_to {
            let chunk =
                reader.read(range.loaded_to, self.replay_chunk).await.map_err(|e| transient("kafka", e))?;
            let decoded: Vec<SourceMessage> = self.decode_chunk(&chunk.messages, source);
            // Slices still to redeliver, in offset order (last pushed is next).
            let mut pending: Vec<&[SourceMessage]> = vec![&decoded];
            while let Some(slice) = pending.pop() {
                let batch = PartitionBatch {
                    source,
                    topic: &range.topic,
                    partition: range.partition,
                    messages: slice,
                };
                let redelivered = replay::redeliver_chunk(&self.db, target, self.policy, batch).await;
                match redelivered {
                    Ok(outcome) => self.after_chunk(instance, &outcome).await,
                    Err(err) if err.is_transient() || slice.is_empty() => {
                        return Err(transient("postgres", err))
                    }
                    // The message PostgreSQL refused when it landed, refused again: it was
                    // dead-lettered then, and has nothing to cache.
                    Err(err) if slice.len() == 1 => {
                        tracing::warn!(%instance, topic = %range.topic, partition = range.partition, offset = slice[0].offset, error = %err, "database refused a redelivered event it refused before; it is dead-lettered");
                    }
                    Err(_) => {
                        let (left, right) = slice.split_at(slice.len() / 2);
                        pending.push(right);
                        pending.push(left);
                    }
                }
            }
            self.settle(instance, range, chunk.next).await?;
            at = chunk.next;
        }
        Ok(())
    }

    /// Lands one chunk; a chunk PostgreSQL refuses permanently is halved until the refused
    /// message is alone, which is dead-lettered (as a batch is bisected).
    async fn land(
        &self,
        target: &Target<'_>,
        source: AggregateType,
        range: &ReplayRange,
        step: Step,
        messages: &[SourceMessage],
        after_steps: &mut Duration,
    ) -> Result<Landing, TransientError> {
        let instance = target.instance;
        // Slices still to land, in offset order (last pushed is next).
        let mut pending: Vec<(Step, &[SourceMessage])> = vec![(step, messages)];
        while let Some((step, slice)) = pending.pop() {
            let batch =
                PartitionBatch { source, topic: &range.topic, partition: range.partition, messages: slice };
            let landed = replay::apply_chunk(&self.db, target, self.policy, batch, step).await;
            let outcome = match landed {
                Ok(ChunkOutcome::Landed(outcome)) => outcome,
                Ok(ChunkOutcome::Moved { loaded_to }) => return Ok(Landing::Moved(loaded_to)),
                Ok(ChunkOutcome::Gone) => return Ok(Landing::Gone),
                Err(err) if err.is_transient() => return Err(transient("postgres", err)),
                Err(err) => match slice {
                    [] => return Err(transient("postgres", err)),
                    [message] => {
                        tracing::error!(%instance, topic = %range.topic, partition = range.partition, offset = message.offset, error = %err, "database refused an event of a replay; dead-lettering it");
                        match replay::dead_letter_in_chunk(
                            &self.db,
                            instance,
                            &range.topic,
                            range.partition,
                            step,
                            message,
                            &err,
                        )
                        .await
                        .map_err(|e| transient("postgres", e))?
                        {
                            ChunkOutcome::Landed(outcome) => outcome,
                            ChunkOutcome::Moved { loaded_to } => return Ok(Landing::Moved(loaded_to)),
                            ChunkOutcome::Gone => return Ok(Landing::Gone),
                        }
                    }
                    _ => {
                        tracing::warn!(%instance, topic = %range.topic, partition = range.partition, messages = slice.len(), error = %err, "database refused a chunk of a replay; bisecting");
                        let (left, right) = slice.split_at(slice.len() / 2);
                        let middle = right[0].offset;
                        pending.push((Step { from: middle, to: step.to }, right));
                        pending.push((Step { from: step.from, to: middle }, left));
                        continue;
                    }
                },
            };
            let at = Instant::now();
            self.after_chunk(instance, &outcome).await;
            *after_steps += at.elapsed();
        }
        Ok(Landing::Landed)
    }

    /// After a chunk's commit, what follows a batch's: metrics, the cache, the dead-letter
    /// topic, healing. The chunk is not landed again (its progress moved with it), so these
    /// are retried here until they succeed rather than by redelivery.
    async fn after_chunk(&self, instance: ProjectionInstance, outcome: &BatchOutcome) {
        self.count(instance, outcome);
        let mut backoff = Duration::from_millis(100);
        loop {
            let done = async {
                self.write_cache(instance, outcome).await?;
                self.publish_dead_letters(outcome).await?;
                self.heal(instance, &outcome.parked_aggregates).await
            };
            match done.await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(%instance, dependency = err.dependency, error = %err.detail, "after a replayed chunk; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Loads the pending ranges of the instances `handler` maintains, and of the generations of
/// its read models being built (`building`, for a worker that builds them), `concurrency` at a
/// time (ranges of the same offsets of a partition together, as one), retrying after transient
/// failures, until `stop`; looks again every `LOOK_EVERY` for instances it has not seen (the
/// active generation it follows changed), and at once when a generation is registered.
pub async fn load_pending(
    handler: Arc<ProjectionHandler>,
    concurrency: usize,
    building: Option<Arc<crate::builder::Building>>,
    mut stop: watch::Receiver<bool>,
) {
    let work = async {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut pending: Vec<(ProjectionInstance, ReplayRange)> = Vec::new();
            let mut failed = false;
            let mut instances = handler.current_instances();
            for instance in building.iter().flat_map(|b| b.current()) {
                if !instances.contains(&instance) {
                    instances.push(instance);
                }
            }
            for instance in instances {
                match handler.ranges_of(instance).await {
                    Ok(ranges) => {
                        pending.extend(ranges.into_iter().filter(|r| !r.is_settled()).map(|r| (instance, r)))
                    }
                    Err(err) => {
                        tracing::warn!(%instance, error = %err.detail, "reading replay ranges");
                        failed = true;
                    }
                }
            }
            let results: Vec<Result<(), TransientError>> =
                futures::stream::iter(group_loadable_together(pending))
                    .map(|mut group| {
                        let handler = &handler;
                        async move {
                            match group.len() {
                                1 => {
                                    let (instance, range) = group.remove(0);
                                    handler.load(instance, range).await.map(drop)
                                }
                                _ => handler.load_together(group).await,
                            }
                        }
                    })
                    .buffer_unordered(concurrency.max(1))
                    .collect()
                    .await;
            for err in results.iter().filter_map(|r| r.as_ref().err()) {
                tracing::warn!(dependency = err.dependency, error = %err.detail, "replaying a range; retrying");
                failed = true;
            }
            if failed {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            } else {
                backoff = Duration::from_millis(100);
                let registered = async {
                    match &building {
                        Some(building) => building.changed().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(LOOK_EVERY) => {}
                    () = registered => {}
                }
            }
        }
    };
    tokio::select! {
        _ = stop.wait_for(|stopped| *stopped) => {}
        () = work => {}
    }
}
