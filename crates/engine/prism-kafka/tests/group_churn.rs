//! The consumer runtime through group churn, against the real broker and under both group
//! protocols, looking for the failures reported in the field with librdkafka 2.12 and KIP-848:
//!
//! - **a stale-epoch offset fetch starting a consumer from "latest"** (or anywhere but its
//!   committed offset): after one member committed half the stream and left, four members
//!   join at once; on every partition the first offset anyone handles must be exactly the
//!   committed one — not later (events skipped), not earlier (replayed from the start);
//! - **consumers stalling for minutes during reconciliations**: members leave and join every
//!   few seconds while events keep arriving; the group's committed offsets may never stand
//!   still for longer than a session timeout while it is behind;
//! - **commits failing with a stale member epoch**: failed commits are counted; whatever
//!   failed must be carried by a later commit, so when the last members stop the committed
//!   offsets are exactly the end of every partition, and no offset was skipped by anyone;
//! - **a leaving member's last commit refused because its group is rebalancing**: a member
//!   stops while a batch of its takes seconds and another member has just joined; what it
//!   landed must be committed on its way out, so its successor handles none of it again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prism_kafka::consumer::{
    BatchHandler, ConsumerObserver, ConsumerRuntime, ConsumerSettings, PartitionId, TransientError,
};
use prism_kafka::ConsumedMessage;
use prism_testkit::kafka::{committed_offsets, end_offsets, producer};
use prism_testkit::{group_protocol_tests, GroupProtocol, TestEnv};
use rdkafka::producer::{FutureProducer, FutureRecord};

const PARTITIONS: &str = "8";
/// The longest the group's progress may stand still while it is behind: the dev broker's
/// session timeout (10 s) plus a heartbeat and a batch, with room for a slow machine.
const LONGEST_STALL: Duration = Duration::from_secs(25);

/// One handled message: which member, in which order overall.
#[derive(Debug, Clone, Copy)]
struct Handled {
    sequence: usize,
    member: usize,
    partition: i32,
    offset: i64,
}

/// What every member handled, in one journal.
#[derive(Default)]
struct Journal {
    next: AtomicUsize,
    entries: Mutex<Vec<Handled>>,
    commits_failed: Mutex<BTreeMap<String, usize>>,
    commits_ok: AtomicUsize,
    /// Partitions revoked from member 0 so far.
    revoked_from_first: AtomicUsize,
}

/// A member's handler: journals every offset once its batch is done, taking `batch_time`
/// per batch as real work does.
struct Member {
    id: usize,
    journal: Arc<Journal>,
    batch_time: Duration,
}

impl ConsumerObserver for Member {
    fn on_rebalance(&self, _added: &[PartitionId], removed: &[PartitionId], _total: usize) {
        if self.id == 0 {
            self.journal.revoked_from_first.fetch_add(removed.len(), Ordering::SeqCst);
        }
    }

    fn on_commit(&self, error: Option<&str>) {
        match error {
            None => {
                self.journal.commits_ok.fetch_add(1, Ordering::Relaxed);
            }
            Some(code) => {
                *self.journal.commits_failed.lock().expect("lock").entry(code.to_owned()).or_default() += 1;
            }
        }
    }
}

impl BatchHandler for Member {
    async fn handle(
        &self,
        partition: &PartitionId,
        messages: &[ConsumedMessage],
    ) -> Result<(), TransientError> {
        tokio::time::sleep(self.batch_time).await;
        let mut entries = self.journal.entries.lock().expect("lock");
        for message in messages {
            entries.push(Handled {
                sequence: self.journal.next.fetch_add(1, Ordering::SeqCst),
                member: self.id,
                partition: partition.partition,
                offset: message.offset(),
            });
        }
        Ok(())
    }
}

fn settings(env: &TestEnv, topic: &str, group: &str) -> ConsumerSettings {
    ConsumerSettings {
        kafka: env.config.kafka.clone(),
        role: "churn-test".into(),
        group_id: group.into(),
        topics: vec![topic.into()],
        group_instance_id: None,
        batch_max_messages: 50,
        batch_max_bytes: 64 << 20,
        batch_max_wait: Duration::from_millis(20),
        commit_interval: Duration::from_millis(500),
        commit_when_caught_up: true,
        session_timeout: Duration::from_secs(10),
        shutdown_deadline: Duration::from_secs(2),
        retry_initial_backoff: Duration::from_millis(50),
        retry_max_backoff: Duration::from_millis(500),
        max_buffered_per_partition: 500,
        max_buffered_bytes_per_partition: 64 << 20,
        max_concurrent_batches: 4,
        max_messages_in_flight: 100_000,
        max_bytes_in_flight: 64 << 20,
    }
}

async fn produce(producer: &FutureProducer, topic: &str, from: usize, count: usize) {
    let sends = (from..from + count).map(|i| {
        let (key, value) = (format!("key-{}", i % 97), format!("message {i}"));
        async move {
            producer
                .send(FutureRecord::to(topic).key(&key).payload(&value), Duration::from_secs(30))
                .await
                .map_err(|(err, _)| err)
        }
    });
    for delivery in futures::future::join_all(sends).await {
        delivery.expect("produce");
    }
}

/// A test environment whose probe topic has [`PARTITIONS`] partitions, and a group name of
/// its own.
async fn probe_topic(protocol: GroupProtocol, group: &str) -> (TestEnv, String, String) {
    prism_testkit::init_logging();
    let app = prism_testkit::probe::application();
    let env = TestEnv::for_protocol(&app, protocol, &[("PRISM__TOPICS__PARTITIONS", PARTITIONS)])
        .await
        .expect("test environment");
    let topic = prism_testkit::probe::PROBE.topic(env.topic_prefix());
    let group = env.group(group);
    (env, topic, group)
}

group_protocol_tests!(members_joining_and_leaving_resume_at_the_committed_offsets_and_never_stall => churn);

async fn churn(protocol: GroupProtocol) {
    let (env, topic, group) = probe_topic(protocol, "churn").await;
    let topics = vec![topic.clone()];
    let journal = Arc::new(Journal::default());
    let producer = producer(&env.config).expect("producer");
    let start = |id: usize| {
        let member = Arc::new(Member { id, journal: journal.clone(), batch_time: Duration::from_millis(5) });
        ConsumerRuntime::start(settings(&env, &topic, &group), member).expect("member starts")
    };

    // 1. One member handles the first half and leaves, committing on the way out.
    produce(&producer, &topic, 0, 2_000).await;
    let first_ends = end_offsets(&env.config, &topics).await.expect("ends");
    let first = start(0);
    wait_committed(&env, &group, &topics, &first_ends, Duration::from_secs(60)).await;
    first.shutdown().await;
    let committed_first = committed_offsets(&env.config, &group, &topics).await.expect("committed");
    assert_eq!(committed_first, first_ends, "the first member committed all it handled");
    let phase_two_from = journal.next.load(Ordering::SeqCst);

    // 2. More events, then four members at once.
    produce(&producer, &topic, 2_000, 2_000).await;
    let mut members: Vec<ConsumerRuntime> = (1..=4).map(start).collect();

    // 3. Churn while events keep coming: every few seconds one member leaves, one joins.
    let producing = Arc::new(AtomicBool::new(true));
    let feeder = {
        let (producer, topic, producing) = (producer.clone(), topic.clone(), producing.clone());
        tokio::spawn(async move {
            let mut next = 4_000;
            while producing.load(Ordering::SeqCst) {
                produce(&producer, &topic, next, 100).await;
                next += 100;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let watchdog = Stall::watch(&env, &group, &topics);
    for round in 0..6 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let leaving = members.remove(0);
        leaving.shutdown().await;
        members.push(start(5 + round));
    }
    producing.store(false, Ordering::SeqCst);
    feeder.await.expect("feeder");
    let ends = end_offsets(&env.config, &topics).await.expect("ends");
    wait_committed(&env, &group, &topics, &ends, Duration::from_secs(90)).await;
    let longest_stall = watchdog.stop().await;
    for member in members {
        member.shutdown().await;
    }

    // Where each partition resumed after the first member left: exactly where it committed.
    let entries = journal.entries.lock().expect("lock").clone();
    let mut resumed_at: BTreeMap<i32, i64> = BTreeMap::new();
    for entry in entries.iter().filter(|e| e.sequence >= phase_two_from) {
        resumed_at.entry(entry.partition).or_insert(entry.offset);
    }
    for ((_, partition), committed) in &committed_first {
        assert_eq!(
            resumed_at.get(partition),
            Some(committed),
            "partition {partition}: the members joining at once resumed at {:?}, not at the committed offset {committed}",
            resumed_at.get(partition)
        );
    }
    // No member ever started a partition ahead of what the group had handled of it.
    let mut seen: BTreeMap<i32, i64> = BTreeMap::new();
    let mut started: BTreeSet<(usize, i32)> = BTreeSet::new();
    for entry in &entries {
        if started.insert((entry.member, entry.partition)) {
            let handled_up_to = seen.get(&entry.partition).copied().unwrap_or(-1);
            assert!(
                entry.offset <= handled_up_to + 1,
                "member {} started partition {} at offset {} although only up to {handled_up_to} had been handled",
                entry.member,
                entry.partition,
                entry.offset
            );
        }
        let high = seen.entry(entry.partition).or_insert(-1);
        *high = (*high).max(entry.offset);
    }
    // Every offset handled by someone; the last commits carried everything.
    for ((_, partition), end) in &ends {
        let handled: BTreeSet<i64> =
            entries.iter().filter(|e| e.partition == *partition).map(|e| e.offset).collect();
        let missing: Vec<i64> = (0..*end).filter(|o| !handled.contains(o)).take(10).collect();
        assert!(missing.is_empty(), "partition {partition}: offsets never handled (first ten): {missing:?}");
    }
    let committed = committed_offsets(&env.config, &group, &topics).await.expect("committed");
    assert_eq!(committed, ends, "after the last members left, every partition is committed to its end");
    let failed = journal.commits_failed.lock().expect("lock").clone();
    eprintln!(
        "{protocol:?}: {} commits ok, failed {failed:?}; longest stall while behind {longest_stall:?}",
        journal.commits_ok.load(Ordering::Relaxed)
    );
    assert!(longest_stall < LONGEST_STALL, "the group made no progress for {longest_stall:?} while behind");
}

group_protocol_tests!(a_member_leaving_while_its_group_rebalances_commits_what_it_landed => leave_while_rebalancing);

async fn leave_while_rebalancing(protocol: GroupProtocol) {
    let (env, topic, group) = probe_topic(protocol, "leave-while-rebalancing").await;
    let topics = vec![topic.clone()];
    let producer = producer(&env.config).expect("producer");
    produce(&producer, &topic, 0, 4_000).await;
    let ends = end_offsets(&env.config, &topics).await.expect("end offsets");
    let journal = Arc::new(Journal::default());

    // Only the commits made on the way out (on revocation, on stopping) move the group's
    // offsets, and the first member's batches take long enough that stopping it blocks its
    // poll thread while the rebalance the second member starts goes on.
    let mut leaving_settings = settings(&env, &topic, &group);
    leaving_settings.commit_interval = Duration::from_secs(3600);
    leaving_settings.commit_when_caught_up = false;
    leaving_settings.shutdown_deadline = Duration::from_secs(5);
    leaving_settings.max_concurrent_batches = 8;
    let leaving = ConsumerRuntime::start(
        leaving_settings,
        Arc::new(Member { id: 0, journal: journal.clone(), batch_time: Duration::from_millis(1_500) }),
    )
    .expect("first member");
    let landed_some = tokio::time::Instant::now() + Duration::from_secs(30);
    while journal.entries.lock().expect("lock").is_empty() {
        assert!(tokio::time::Instant::now() < landed_some, "the first member landed nothing within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let staying = ConsumerRuntime::start(
        settings(&env, &topic, &group),
        Arc::new(Member { id: 1, journal: journal.clone(), batch_time: Duration::from_millis(5) }),
    )
    .expect("second member");
    // The second member's join takes partitions from the first in two rebalances (both
    // protocols move partitions incrementally): the first member is stopped as soon as it
    // gave some up, while the group still has the rest to settle.
    let revoked = tokio::time::Instant::now() + Duration::from_secs(30);
    while journal.revoked_from_first.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < revoked, "no partition moved to the second member within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    leaving.shutdown().await;
    wait_committed(&env, &group, &topics, &ends, Duration::from_secs(90)).await;
    staying.shutdown().await;

    let entries = journal.entries.lock().expect("lock").clone();
    let landed_by_first: BTreeSet<(i32, i64)> =
        entries.iter().filter(|h| h.member == 0).map(|h| (h.partition, h.offset)).collect();
    assert!(!landed_by_first.is_empty(), "the first member landed nothing");
    let again: Vec<(i32, i64)> = entries
        .iter()
        .filter(|h| h.member == 1 && landed_by_first.contains(&(h.partition, h.offset)))
        .map(|h| (h.partition, h.offset))
        .collect();
    let failed = journal.commits_failed.lock().expect("lock").clone();
    assert!(
        again.is_empty(),
        "{} of the {} offsets the first member landed were handled again by the second (first: {:?}): \
         its commit on the way out was lost; failed commits {failed:?}",
        again.len(),
        landed_by_first.len(),
        again.first()
    );
}

async fn wait_committed(
    env: &TestEnv,
    group: &str,
    topics: &[String],
    ends: &BTreeMap<(String, i32), i64>,
    timeout: Duration,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let committed = committed_offsets(&env.config, group, topics).await.expect("committed");
        if ends.iter().all(|(partition, end)| committed.get(partition).is_some_and(|c| c >= end)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not committed to the end within {timeout:?}: committed {committed:?}, ends {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Watches the group's committed offsets: the longest time they stood still while below the
/// end.
struct Stall {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Duration>,
}

impl Stall {
    fn watch(env: &TestEnv, group: &str, topics: &[String]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (config, group, topics, flag) =
            (env.config.clone(), group.to_owned(), topics.to_vec(), stop.clone());
        let task = tokio::spawn(async move {
            let mut last: Option<BTreeMap<(String, i32), i64>> = None;
            let mut still_since = Instant::now();
            let mut longest = Duration::ZERO;
            while !flag.load(Ordering::SeqCst) {
                let (Ok(committed), Ok(ends)) =
                    (committed_offsets(&config, &group, &topics).await, end_offsets(&config, &topics).await)
                else {
                    continue;
                };
                let behind = ends.iter().any(|(p, end)| committed.get(p).is_none_or(|c| c < end));
                if last.as_ref() != Some(&committed) || !behind {
                    still_since = Instant::now();
                }
                longest = longest.max(still_since.elapsed());
                last = Some(committed);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            longest
        });
        Self { stop, task }
    }

    async fn stop(self) -> Duration {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("watchdog")
    }
}
