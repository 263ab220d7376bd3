//! Offset resets against librdkafka's mock cluster, for what the real broker does only in a
//! race or a failure, and a test cannot provoke on it at will:
//! - the broker cannot describe the group (the mock implements neither ConsumerGroupDescribe
//!   nor DescribeGroups): prismctl refuses to guess, says why, and the live group's committed
//!   offsets, read back, are exactly what they were;
//! - the outside commit is answered with a rebalance error (`ILLEGAL_GENERATION`,
//!   `REBALANCE_IN_PROGRESS`: a member joined between the membership check and the commit):
//!   reported as active members, and the group's committed offsets, read back, are exactly
//!   what they were; without the error exactly the requested offsets are committed.
//!
//! prismctl reads the deployment's event topics from the registry, so the environment's
//! PostgreSQL schema is real; only the broker is the mock. The same behaviours on Apache Kafka
//! itself (live members described and refused, the commit refused while a member lives) are
//! tested in `offsets.rs`.

use std::time::Duration;

use prism_testkit::TestEnv;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset};
use shop_model::aggregates::ORDER;

use crate::support::{prismctl_with, shop, with_var};

type Mock = MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// A mock cluster with the environment's order topic holding five messages in each of its two
/// partitions, and the environment's variables pointing prismctl at it.
fn cluster(env: &TestEnv) -> (Mock, Vec<(String, String)>, String) {
    let topic = ORDER.topic(env.topic_prefix());
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(&topic, 2, 1).expect("topic");
    let bootstrap = cluster.bootstrap_servers();
    let producer: BaseProducer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("producer");
    for i in 0..10 {
        let key = format!("k{i}");
        producer.send(BaseRecord::to(&topic).key(&key).partition(i % 2).payload("{}")).expect("send");
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
    let vars = with_var(&env.env_vars, "PRISM__KAFKA__BOOTSTRAP_SERVERS", &bootstrap);
    let vars = with_var(&vars, "PRISM__KAFKA__REQUEST_TIMEOUT_MS", "5000");
    (cluster, vars, topic)
}

/// `group`'s committed offsets on both partitions, read back from the broker.
fn committed(bootstrap: &str, topic: &str, group: &str) -> Vec<Offset> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    tpl.add_partition(topic, 1);
    let found = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    found.elements().iter().map(|e| e.offset()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_the_broker_cannot_describe_is_never_reset_and_nothing_changes() {
    let env = TestEnv::new(&shop()).await.expect("test environment");
    let (cluster, vars, topic) = cluster(&env);
    let bootstrap = cluster.bootstrap_servers();
    let group = env.group("live");
    // A live member of the group, as a running projector would be.
    let member: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("member");
    member.subscribe(&[&topic]).expect("subscribe");
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

    let before = committed(&bootstrap, &topic, &group);
    assert_eq!(before, vec![Offset::Offset(5), Offset::Offset(5)], "the member committed");

    // The plan of a fixed offset: exactly 3 on both partitions.
    let plan =
        prismctl_with(&vars, &["offsets", "reset", "--to-offset", "3", "--topic", &topic, "--group", &group])
            .await;
    assert!(plan.ok(), "{}", plan.stderr);
    for partition in 0..2 {
        assert!(plan.stdout.contains(&format!("\n{topic} {partition} 5 -> 3\n")), "{}", plan.stdout);
    }

    // The broker cannot describe groups: no guessing, and nothing changes.
    for target in [["--to-earliest", ""], ["--to-offset", "3"]] {
        let mut args = vec!["offsets", "reset", target[0]];
        if !target[1].is_empty() {
            args.push(target[1]);
        }
        args.extend(["--topic", &topic, "--group", &group, "--execute", "--yes"]);
        let unknown = prismctl_with(&vars, &args).await;
        assert_eq!(unknown.code, Some(1));
        assert!(
            unknown.stderr.contains(&format!("cannot tell whether group {group} has active members"))
                && unknown.stderr.contains("Nothing was changed"),
            "{}",
            unknown.stderr
        );
        assert_eq!(
            committed(&bootstrap, &topic, &group),
            before,
            "the live group's offsets are exactly as before"
        );
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    keep.join().expect("member thread");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_answer_is_refused_and_an_empty_group_is_reset_exactly() {
    use prism_kafka::admin::{commit_offsets_outside_group, OutsideCommit};
    let env = TestEnv::new(&shop()).await.expect("test environment");
    let (cluster, vars, topic) = cluster(&env);
    let bootstrap = cluster.bootstrap_servers();
    let group = env.group("idle");
    let kafka =
        prism_config::PrismConfig::load(&prism_config::ConfigSources { env: vars, ..Default::default() })
            .expect("configuration")
            .kafka;
    let at = |offset: i64| [(topic.clone(), 0, offset), (topic.clone(), 1, offset)];

    // The group has committed offsets to lose.
    let outcome =
        commit_offsets_outside_group(&kafka, &group, &at(5), Duration::from_secs(5)).await.expect("answered");
    assert_eq!(outcome, OutsideCommit::Committed);
    let before = committed(&bootstrap, &topic, &group);
    assert_eq!(before, vec![Offset::Offset(5), Offset::Offset(5)]);

    for error in [
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_ILLEGAL_GENERATION,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS,
    ] {
        cluster.request_errors(RDKafkaApiKey::OffsetCommit, &[error]);
        let outcome = commit_offsets_outside_group(&kafka, &group, &at(3), Duration::from_secs(5))
            .await
            .expect("the commit is answered");
        assert!(matches!(outcome, OutsideCommit::RefusedGroupActive { .. }), "{error:?}: {outcome:?}");
        assert_eq!(committed(&bootstrap, &topic, &group), before, "{error:?}: exactly as before");
    }

    // Without the error: exactly the requested offsets, read back.
    cluster.clear_request_errors(RDKafkaApiKey::OffsetCommit);
    let outcome = commit_offsets_outside_group(&kafka, &group, &at(3), Duration::from_secs(5))
        .await
        .expect("the commit is answered");
    assert_eq!(outcome, OutsideCommit::Committed);
    assert_eq!(committed(&bootstrap, &topic, &group), vec![Offset::Offset(3), Offset::Offset(3)]);
}
