//! Flow control across rebalances, against the real broker and under both group protocols: a
//! member whose workers fall behind pauses their partitions; when such a partition moves to
//! another member and later comes back, it must be fetched again. (librdkafka keeps an
//! application pause across unassignment, so a runtime that forgot to lift it would leave the
//! partition unconsumed for good, with its lag growing.) The second member handles one batch
//! of each partition it takes and then stalls, so the first must handle the rest of those
//! partitions after they came back: it cannot pass by the second draining them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prism_kafka::consumer::{
    BatchHandler, ConsumerObserver, ConsumerRuntime, ConsumerSettings, PartitionId, TransientError,
};
use prism_testkit::kafka::{committed_offsets, end_offsets, producer};
use prism_testkit::{group_protocol_tests, GroupProtocol, TestEnv};
use rdkafka::message::{Message, OwnedMessage};
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
}

impl ConsumerObserver for Recorder {}

impl BatchHandler for Recorder {
    async fn handle(&self, partition: &PartitionId, messages: &[OwnedMessage]) -> Result<(), TransientError> {
        let stall =
            self.one_batch_each && self.handled.lock().expect("lock").contains_key(&partition.partition);
        while stall || self.held.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut handled = self.handled.lock().expect("lock");
        handled.entry(partition.partition).or_default().extend(messages.iter().map(Message::offset));
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
        batch_max_wait: Duration::from_millis(50),
        commit_interval: Duration::from_millis(200),
        session_timeout: Duration::from_secs(6),
        shutdown_deadline: Duration::from_millis(500),
        retry_initial_backoff: Duration::from_millis(50),
        retry_max_backoff: Duration::from_millis(500),
        // Far below what one fetch brings: every partition of a held member is paused.
        max_buffered_per_partition: 20,
    }
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
    prism_testkit::init_logging();
    let app = prism_testkit::probe::application();
    let env = TestEnv::for_protocol(&app, protocol, &[("PRISM__TOPICS__PARTITIONS", "4")])
        .await
        .expect("test environment");
    let topic = prism_testkit::probe::PROBE.topic(env.topic_prefix());
    let group = env.group("flow-control");

    let producer = producer(&env.config).expect("producer");
    let keys: Vec<String> = (0..MESSAGES).map(|i| format!("key-{}", i % 64)).collect();
    let sends = keys.iter().enumerate().map(|(i, key)| {
        let value = format!("message {i}");
        let producer = &producer;
        let topic = &topic;
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
    let ends = end_offsets(&env.config, std::slice::from_ref(&topic)).await.expect("end offsets");
    assert_eq!(ends.values().sum::<i64>(), MESSAGES as i64, "the broker holds every message produced");
    assert_eq!(ends.len(), 4);

    // Member A holds all four partitions and falls behind on them: all get paused.
    let a = Arc::new(Recorder { held: AtomicBool::new(true), ..Default::default() });
    let member_a = ConsumerRuntime::start(settings(&env, &topic, &group), a.clone()).expect("member A");
    tokio::time::sleep(Duration::from_secs(3)).await;

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
