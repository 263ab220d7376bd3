//! `prismctl offsets reset --execute` against librdkafka's mock cluster, for the Apache Kafka
//! behaviour the development broker (Tansu 0.6) lacks: a commit from outside a group that has
//! live members is refused by the broker (`UNKNOWN_MEMBER_ID`, `ILLEGAL_GENERATION`, …), and
//! prismctl reports it as active members and changes nothing. The mock, like Tansu, does not
//! implement DescribeGroups, so the refusal to guess without `--assume-group-empty` is covered
//! here too. Needs no external service.

mod common;

use std::time::Duration;

use common::prismctl_with;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::ClientConfig;

const TOPIC: &str = "order.events";

/// A mock cluster with the order topic holding ten messages, and the variables pointing
/// prismctl at it.
fn cluster() -> (MockCluster<'static, rdkafka::producer::DefaultProducerContext>, Vec<(String, String)>) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 2, 1).expect("topic");
    let bootstrap = cluster.bootstrap_servers();
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("producer");
    for i in 0..10 {
        let key = format!("k{i}");
        producer.send(BaseRecord::to(TOPIC).key(&key).payload("{}")).expect("send");
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
async fn a_group_with_live_members_is_refused_by_the_broker_and_nothing_changes() {
    let (cluster, vars) = cluster();
    let bootstrap = cluster.bootstrap_servers();
    // A live member of the group, as a running projector would be.
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "live")
        .set("enable.auto.commit", "false")
        .create()
        .expect("member");
    member.subscribe(&[TOPIC]).expect("subscribe");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while member.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(std::time::Instant::now() < deadline, "the member never got its partitions");
        let _ = member.poll(Duration::from_millis(100));
    }
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

    // The broker cannot describe groups: no guessing.
    let args =
        ["offsets", "reset", "--to-earliest", "--topic", TOPIC, "--group", "live", "--execute", "--yes"];
    let unknown = prismctl_with(&vars, &args).await;
    assert_eq!(unknown.code, Some(1));
    assert!(unknown.stderr.contains("--assume-group-empty"), "{}", unknown.stderr);

    // Told the group is empty, the commit still goes to the broker, which refuses it.
    let mut told = args.to_vec();
    told.push("--assume-group-empty");
    let refused = prismctl_with(&vars, &told).await;
    assert_eq!(refused.code, Some(1));
    assert!(refused.stderr.contains("active members"), "{}", refused.stderr);
    assert!(refused.stderr.contains("UnknownMemberId"), "names the broker's answer: {}", refused.stderr);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    keep.join().expect("member thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_answer_is_refused_and_an_empty_group_is_reset() {
    let (cluster, vars) = cluster();
    let bootstrap = cluster.bootstrap_servers();
    let args = [
        "offsets",
        "reset",
        "--to-offset",
        "3",
        "--topic",
        TOPIC,
        "--group",
        "idle",
        "--execute",
        "--yes",
        "--assume-group-empty",
    ];
    // The broker answers the commit with a generation error: reported as active members.
    cluster
        .request_errors(RDKafkaApiKey::OffsetCommit, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION]);
    let refused = prismctl_with(&vars, &args).await;
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("active members") && refused.stderr.contains("IllegalGeneration"),
        "{}",
        refused.stderr
    );
    assert!(
        committed(&bootstrap, "idle").iter().all(|o| *o == rdkafka::Offset::Invalid),
        "nothing committed"
    );

    // Without the error: committed, and read back.
    cluster.clear_request_errors(RDKafkaApiKey::OffsetCommit);
    let reset = prismctl_with(&vars, &args).await;
    assert!(reset.ok(), "{}", reset.stderr);
    let offsets = committed(&bootstrap, "idle");
    assert!(
        offsets.iter().all(|o| matches!(o, rdkafka::Offset::Offset(n) if *n <= 3)),
        "at offset 3 or the end of a shorter partition: {offsets:?}"
    );
}
