//! Proves the harness against the real broker: keyed messages produced into a test's own
//! topic come back through a consumer group of two members sharing four partitions, every
//! message at least once, in order per key, and the offsets they committed are on the broker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prism_testkit::kafka::{assignment, committed_offsets, consumer, end_offsets, produce, producer};
use prism_testkit::{group_protocol_tests, GroupProtocol, TestEnv};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;

const KEYS: usize = 40;
const PER_KEY: usize = 10;

/// What one member saw: (key, sequence) in arrival order, and its final assignment.
#[derive(Default)]
struct Seen {
    messages: Vec<(String, usize)>,
    partitions: Vec<(String, i32)>,
}

fn parse(value: &[u8]) -> (String, usize) {
    let text = std::str::from_utf8(value).expect("utf-8 value");
    let (key, seq) = text.split_once('#').expect("key#seq");
    (key.to_owned(), seq.parse().expect("seq"))
}

/// Polls `consumer` until `done` says stop, committing after each message.
fn run_member(
    consumer: BaseConsumer,
    seen: Arc<Mutex<Seen>>,
    done: Arc<dyn Fn() -> bool + Send + Sync>,
) -> BaseConsumer {
    while !done() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let value = message.payload().expect("value");
                seen.lock().expect("lock").messages.push(parse(value));
                // Apache Kafka refuses a commit made while the member's generation is being
                // replaced (a rebalance in progress): the next commit, or the last one below,
                // covers the message.
                if let Err(err) = consumer.commit_message(&message, CommitMode::Sync) {
                    assert!(rebalancing(&err), "commit: {err}");
                }
            }
            Some(Err(err)) => panic!("consumer error: {err}"),
            None => {}
        }
        seen.lock().expect("lock").partitions = assignment(&consumer);
    }
    // Whatever a commit refused during a rebalance is committed now.
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {}
        Err(err) if err.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset) => {}
        Err(err) => panic!("final commit: {err}"),
    }
    consumer
}

/// Whether a commit failed only because the group was rebalancing.
fn rebalancing(err: &rdkafka::error::KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::StaleMemberEpoch
        )
    )
}

group_protocol_tests!(two_members_share_four_partitions_in_order_per_key => share_four_partitions);

async fn share_four_partitions(protocol: GroupProtocol) {
    let app = prism_testkit::probe::application();
    let env = TestEnv::for_protocol(&app, protocol, &[("PRISM__TOPICS__PARTITIONS", "4")])
        .await
        .expect("test environment");
    let topic = prism_testkit::probe::PROBE.topic(env.topic_prefix());
    let group = env.group("round-trip");

    let producer = producer(&env.config).expect("producer");
    let mut produced = BTreeSet::new();
    let mut partitions_used = BTreeSet::new();
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            let key = format!("key-{k:02}");
            let (partition, _) = produce(
                &producer,
                &topic,
                Some(key.as_bytes()),
                Some(format!("{key}#{seq}").as_bytes()),
                &[],
            )
            .await
            .expect("produce");
            partitions_used.insert(partition);
            produced.insert((key, seq));
        }
    }
    assert_eq!(partitions_used.len(), 4, "40 keys should land on all 4 partitions");

    // KIP-848 assigns on the broker; a classic group uses the assignor Prism's workers use.
    let strategy: &[(&str, &str)] = match protocol {
        GroupProtocol::Classic => &[("partition.assignment.strategy", "cooperative-sticky")],
        GroupProtocol::Consumer => &[],
    };
    let a = consumer(&env.config, &group, strategy).expect("consumer a");
    let b = consumer(&env.config, &group, strategy).expect("consumer b");
    a.subscribe(&[&topic]).expect("subscribe a");
    b.subscribe(&[&topic]).expect("subscribe b");

    let seen_a = Arc::new(Mutex::new(Seen::default()));
    let seen_b = Arc::new(Mutex::new(Seen::default()));
    let deadline = Instant::now() + Duration::from_secs(90);
    let done: Arc<dyn Fn() -> bool + Send + Sync> = {
        let (seen_a, seen_b, produced) = (seen_a.clone(), seen_b.clone(), produced.clone());
        Arc::new(move || {
            let (a, b) = (seen_a.lock().expect("lock"), seen_b.lock().expect("lock"));
            let all: BTreeSet<_> = a.messages.iter().chain(&b.messages).cloned().collect();
            let shared = !a.partitions.is_empty()
                && !b.partitions.is_empty()
                && a.partitions.len() + b.partitions.len() == 4;
            (all == produced && shared) || Instant::now() > deadline
        })
    };
    let (a, b) = {
        let (sa, sb, da, db) = (seen_a.clone(), seen_b.clone(), done.clone(), done.clone());
        let ha = tokio::task::spawn_blocking(move || run_member(a, sa, da));
        let hb = tokio::task::spawn_blocking(move || run_member(b, sb, db));
        (ha.await.expect("member a"), hb.await.expect("member b"))
    };

    let (seen_a, seen_b) = (
        std::mem::take(&mut *seen_a.lock().expect("lock")),
        std::mem::take(&mut *seen_b.lock().expect("lock")),
    );
    let all: BTreeSet<_> = seen_a.messages.iter().chain(&seen_b.messages).cloned().collect();
    assert_eq!(all, produced, "every produced message must arrive (within 90s)");
    assert!(
        !seen_a.partitions.is_empty() && !seen_b.partitions.is_empty(),
        "both members must hold partitions: {:?} / {:?}",
        seen_a.partitions,
        seen_b.partitions
    );
    let union: BTreeSet<_> = seen_a.partitions.iter().chain(&seen_b.partitions).cloned().collect();
    assert_eq!(union.len(), 4, "the two members must share all four partitions without overlap");
    for (name, seen) in [("a", &seen_a), ("b", &seen_b)] {
        let mut last: BTreeMap<&str, usize> = BTreeMap::new();
        for (key, seq) in &seen.messages {
            if let Some(previous) = last.insert(key, *seq) {
                assert!(
                    *seq > previous,
                    "member {name} saw {key} #{seq} after #{previous}: order per key broken"
                );
            }
        }
    }
    drop((a, b));

    // Every message was committed as it was processed: the group's committed offsets, read
    // back from the broker, are the end of every partition, so a member joining now would
    // start after the last message and receive nothing again.
    let ends = end_offsets(&env.config, std::slice::from_ref(&topic)).await.expect("end offsets");
    let committed =
        committed_offsets(&env.config, &group, std::slice::from_ref(&topic)).await.expect("committed");
    assert_eq!(ends.values().sum::<i64>(), (KEYS * PER_KEY) as i64, "the topic holds what was produced");
    assert_eq!(committed, ends, "the group's committed offsets are the end of every partition");
}
