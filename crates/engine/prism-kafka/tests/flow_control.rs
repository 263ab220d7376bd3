//! Flow control across rebalances, against the real broker and under both group protocols: a
//! member whose workers fall behind pauses their partitions (its observer is told); when such
//! a partition moves to another member and later comes back, it must be fetched again.
//! (librdkafka keeps an application pause across unassignment, so a runtime that forgot to
//! lift it would leave the partition unconsumed for good, with its lag growing.) The second
//! member handles one batch of each partition it takes and then stalls, so the first must
//! handle the rest of those partitions after they came back: it cannot pass by the second
//! draining them.
//!
//! Also against the real broker: a member applies at most `max_concurrent_batches` batches at
//! once over all its partitions, while batches may be larger than a partition's buffer bound;
//! the batches running at once hold at most `max_messages_in_flight` messages, yet small ones
//! use every turn; the same bounds hold in bytes when messages are large (a partition pauses on
//! its buffered bytes, batches and the batches in flight stay within their byte bounds, and a
//! message larger than every bound is still handled); and a member that has landed everything
//! it received commits at once instead of waiting for its commit interval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prism_kafka::consumer::{
    BatchHandler, ConsumerObserver, ConsumerRuntime, ConsumerSettings, PartitionId, TransientError,
};
use prism_kafka::ConsumedMessage;
use prism_testkit::kafka::{committed_offsets, end_offsets, producer};
use prism_testkit::{group_protocol_tests, GroupProtocol, TestEnv};
use rdkafka::producer::FutureRecord;

const MESSAGES: usize = 2_000;

/// Records every offset it handles; while `held`, every batch waits (the member falls
/// behind, so its partitions get paused). With `one_batch_each`, a second batch of a
/// partition waits for good (until the member stops and aborts it).
#[derive(Default)]
struct Recorder {
    held: AtomicBool,
    one_batch_each: bool,
    handled: Mutex<BTreeMap<i32, BTreeSet<i64>>>,
    /// Partitions flow control paused (and did not resume since).
    paused: Mutex<BTreeSet<i32>>,
}

impl ConsumerObserver for Recorder {
    fn on_flow_control(&self, partition: &PartitionId, paused: bool) {
        let mut paused_now = self.paused.lock().expect("lock");
        match paused {
            true => paused_now.insert(partition.partition),
            false => paused_now.remove(&partition.partition),
        };
    }
}

impl BatchHandler for Recorder {
    async fn handle(
        &self,
        partition: &PartitionId,
        messages: &[ConsumedMessage],
    ) -> Result<(), TransientError> {
        let stall =
            self.one_batch_each && self.handled.lock().expect("lock").contains_key(&partition.partition);
        while stall || self.held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut handled = self.handled.lock().expect("lock");
        handled.entry(partition.partition).or_default().extend(messages.iter().map(ConsumedMessage::offset));
        Ok(())
    }
}

impl Recorder {
    fn partitions_handled(&self) -> usize {
        self.handled.lock().expect("lock").len()
    }
}

fn settings(env: &TestEnv, topic: &str, group: &str) -> ConsumerSettings {
    ConsumerSettings {
        kafka: env.config.kafka.clone(),
        role: "flow-control-test".into(),
        group_id: group.into(),
        topics: vec![topic.into()],
        group_instance_id: None,
        batch_max_messages: 10,
        // The byte bounds stay out of the way of the message bounds these tests are about,
        // with room in flight for eight full batches: a batch of a partition with a backlog
        // takes room for a full batch while it fills, so with a byte budget of one full
        // batch such batches could only run one at a time.
        batch_max_bytes: 8 << 20,
        batch_max_wait: Duration::from_millis(50),
        commit_interval: Duration::from_millis(200),
        commit_when_caught_up: true,
        session_timeout: Duration::from_secs(6),
        shutdown_deadline: Duration::from_millis(500),
        retry_initial_backoff: Duration::from_millis(50),
        retry_max_backoff: Duration::from_millis(500),
        // Far below what one fetch brings: every partition of a held member is paused.
        max_buffered_per_partition: 20,
        max_buffered_bytes_per_partition: 64 << 20,
        // One turn per partition: member B's stalled second batches must not keep its other
        // partitions from their first.
        max_concurrent_batches: 4,
        max_messages_in_flight: 100_000,
        max_bytes_in_flight: 64 << 20,
    }
}

/// A test environment whose probe topic has `partitions` partitions, and a group name of
/// its own.
async fn probe_topic(protocol: GroupProtocol, partitions: u32, group: &str) -> (TestEnv, String, String) {
    prism_testkit::init_logging();
    let app = prism_testkit::probe::application();
    let partitions = partitions.to_string();
    let env = TestEnv::for_protocol(&app, protocol, &[("PRISM__TOPICS__PARTITIONS", partitions.as_str())])
        .await
        .expect("test environment");
    let topic = prism_testkit::probe::PROBE.topic(env.topic_prefix());
    let group = env.group(group);
    (env, topic, group)
}

/// Produces `count` messages over 64 keys to `topic`, and returns its end offsets.
async fn produce(env: &TestEnv, topic: &str, count: usize) -> std::collections::BTreeMap<(String, i32), i64> {
    produce_sized(env, topic, count, 0).await
}

/// As [`produce`], each value padded to at least `value_bytes`.
async fn produce_sized(
    env: &TestEnv,
    topic: &str,
    count: usize,
    value_bytes: usize,
) -> std::collections::BTreeMap<(String, i32), i64> {
    let producer = producer(&env.config).expect("producer");
    let keys: Vec<String> = (0..count).map(|i| format!("key-{}", i % 64)).collect();
    let sends = keys.iter().enumerate().map(|(i, key)| {
        let value = format!("message {i:<value_bytes$}");
        let producer = &producer;
        async move {
            producer
                .send(FutureRecord::to(topic).key(key).payload(&value), Duration::from_secs(30))
                .await
                .map_err(|(err, _)| err)
        }
    });
    for delivery in futures::future::join_all(sends).await {
        delivery.expect("produce");
    }
    let ends = end_offsets(&env.config, &[topic.to_owned()]).await.expect("end offsets");
    assert_eq!(ends.values().sum::<i64>(), count as i64, "the broker holds every message produced");
    ends
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

group_protocol_tests!(a_paused_partition_that_moves_away_and_back_is_fetched_again => paused_partition_comes_back);

async fn paused_partition_comes_back(protocol: GroupProtocol) {
    let (env, topic, group) = probe_topic(protocol, 4, "flow-control").await;

    let ends = produce(&env, &topic, MESSAGES).await;
    assert_eq!(ends.len(), 4);

    // Member A holds all four partitions and falls behind on them: all get paused.
    let a = Arc::new(Recorder { held: AtomicBool::new(true), ..Default::default() });
    let member_a = ConsumerRuntime::start(settings(&env, &topic, &group), a.clone()).expect("member A");
    tokio::time::sleep(Duration::from_secs(3)).await;
    // (Without the pause its buffers would take in whatever librdkafka fetched.)
    assert_eq!(
        *a.paused.lock().expect("lock"),
        BTreeSet::from([0, 1, 2, 3]),
        "a member held on every partition pauses them all"
    );

    // Member B joins and takes some of them over, then leaves: they go back to A.
    let b = Arc::new(Recorder { one_batch_each: true, ..Default::default() });
    let member_b = ConsumerRuntime::start(settings(&env, &topic, &group), b.clone()).expect("member B");
    wait_until("member B handled messages", Duration::from_secs(60), || b.partitions_handled() > 0).await;
    member_b.shutdown().await;

    // A catches up on every partition, the ones that went away and came back included.
    a.held.store(false, Ordering::SeqCst);
    let topics = vec![topic.clone()];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let committed = committed_offsets(&env.config, &group, &topics).await.expect("committed offsets");
        if ends.iter().all(|(partition, end)| committed.get(partition) == Some(end)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "partitions left behind: committed {committed:?}, ends {ends:?} (B had handled partitions {:?})",
            b.handled.lock().expect("lock").keys().collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    member_a.shutdown().await;

    // A handled nothing before B left (it was held, and a held batch is aborted on
    // revocation before it records anything), so whatever A handled of a partition B had
    // taken, it handled after that partition came back. It must have handled the rest of it.
    let from_b = b.handled.lock().expect("lock").clone();
    assert!(!from_b.is_empty(), "B took partitions over");
    for (partition, offsets) in &from_b {
        let b_last = offsets.iter().max().copied().unwrap_or(-1);
        let a_after = a.handled.lock().expect("lock").get(partition).and_then(|o| o.iter().max().copied());
        assert!(
            a_after.is_some_and(|a_last| a_last > b_last),
            "partition {partition} came back to A, but A never handled an offset after B's last ({b_last}): {a_after:?}"
        );
    }

    // Every offset was handled by one member or the other.
    for ((_, partition), end) in &ends {
        let mut seen: BTreeSet<i64> =
            a.handled.lock().expect("lock").get(partition).cloned().unwrap_or_default();
        seen.extend(b.handled.lock().expect("lock").get(partition).cloned().unwrap_or_default());
        let missing: Vec<i64> = (0..*end).filter(|o| !seen.contains(o)).collect();
        assert!(missing.is_empty(), "partition {partition}: offsets never handled: {missing:?}");
    }
}

/// Counts the batches running at once and the messages and bytes they hold (and the most seen
/// of each), the largest batch in messages and in bytes, and every offset handled. Each batch takes a while, so batches of
/// different partitions overlap unless something keeps them apart.
#[derive(Default)]
struct Concurrency {
    running: AtomicUsize,
    most_running: AtomicUsize,
    messages_running: AtomicUsize,
    most_messages_running: AtomicUsize,
    largest_batch: AtomicUsize,
    bytes_running: AtomicUsize,
    most_bytes_running: AtomicUsize,
    largest_batch_bytes: AtomicUsize,
    handled: Mutex<BTreeMap<i32, BTreeSet<i64>>>,
}

impl ConsumerObserver for Concurrency {}

/// Fails naming the offsets of `ends` that were never handled.
fn assert_all_handled(handled: &Mutex<BTreeMap<i32, BTreeSet<i64>>>, ends: &BTreeMap<(String, i32), i64>) {
    for ((_, partition), end) in ends {
        let seen = handled.lock().expect("lock").get(partition).cloned().unwrap_or_default();
        let missing: Vec<i64> = (0..*end).filter(|o| !seen.contains(o)).collect();
        assert!(missing.is_empty(), "partition {partition}: offsets never handled: {missing:?}");
    }
}

impl BatchHandler for Concurrency {
    async fn handle(
        &self,
        partition: &PartitionId,
        messages: &[ConsumedMessage],
    ) -> Result<(), TransientError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_running.fetch_max(now, Ordering::SeqCst);
        let held = self.messages_running.fetch_add(messages.len(), Ordering::SeqCst) + messages.len();
        self.most_messages_running.fetch_max(held, Ordering::SeqCst);
        self.largest_batch.fetch_max(messages.len(), Ordering::SeqCst);
        let bytes: usize = messages.iter().map(ConsumedMessage::size).sum();
        let bytes_held = self.bytes_running.fetch_add(bytes, Ordering::SeqCst) + bytes;
        self.most_bytes_running.fetch_max(bytes_held, Ordering::SeqCst);
        self.largest_batch_bytes.fetch_max(bytes, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.handled
            .lock()
            .expect("lock")
            .entry(partition.partition)
            .or_default()
            .extend(messages.iter().map(ConsumedMessage::offset));
        self.messages_running.fetch_sub(messages.len(), Ordering::SeqCst);
        self.bytes_running.fetch_sub(bytes, Ordering::SeqCst);
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Waits until `group` has committed `ends`, or fails after `timeout` naming what is missing.
async fn wait_for_commits(
    env: &TestEnv,
    group: &str,
    topic: &str,
    ends: &BTreeMap<(String, i32), i64>,
    timeout: Duration,
) {
    let topics = vec![topic.to_owned()];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let committed = committed_offsets(&env.config, group, &topics).await.expect("committed offsets");
        if ends.iter().all(|(partition, end)| committed.get(partition) == Some(end)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not committed within {timeout:?}: committed {committed:?}, ends {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_of_a_member_take_turns_and_may_outgrow_the_buffer() {
    let (env, topic, group) = probe_topic(GroupProtocol::Classic, 8, "turns").await;
    let ends = produce(&env, &topic, 4_000).await;
    assert_eq!(ends.len(), 8);

    let handler = Arc::new(Concurrency::default());
    let mut settings = settings(&env, &topic, &group);
    settings.max_concurrent_batches = 2;
    settings.batch_max_messages = 200;
    settings.batch_max_wait = Duration::from_millis(200);
    settings.max_buffered_per_partition = 50;
    let member = ConsumerRuntime::start(settings, handler.clone()).expect("member");
    wait_for_commits(&env, &group, &topic, &ends, Duration::from_secs(60)).await;
    member.shutdown().await;

    let most = handler.most_running.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} batches ran at once; max_concurrent_batches is 2");
    assert_eq!(
        most, 2,
        "8 partitions with a backlog, yet batches never overlapped: the turns are not shared"
    );
    let largest = handler.largest_batch.load(Ordering::SeqCst);
    assert!(
        largest > 50,
        "the largest batch had {largest} messages: a batch could not grow past the buffer bound (50) to batch_max_messages (200)"
    );
    assert_all_handled(&handler.handled, &ends);
}

/// Settings where two full batches fill the message budget but eight turns exist.
fn budget_settings(env: &TestEnv, topic: &str, group: &str) -> ConsumerSettings {
    let mut settings = settings(env, topic, group);
    settings.max_concurrent_batches = 8;
    settings.max_messages_in_flight = 400;
    settings.batch_max_messages = 200;
    settings.batch_max_wait = Duration::from_millis(200);
    settings.max_buffered_per_partition = 50;
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_batches_share_the_message_budget() {
    let (env, topic, group) = probe_topic(GroupProtocol::Classic, 8, "budget-full").await;
    let ends = produce(&env, &topic, 4_000).await;

    let handler = Arc::new(Concurrency::default());
    let member =
        ConsumerRuntime::start(budget_settings(&env, &topic, &group), handler.clone()).expect("member");
    wait_for_commits(&env, &group, &topic, &ends, Duration::from_secs(60)).await;
    member.shutdown().await;

    let most_messages = handler.most_messages_running.load(Ordering::SeqCst);
    assert!(
        most_messages <= 400,
        "the batches running at once held {most_messages} messages; max_messages_in_flight is 400"
    );
    assert!(handler.most_running.load(Ordering::SeqCst) >= 2, "batches never overlapped under a backlog");
    let largest = handler.largest_batch.load(Ordering::SeqCst);
    assert!(
        largest > 50,
        "the largest batch had {largest} messages: batches no longer outgrow the buffer (50)"
    );
    assert_all_handled(&handler.handled, &ends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn small_batches_use_every_turn() {
    let (env, topic, group) = probe_topic(GroupProtocol::Classic, 8, "budget-small").await;
    // About ten messages per partition: no partition reaches its buffer bound, so each batch
    // holds room for what it has, not for a full batch.
    let ends = produce(&env, &topic, 80).await;

    let handler = Arc::new(Concurrency::default());
    let member =
        ConsumerRuntime::start(budget_settings(&env, &topic, &group), handler.clone()).expect("member");
    wait_for_commits(&env, &group, &topic, &ends, Duration::from_secs(60)).await;
    member.shutdown().await;

    let most = handler.most_running.load(Ordering::SeqCst);
    assert!(
        most > 2,
        "at most {most} small batches ran at once: each took room for a full batch (the budget holds two)"
    );
    assert!(most <= 8, "{most} batches ran at once; max_concurrent_batches is 8");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_caught_up_commits_before_its_commit_interval() {
    let (env, topic, group) = probe_topic(GroupProtocol::Classic, 4, "caught-up").await;
    let ends = produce(&env, &topic, 400).await;

    let handler = Arc::new(Concurrency::default());
    let mut settings = settings(&env, &topic, &group);
    // Far longer than the test waits: only the caught-up commit can land the offsets.
    settings.commit_interval = Duration::from_secs(600);
    let member = ConsumerRuntime::start(settings, handler.clone()).expect("member");
    wait_for_commits(&env, &group, &topic, &ends, Duration::from_secs(60)).await;
    member.shutdown().await;
}

/// Messages of about 8 KiB each: the byte bounds below bind long before the message counts.
const LARGE_VALUE_BYTES: usize = 8 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_pauses_on_its_buffered_bytes() {
    let (env, topic, group) = probe_topic(GroupProtocol::Classic, 4, "bytes-pause").await;
    let ends = produce_sized(&env, &topic, 400, LARGE_VALUE_BYTES).await;

    let handler = Arc::new(Recorder::default());
    handler.held.store(true, Ordering::SeqCst);
    let mut settings = settings(&env, &topic, &group);
    // The message count never binds (a partition holds about 100); 64 KiB is 8 messages.
    settings.max_buffered_per_partition = 100_000;
    settings.batch_max_messages = 100_000;
    settings.max_messages_in_flight = 100_000;
    settings.max_buffered_bytes_per_partition = 64 * 1024;
    let member = ConsumerRuntime::start(settings, handler.clone()).expect("member");
    wait_until("every partition of the held member is paused on its bytes", Duration::from_secs(60), || {
        handler.paused.lock().expect("lock").len() == 4
    })
    .await;
    handler.held.store(false, Ordering::SeqCst);
    wait_for_commits(&env, &group, &topic, &ends, Duration::from_secs(60)).await;
    member.shutdown().await;
    assert_all_handled(&handler.handled, &ends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_messages_keep_batches_and_the_batches_in_flight_within_their_bytes() {
    let (env, topic, group) = probe_topic(GroupProtocol::Classic, 8, "bytes-budget").await;
    let ends = produce_sized(&env, &topic, 800, LARGE_VALUE_BYTES).await;

    let handler = Arc::new(Concurrency::default());
    let mut settings = budget_settings(&env, &topic, &group);
    // Counts far above what the partitions hold: only the byte bounds can bind.
    settings.batch_max_messages = 100_000;
    settings.max_messages_in_flight = 100_000;
    settings.max_buffered_per_partition = 100_000;
    settings.batch_max_bytes = 40 * 1024;
    settings.max_bytes_in_flight = 100 * 1024;
    settings.max_buffered_bytes_per_partition = 64 * 1024;
    let member = ConsumerRuntime::start(settings, handler.clone()).expect("member");
    wait_for_commits(&env, &group, &topic, &ends, Duration::from_secs(90)).await;
    member.shutdown().await;

    let largest = handler.largest_batch_bytes.load(Ordering::SeqCst);
    assert!(largest <= 40 * 1024, "a batch held {largest} bytes; batch_max_bytes is 40 KiB");
    assert!(
        largest > 2 * LARGE_VALUE_BYTES,
        "the largest batch held {largest} bytes: batches were cut far below their byte bound"
    );
    let most_bytes = handler.most_bytes_running.load(Ordering::SeqCst);
    assert!(
        most_bytes <= 100 * 1024,
        "the batches running at once held {most_bytes} bytes; max_bytes_in_flight is 100 KiB"
    );
    assert!(handler.most_running.load(Ordering::SeqCst) >= 2, "batches never overlapped under a backlog");
    assert_all_handled(&handler.handled, &ends);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_larger_than_every_byte_bound_is_handled_alone() {
    let (env, topic, group) = probe_topic(GroupProtocol::Classic, 2, "bytes-oversize").await;
    let ends = produce_sized(&env, &topic, 40, LARGE_VALUE_BYTES).await;

    let handler = Arc::new(Concurrency::default());
    let mut settings = budget_settings(&env, &topic, &group);
    settings.batch_max_bytes = 1024;
    settings.max_bytes_in_flight = 1024;
    settings.max_buffered_bytes_per_partition = 1024;
    let member = ConsumerRuntime::start(settings, handler.clone()).expect("member");
    wait_for_commits(&env, &group, &topic, &ends, Duration::from_secs(60)).await;
    member.shutdown().await;

    assert_eq!(
        handler.largest_batch.load(Ordering::SeqCst),
        1,
        "a batch held more than one oversize message"
    );
    assert_eq!(
        handler.most_running.load(Ordering::SeqCst),
        1,
        "oversize batches ran at once: each should take the whole byte budget"
    );
    assert_all_handled(&handler.handled, &ends);
}
