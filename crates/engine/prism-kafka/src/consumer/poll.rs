//! The poll thread: owns the librdkafka consumer, routes messages to partition workers,
//! applies flow control, stores landed offsets, and runs the shutdown sequence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;
use tokio::sync::oneshot;

use super::context::{RuntimeContext, Shared, POLL_INTERVAL};
use super::settings::ConsumerSettings;
use super::{BatchHandler, PartitionId};
use crate::client::base_client_config;
use crate::error::KafkaError;
use crate::message::ConsumedMessage;

/// Handle on the running poll thread.
#[derive(Debug)]
pub(super) struct PollThread {
    stop: Arc<AtomicBool>,
    finished: Option<oneshot::Receiver<String>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PollThread {
    pub fn start<H: BatchHandler>(settings: ConsumerSettings, handler: Arc<H>) -> Result<Self, KafkaError> {
        let (landed_tx, landed_rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared {
            handler,
            settings: settings.clone(),
            runtime: tokio::runtime::Handle::current(),
            workers: Mutex::new(HashMap::new()),
            landed_tx,
            landed_rx: Mutex::new(landed_rx),
            turns: Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent_batches.max(1))),
            messages_in_flight: Arc::new(tokio::sync::Semaphore::new(super::worker::message_budget(
                &settings,
            ))),
        });
        let mut client = base_client_config(&settings.kafka, &settings.role);
        client
            .set("group.id", &settings.group_id)
            // Offsets are committed automatically, but only those this runtime stored after
            // the writes landed (see the module header).
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", settings.commit_interval.as_millis().to_string())
            .set("auto.offset.reset", "earliest")
            .set("max.poll.interval.ms", "300000")
            .set("statistics.interval.ms", "5000")
            // Fetch sizes stay at librdkafka's defaults (1 MB per partition per request, grown
            // automatically for a larger message): bigger fetches only delay the group
            // coordinator on brokers that serve both from one storage queue.
            .set("queued.max.messages.kbytes", "16384")
            // A fetch waits at most this long for data on the partitions it asks for. A
            // partition resumed meanwhile is only asked for in the next fetch, so with the
            // default 500 ms a worker that drained its buffer could wait that long while its
            // partition has messages (flow control below pauses and resumes them all the time
            // under load).
            .set("fetch.wait.max.ms", "50");
        group_protocol_settings(&mut client, &settings);
        if let Some(instance) = &settings.group_instance_id {
            client.set("group.instance.id", instance);
        }
        let consumer: BaseConsumer<RuntimeContext<H>> =
            client.create_with_context(RuntimeContext { shared: shared.clone() })?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;

        let stop = Arc::new(AtomicBool::new(false));
        let (finished_tx, finished) = oneshot::channel();
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("poll-{}", settings.group_id))
            .spawn(move || {
                let reason = poll_loop(&consumer, &shared, &thread_stop);
                shut_down(consumer, &shared);
                let _ = finished_tx.send(reason);
            })
            .map_err(|e| KafkaError::Topic {
                topic: settings.group_id.clone(),
                detail: format!("cannot start poll thread: {e}"),
            })?;
        Ok(Self { stop, finished: Some(finished), thread: Some(thread) })
    }

    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(finished) = self.finished.take() {
            let _ = finished.await;
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    pub async fn stopped(&mut self) -> String {
        match self.finished.as_mut() {
            Some(finished) => finished.await.unwrap_or_else(|_| "poll thread ended".into()),
            None => std::future::pending().await,
        }
    }
}

/// The group protocol and what belongs to it. Under the classic protocol the member owns its
/// session and heartbeat and the assignor runs in the group leader (cooperative-sticky, so a
/// rebalance moves only the partitions that change owner). Under KIP-848 the broker owns all
/// three and librdkafka refuses them; the broker's assignment is incremental as well.
fn group_protocol_settings(client: &mut rdkafka::ClientConfig, settings: &ConsumerSettings) {
    client.set("group.protocol", settings.kafka.group_protocol.as_librdkafka());
    match settings.kafka.group_protocol {
        prism_config::GroupProtocol::Classic => {
            client
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("session.timeout.ms", settings.session_timeout.as_millis().to_string())
                .set(
                    "heartbeat.interval.ms",
                    (settings.session_timeout.as_millis() / 3).max(100).to_string(),
                );
        }
        prism_config::GroupProtocol::Consumer => {}
    }
}

/// Least time between two commits made because every worker had caught up.
const CAUGHT_UP_COMMIT_SPACING: Duration = Duration::from_millis(100);

/// Polls until asked to stop or a fatal error; returns why it stopped.
fn poll_loop<H: BatchHandler>(
    consumer: &BaseConsumer<RuntimeContext<H>>,
    shared: &Shared<H>,
    stop: &AtomicBool,
) -> String {
    // Offsets stored since the last commit this loop made, and when it made it.
    let mut uncommitted = false;
    let mut last_caught_up_commit = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => dispatch(shared, &message),
            Some(Err(err)) => {
                let fatal = consumer.client().fatal_error();
                if let Some((code, reason)) = fatal {
                    return format!("fatal consumer error {code}: {reason}");
                }
                tracing::warn!(group = %shared.settings.group_id, error = %err, "consumer error");
            }
            None => {}
        }
        uncommitted |= shared.store_landed(consumer);
        // The interval commit alone leaves a worker that caught up showing lag (and a replay
        // looking unfinished) for up to a commit interval; once everything received has
        // landed, commit now. Under load some worker is always busy and the interval rules.
        if shared.settings.commit_when_caught_up
            && uncommitted
            && last_caught_up_commit.elapsed() >= CAUGHT_UP_COMMIT_SPACING
            && shared.all_landed()
        {
            shared.commit(consumer, CommitMode::Async);
            uncommitted = false;
            last_caught_up_commit = Instant::now();
        }
        flow_control(consumer, shared);
    }
    "stopped".into()
}

/// Hands a message to its partition's worker, copied out of librdkafka (which frees its own
/// copy, and the fetch response it points into, once the message is dropped).
fn dispatch<H: BatchHandler>(shared: &Shared<H>, message: &rdkafka::message::BorrowedMessage<'_>) {
    let partition = PartitionId { topic: message.topic().to_owned(), partition: message.partition() };
    let workers = shared.workers();
    let Some(worker) = workers.get(&partition) else {
        // Only possible for a message fetched just before its partition was revoked: the
        // next owner reads it again from the committed offset.
        tracing::debug!(%partition, offset = message.offset(), "message for a partition without worker dropped");
        return;
    };
    let timestamp = message.timestamp().to_millis().unwrap_or(0);
    let _ = worker.oldest_pending_ms.compare_exchange(
        0,
        timestamp,
        std::sync::atomic::Ordering::Relaxed,
        std::sync::atomic::Ordering::Relaxed,
    );
    worker.buffered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if worker.messages.send(ConsumedMessage::from_kafka(message)).is_err() {
        tracing::debug!(%partition, "worker gone; message dropped");
    }
}

/// Pauses partitions whose worker has too much waiting, resumes them once it caught up.
/// Paused, librdkafka stops fetching for the partition; resumed, it fetches from after the
/// last message it handed over, so no message is lost or repeated.
fn flow_control<H: BatchHandler>(consumer: &BaseConsumer<RuntimeContext<H>>, shared: &Shared<H>) {
    let high = shared.settings.max_buffered_per_partition.max(1);
    // Resumed with half left: the worker has a batch or so to work on while the next fetch
    // comes back.
    let low = high / 2;
    // Runs after every message: the lists (librdkafka allocations) are made only when a
    // partition changes state, which is rare.
    let (mut to_pause, mut to_resume) = (None, None);
    {
        let mut workers = shared.workers();
        for (partition, worker) in workers.iter_mut() {
            let buffered = worker.buffered.load(Ordering::Relaxed);
            let list = if !worker.paused && buffered >= high {
                worker.paused = true;
                &mut to_pause
            } else if worker.paused && buffered <= low {
                worker.paused = false;
                &mut to_resume
            } else {
                continue;
            };
            shared.handler.on_flow_control(partition, worker.paused);
            list.get_or_insert_with(TopicPartitionList::new)
                .add_partition(&partition.topic, partition.partition);
        }
    }
    if let Some(to_pause) = to_pause {
        if let Err(err) = consumer.pause(&to_pause) {
            tracing::debug!(error = %err, "pausing partitions");
        }
    }
    if let Some(to_resume) = to_resume {
        if let Err(err) = consumer.resume(&to_resume) {
            tracing::debug!(error = %err, "resuming partitions");
        }
    }
}

/// Stops every worker (in-flight batches finish or are aborted at the deadline), commits
/// what landed, and leaves the group.
fn shut_down<H: BatchHandler>(consumer: BaseConsumer<RuntimeContext<H>>, shared: &Shared<H>) {
    let partitions: Vec<PartitionId> = shared.workers().keys().cloned().collect();
    shared.stop_workers(&partitions);
    shared.store_landed(&consumer);
    shared.commit(&consumer, CommitMode::Sync);
    shared.handler.on_rebalance(&[], &partitions, 0);
    consumer.unsubscribe();
    // Dropping closes the consumer: it leaves the group (dynamic members) and serves the
    // final revocation, which finds nothing left to stop.
    drop(consumer);
}
