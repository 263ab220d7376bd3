//! Offset resets against librdkafka's mock cluster, for what the real broker does only in a
//! race or a failure, and a test cannot provoke on it at will:
//! - the broker cannot describe the group (the mock implements neither ConsumerGroupDescribe
//!   nor DescribeGroups): prismctl refuses to guess, says why, and the live group's committed
//!   offsets, read back, are unchanged;
//! - the outside commit is answered with a rebalance error (`ILLEGAL_GENERATION`,
//!   `REBALANCE_IN_PROGRESS`: a member joined between the membership check and the commit):
//!   reported as active members, nothing committed; without the error the exact offsets are
//!   committed and read back.
//!
//! The same behaviours on Apache Kafka itself (live members described and refused, the commit
//! refused while a member lives) are tested in `offsets.rs`. Needs no external service.

mod common;

use std::time::Duration;

use common::prismctl_with;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;

const TOPIC: &str = "order.events";

/// A mock cluster with the order topic holding five messages in each of its two partitions,
/// and the variables pointing
/// prismctl at it.
fn cluster() -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, Vec<(String, String)>) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 2, 1).expect("topic");
    let bootstrap = cluster.bootstrap_servers();
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("producer");
    for i in 0..10 {
        let key = format!("k{i}");
        producer.send(BaseRecord::to(TOPIC).key(&key).partition(i % 2).payload("{}")).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let vars = vec![
        ("PRISM__KAFKA__BOOTSTRAP_SERVERS".to_owned(), bootstrap),
        ("PRISM__KAFKA__REQUEST_TIMEOUT_MS".to_owned(), "5000".to_owned()),
    ];
    (cluster, vars)
}

fn committed(bootstrap: &str, group: &str) -> Vec<rdkafka::Offset> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(TOPIC, 0);
    tpl.add_partition(TOPIC, 1);
    let found = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    found.elements().iter().map(|e| e.offset()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_the_broker_cannot_describe_is_never_reset_and_nothing_changes() {
    let (cluster, vars) = cluster();
    let bootstrap = cluster.bootstrap_servers();
    // A live member of the group, as a running projector would be.
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "live")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("member");
    member.subscribe(&[TOPIC]).expect("subscribe");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut consumed = 0;
    while consumed < 10 {
        assert!(std::time::Instant::now() < deadline, "the member never consumed the ten messages");
        if let Some(Ok(_)) = member.poll(Duration::from_millis(100)) {
            consumed += 1;
        }
    }
    member.commit_consumer_state(rdkafka::consumer::CommitMode::Sync).expect("the member commits");
    // Keep it alive (heartbeating) while prismctl runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keep = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = member.poll(Duration::from_millis(100));
            }
        })
    };

    let before = committed(&bootstrap, "live");
    assert_eq!(before, vec![rdkafka::Offset::Offset(5), rdkafka::Offset::Offset(5)], "the member committed");

    // The broker cannot describe groups: no guessing, and nothing changes.
    let args =
        ["offsets", "reset", "--to-earliest", "--topic", TOPIC, "--group", "live", "--execute", "--yes"];
    let unknown = prismctl_with(&vars, &args).await;
    assert_eq!(unknown.code, Some(1));
    assert!(
        unknown.stderr.contains("cannot tell whether group live has active members")
            && unknown.stderr.contains("Nothing was changed"),
        "{}",
        unknown.stderr
    );
    assert_eq!(committed(&bootstrap, "live"), before, "the live group's offsets are unchanged");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    keep.join().expect("member thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_answer_is_refused_and_an_empty_group_is_reset() {
    use prism_kafka::admin::{commit_offsets_outside_group, OutsideCommit};
    let (cluster, vars) = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let kafka = prism_config::PrismConfig::load(&prism_config::ConfigSources { env: vars, ..Default::default() })
        .expect("configuration")
        .kafka;
    let offsets = [(TOPIC.to_owned(), 0, 3), (TOPIC.to_owned(), 1, 3)];
    for error in [RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION, RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS] {
        cluster.request_errors(RDKafkaApiKey::OffsetCommit, &[error]);
        let outcome = commit_offsets_outside_group(&kafka, "idle", &offsets, Duration::from_secs(5))
            .await
            .expect("the commit is answered");
        assert!(matches!(outcome, OutsideCommit::RefusedGroupActive { .. }), "{error:?}: {outcome:?}");
        assert!(
            committed(&bootstrap, "idle").iter().all(|o| *o == rdkafka::Offset::Invalid),
            "{error:?}: nothing committed"
        );
    }

    // Without the error: exactly the requested offsets, read back.
    cluster.clear_request_errors(RDKafkaApiKey::OffsetCommit);
    let outcome = commit_offsets_outside_group(&kafka, "idle", &offsets, Duration::from_secs(5))
        .await
        .expect("the commit is answered");
    assert_eq!(outcome, OutsideCommit::Committed);
    assert_eq!(committed(&bootstrap, "idle"), vec![rdkafka::Offset::Offset(3), rdkafka::Offset::Offset(3)]);
}
