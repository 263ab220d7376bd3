//! The librdkafka context: rebalance callbacks (start and stop partition workers, commit on
//! revocation) and statistics (lag per partition).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::settings::ConsumerSettings;
use super::worker::{self, Buffered, WorkerChannels};
use super::{BatchHandler, PartitionId};
use crate::message::ConsumedMessage;

/// An offset that landed: everything before `next_offset` in `partition` is durable.
#[derive(Debug)]
pub(super) struct Landed {
    pub partition: PartitionId,
    pub next_offset: i64,
}

/// The poll thread's handle on one partition's worker.
pub(super) struct WorkerHandle {
    /// Messages for the worker, in offset order.
    pub messages: mpsc::UnboundedSender<ConsumedMessage>,
    /// Messages (and bytes) sent but not yet taken into a batch (flow control).
    pub buffered: Arc<Buffered>,
    /// Timestamp (ms) of the oldest message seen and not yet landed; 0 when none.
    pub oldest_pending_ms: Arc<AtomicI64>,
    /// Whether the partition is paused because the worker fell behind.
    pub paused: bool,
    stop: watch::Sender<bool>,
    join: JoinHandle<()>,
}

/// State shared by the poll thread and the callbacks (which run on the poll thread too).
pub(super) struct Shared<H> {
    pub handler: Arc<H>,
    pub settings: ConsumerSettings,
    pub runtime: tokio::runtime::Handle,
    pub workers: Mutex<HashMap<PartitionId, WorkerHandle>>,
    pub landed_tx: Sender<Landed>,
    pub landed_rx: Mutex<Receiver<Landed>>,
    /// Turns to handle a batch (`max_concurrent_batches`).
    pub turns: Arc<tokio::sync::Semaphore>,
    /// Messages the batches in flight may hold (`max_messages_in_flight`).
    pub messages_in_flight: Arc<tokio::sync::Semaphore>,
    /// Bytes the batches in flight may hold (`max_bytes_in_flight`).
    pub bytes_in_flight: Arc<tokio::sync::Semaphore>,
    /// Set when the member starts leaving the group: partitions assigned from then on (a
    /// rebalance served while the last commit waits for it) get no worker.
    pub leaving: std::sync::atomic::AtomicBool,
}

impl<H> Shared<H> {
    pub fn workers(&self) -> MutexGuard<'_, HashMap<PartitionId, WorkerHandle>> {
        self.workers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<H: BatchHandler> Shared<H> {
    fn start_worker(&self, partition: PartitionId) -> WorkerHandle {
        let (messages, receiver) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let buffered = Arc::new(Buffered::default());
        let oldest_pending_ms = Arc::new(AtomicI64::new(0));
        let channels = WorkerChannels {
            messages: receiver,
            buffered: buffered.clone(),
            oldest_pending_ms: oldest_pending_ms.clone(),
            stop: stop_rx,
            landed: self.landed_tx.clone(),
            turns: self.turns.clone(),
            messages_in_flight: self.messages_in_flight.clone(),
            bytes_in_flight: self.bytes_in_flight.clone(),
            held_over: None,
        };
        let join =
            self.runtime.spawn(worker::run(partition, self.handler.clone(), self.settings.clone(), channels));
        WorkerHandle { messages, buffered, oldest_pending_ms, paused: false, stop, join }
    }

    /// Stops the workers of `partitions` and waits for them: an in-flight batch finishes or
    /// is aborted after the shutdown deadline. Runs on the poll thread, never on a runtime
    /// thread, so blocking here is allowed.
    pub fn stop_workers(&self, partitions: &[PartitionId]) {
        let stopping: Vec<WorkerHandle> = {
            let mut workers = self.workers();
            partitions.iter().filter_map(|p| workers.remove(p)).collect()
        };
        for worker in &stopping {
            let _ = worker.stop.send(true);
        }
        for worker in stopping {
            let _ = self.runtime.block_on(worker.join);
        }
    }

    /// Stores the offsets workers reported as landed; `true` if there were any.
    pub fn store_landed(&self, consumer: &BaseConsumer<RuntimeContext<H>>) -> bool {
        let landed: Vec<Landed> = {
            let receiver = self.landed_rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            receiver.try_iter().collect()
        };
        if landed.is_empty() {
            return false;
        }
        let mut latest: HashMap<PartitionId, i64> = HashMap::new();
        for l in landed {
            let entry = latest.entry(l.partition).or_insert(l.next_offset);
            *entry = (*entry).max(l.next_offset);
        }
        let mut tpl = TopicPartitionList::new();
        for (partition, offset) in &latest {
            let _ = tpl.add_partition_offset(&partition.topic, partition.partition, Offset::Offset(*offset));
        }
        if let Err(err) = consumer.store_offsets(&tpl) {
            // A partition revoked meanwhile refuses the store: its new owner re-reads from
            // the last commit, and the version gate makes that harmless.
            tracing::debug!(error = %err, "storing landed offsets");
        }
        true
    }

    /// Whether every worker has landed everything it received: nothing buffered, no batch in
    /// flight.
    pub fn all_landed(&self) -> bool {
        self.workers().values().all(|worker| {
            worker.buffered.messages() == 0 && worker.oldest_pending_ms.load(Ordering::Relaxed) == 0
        })
    }

    /// Commits every stored offset; `CommitMode::Sync` waits for the broker's answer, `Async`
    /// leaves it to the commit callback (which reports a failure).
    pub fn commit(&self, consumer: &BaseConsumer<RuntimeContext<H>>, mode: CommitMode) {
        match consumer.commit_consumer_state(mode) {
            Ok(()) => {}
            // Nothing stored since the last commit.
            Err(err) if err.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
            Err(err) => {
                tracing::warn!(error = %err, group = %self.settings.group_id, "committing offsets failed")
            }
        }
    }

    /// Reports a finished commit to the handler (the synchronous ones above come back
    /// through librdkafka's commit callback as well).
    fn report_commit(&self, result: &rdkafka::error::KafkaResult<()>) {
        match result {
            Ok(()) => self.handler.on_commit(None),
            Err(err) if err.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
            Err(err) => {
                let code =
                    err.rdkafka_error_code().map_or_else(|| "Unknown".to_owned(), |c| format!("{c:?}"));
                self.handler.on_commit(Some(&code));
            }
        }
    }
}

/// The context handed to librdkafka.
pub(super) struct RuntimeContext<H> {
    pub shared: Arc<Shared<H>>,
}

/// `topic/0 topic/3 …`, for log lines an operator greps.
fn list(partitions: &[PartitionId]) -> String {
    partitions.iter().map(ToString::to_string).collect::<Vec<_>>().join(" ")
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<PartitionId> {
    tpl.elements()
        .iter()
        .map(|e| PartitionId { topic: e.topic().to_owned(), partition: e.partition() })
        .collect()
}

impl<H: BatchHandler> ClientContext for RuntimeContext<H> {
    fn stats(&self, statistics: Statistics) {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let workers = self.shared.workers();
        for (topic_name, topic) in &statistics.topics {
            for (number, partition) in &topic.partitions {
                let id = PartitionId { topic: topic_name.clone(), partition: *number };
                let Some(worker) = workers.get(&id) else { continue };
                let lag = if partition.consumer_lag_stored >= 0 {
                    partition.consumer_lag_stored
                } else if partition.consumer_lag >= 0 {
                    partition.consumer_lag
                } else if partition.hi_offset >= 0 && partition.lo_offset >= 0 {
                    // Nothing committed or stored yet: everything in the log is still to land.
                    // (A partition whose first batch never lands must show lag, not nothing.)
                    partition.hi_offset - partition.lo_offset
                } else {
                    -1
                };
                if lag < 0 {
                    continue;
                }
                let oldest = worker.oldest_pending_ms.load(Ordering::Relaxed);
                let seconds =
                    if lag == 0 || oldest == 0 { 0.0 } else { (now_ms - oldest).max(0) as f64 / 1000.0 };
                self.shared.handler.on_lag(&id, lag, seconds);
            }
        }
    }
}

impl<H: BatchHandler> ConsumerContext for RuntimeContext<H> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked = partitions_of(tpl);
            self.shared.stop_workers(&revoked);
            self.shared.store_landed(consumer);
            self.shared.commit(consumer, CommitMode::Sync);
            let total = self.shared.workers().len();
            tracing::info!(
                group = %self.shared.settings.group_id,
                revoked = revoked.len(),
                held = total,
                partitions = %list(&revoked),
                "partitions revoked"
            );
            self.shared.handler.on_rebalance(&[], &revoked, total);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) if self.shared.leaving.load(Ordering::SeqCst) => {
                // Nothing of them is stored here: the next owner reads them from the
                // committed offsets once this member has left.
                tracing::info!(
                    group = %self.shared.settings.group_id,
                    partitions = %list(&partitions_of(tpl)),
                    "partitions assigned while leaving; left to their next owner"
                );
            }
            Rebalance::Assign(tpl) => {
                let mut added = Vec::new();
                let total = {
                    let mut workers = self.shared.workers();
                    for partition in partitions_of(tpl) {
                        if !workers.contains_key(&partition) {
                            workers.insert(partition.clone(), self.shared.start_worker(partition.clone()));
                            added.push(partition);
                        }
                    }
                    workers.len()
                };
                // librdkafka keeps an application pause across unassignment: a partition
                // paused by flow control, revoked (or lost) and later assigned back would
                // never be fetched again. Its new worker starts unpaused, so must the
                // partition.
                if !added.is_empty() {
                    let mut resume = TopicPartitionList::new();
                    for partition in &added {
                        resume.add_partition(&partition.topic, partition.partition);
                    }
                    if let Err(err) = consumer.resume(&resume) {
                        tracing::warn!(group = %self.shared.settings.group_id, error = %err, "resuming assigned partitions");
                    }
                }
                tracing::info!(
                    group = %self.shared.settings.group_id,
                    assigned = added.len(),
                    held = total,
                    partitions = %list(&added),
                    "partitions assigned"
                );
                self.shared.handler.on_rebalance(&added, &[], total);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(err) => {
                tracing::warn!(group = %self.shared.settings.group_id, error = %err, "rebalance error")
            }
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _offsets: &TopicPartitionList) {
        self.shared.report_commit(&result);
        if let Err(err) = result {
            if err.rdkafka_error_code() != Some(rdkafka::types::RDKafkaErrorCode::NoOffset) {
                tracing::warn!(group = %self.shared.settings.group_id, error = %err, "offset commit failed; it is retried with the next one");
            }
        }
    }
}

/// The poll interval librdkafka should assume for the main queue.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(100);
