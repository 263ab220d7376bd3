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
            bytes_in_flight: Arc::new(tokio::sync::Semaphore::new(super::worker::byte_budget(&settings))),
            leaving: AtomicBool::new(false),
        });
        let consumer: BaseConsumer<RuntimeContext<H>> =
            client_config(&settings).create_with_context(RuntimeContext { shared: shared.clone() })?;
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

/// The librdkafka configuration of a member: the base (brokers, security, pass-through
/// properties), then what the runtime's guarantees and flow control rest on.
fn client_config(settings: &ConsumerSettings) -> rdkafka::ClientConfig {
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
        // A fetch waits at most this long for data on the partitions it asks for. A
        // partition resumed meanwhile is only asked for in the next fetch, so with the
        // default 500 ms a worker that drained its buffer could wait that long while its
        // partition has messages (flow control below pauses and resumes them all the time
        // under load).
        .set("fetch.wait.max.ms", "50");
    for (property, value) in PREFETCH {
        if !settings.kafka.properties.contains_key(property) {
            client.set(property, value);
        }
    }
    group_protocol_settings(&mut client, settings);
    if let Some(instance) = &settings.group_instance_id {
        client.set("group.instance.id", instance);
    }
    client
}

/// librdkafka's prefetch: the messages it fetched ahead into its own queue, before the poll
/// thread hands them to the partitions' workers, whose buffers are the runtime's real prefetch
/// (`max_buffered_per_partition` each). Set unless `kafka.properties` names them: they carry no
/// guarantee, only memory and fetch traffic.
///
/// - `queued.max.messages.kbytes`, 2 MiB (librdkafka's default is 64 MiB; it also caps each
///   fetch at that size): a queued message keeps the whole fetch response it came in alive,
///   and a paused partition's queued messages are dropped and fetched again. At 16 MiB a
///   worker under a backlog held up to 49 MB in librdkafka at its peak (35.7 MB of fetch
///   responses, 13.3 MB of queued messages), more than its own buffers of 4 000 messages a
///   partition (BENCHMARKS.md, "Where a worker's memory goes").
/// - `fetch.queue.backoff.ms`, 10 ms: how long librdkafka leaves a partition unfetched after
///   finding its queue full (1 s by default). With a small queue that wait starved the workers:
///   4 MiB and 1 s made half the events/s of 16 MiB; 4 MiB and 10 ms made more than 16 MiB.
const PREFETCH: [(&str, &str); 2] =
    [("queued.max.messages.kbytes", "2048"), ("fetch.queue.backoff.ms", "10")];

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
    let mut last_partition = LastPartition::default();
    while !stop.load(Ordering::SeqCst) {
        match consumer.poll(POLL_INTERVAL) {
            Some(Ok(message)) => dispatch(shared, &message, &mut last_partition),
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

/// The partition of the message dispatched last. A fetch response hands over its messages a
/// partition at a time, so the next message's partition is almost always this one, and its
/// [`PartitionId`] (which owns the topic's name) is made only when the partition changes
/// rather than once per message.
#[derive(Default)]
struct LastPartition(Option<PartitionId>);

impl LastPartition {
    fn of(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) -> &PartitionId {
        let (topic, number) = (message.topic(), message.partition());
        match &mut self.0 {
            Some(last) if last.partition == number && last.topic == topic => {}
            slot => *slot = Some(PartitionId { topic: topic.to_owned(), partition: number }),
        }
        self.0.as_ref().expect("set above")
    }
}

/// Hands a message to its partition's worker, copied out of librdkafka (which frees its own
/// copy, and the fetch response it points into, once the message is dropped).
fn dispatch<H: BatchHandler>(
    shared: &Shared<H>,
    message: &rdkafka::message::BorrowedMessage<'_>,
    last_partition: &mut LastPartition,
) {
    let partition = last_partition.of(message);
    let workers = shared.workers();
    let Some(worker) = workers.get(partition) else {
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
    let message = ConsumedMessage::from_kafka(message);
    worker.buffered.add(&message);
    if worker.messages.send(message).is_err() {
        tracing::debug!(%partition, "worker gone; message dropped");
    }
}

/// Pauses partitions whose worker has too much waiting (messages or bytes), resumes them once
/// it caught up.
/// Paused, librdkafka stops fetching for the partition; resumed, it fetches from after the
/// last message it handed over, so no message is lost or repeated.
fn flow_control<H: BatchHandler>(consumer: &BaseConsumer<RuntimeContext<H>>, shared: &Shared<H>) {
    // Runs after every message: the lists (librdkafka allocations) are made only when a
    // partition changes state, which is rare.
    let (mut to_pause, mut to_resume) = (None, None);
    // The observer is told after the workers' lock is released: it is the application's code,
    // and the poll thread's dispatch and the rebalance callbacks wait for that lock.
    let mut changed: Vec<(PartitionId, bool)> = Vec::new();
    {
        let mut workers = shared.workers();
        for (partition, worker) in workers.iter_mut() {
            let list = if !worker.paused && worker.buffered.is_full(&shared.settings) {
                worker.paused = true;
                &mut to_pause
            } else if worker.paused && worker.buffered.may_resume(&shared.settings) {
                worker.paused = false;
                &mut to_resume
            } else {
                continue;
            };
            changed.push((partition.clone(), worker.paused));
            list.get_or_insert_with(TopicPartitionList::new)
                .add_partition(&partition.topic, partition.partition);
        }
    }
    for (partition, paused) in &changed {
        shared.handler.on_flow_control(partition, *paused);
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
    let started = Instant::now();
    shared.leaving.store(true, Ordering::SeqCst);
    let partitions: Vec<PartitionId> = shared.workers().keys().cloned().collect();
    shared.stop_workers(&partitions);
    shared.store_landed(&consumer);
    commit_before_leaving(&consumer, shared, started + shared.settings.shutdown_deadline);
    shared.handler.on_rebalance(&[], &partitions, 0);
    consumer.unsubscribe();
    // Dropping closes the consumer: it leaves the group (dynamic members) and serves the
    // final revocation, which finds nothing left to stop.
    drop(consumer);
}

/// Least time the last commit is tried for through a rebalance, even when stopping the
/// workers used up the shutdown deadline.
const LEAVING_COMMIT_MIN_WAIT: Duration = Duration::from_secs(1);

/// The member's last commit, made again while its group rebalances.
///
/// Stopping the workers blocks the poll thread (up to the shutdown deadline), and a rebalance
/// that began meanwhile (a member joining) finds this member on a generation (or, under
/// KIP-848, a member epoch) the broker no longer accepts commits from. Without the commit,
/// the next owner would read again everything this member landed since its previous commit:
/// nothing is applied twice (the version gates skip it), but it is work done twice. Polling
/// lets librdkafka rejoin; a partition the rejoin revokes is committed by the revocation
/// callback, the rest by the next attempt here.
fn commit_before_leaving<H: BatchHandler>(
    consumer: &BaseConsumer<RuntimeContext<H>>,
    shared: &Shared<H>,
    deadline: Instant,
) {
    use rdkafka::types::RDKafkaErrorCode;
    let deadline = deadline.max(Instant::now() + LEAVING_COMMIT_MIN_WAIT);
    loop {
        let code = match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => return,
            Err(err) => err.rdkafka_error_code(),
        };
        match code {
            // Nothing stored since the last commit (or the revocation committed it).
            Some(RDKafkaErrorCode::NoOffset) => return,
            Some(
                RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::StaleMemberEpoch,
            ) if Instant::now() < deadline => {
                tracing::info!(group = %shared.settings.group_id, error = ?code, "the group is rebalancing; committing again once this member has rejoined");
                let until = Instant::now() + Duration::from_millis(100);
                while Instant::now() < until {
                    // A message of a partition this member is leaving: nothing of it is
                    // stored, the next owner reads it.
                    let _ = consumer.poll(Duration::from_millis(20));
                }
            }
            _ => {
                tracing::warn!(group = %shared.settings.group_id, error = ?code, "the last commit before leaving failed; the next owner reads again what landed since the previous one");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prism_config::{ConfigSources, PrismConfig};

    use super::*;

    fn settings(properties: &[(&str, &str)]) -> ConsumerSettings {
        let mut kafka = PrismConfig::load(&ConfigSources::default()).expect("default configuration").kafka;
        kafka.properties.extend(properties.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        ConsumerSettings {
            kafka,
            role: "test".into(),
            group_id: "group".into(),
            topics: vec!["topic".into()],
            group_instance_id: None,
            batch_max_messages: 10,
            batch_max_bytes: 64 << 20,
            batch_max_wait: Duration::from_millis(20),
            commit_interval: Duration::from_secs(1),
            commit_when_caught_up: true,
            session_timeout: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(1),
            retry_initial_backoff: Duration::from_millis(50),
            retry_max_backoff: Duration::from_secs(1),
            max_buffered_per_partition: 100,
            max_buffered_bytes_per_partition: 64 << 20,
            max_concurrent_batches: 2,
            max_messages_in_flight: 20,
            max_bytes_in_flight: 64 << 20,
        }
    }

    #[test]
    fn the_prefetch_is_small_unless_the_properties_say_otherwise() {
        let config = client_config(&settings(&[]));
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("2048"));
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("10"));

        let config = client_config(&settings(&[("queued.max.messages.kbytes", "65536")]));
        assert_eq!(config.get("queued.max.messages.kbytes"), Some("65536"));
        assert_eq!(config.get("fetch.queue.backoff.ms"), Some("10"));
    }

    #[test]
    fn the_properties_cannot_override_what_the_guarantees_rest_on() {
        let config = client_config(&settings(&[("enable.auto.offset.store", "true"), ("group.id", "other")]));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("group.id"), Some("group"));
    }
}
