//! The whole pipeline on a three-node Kafka cluster (replication factor 3,
//! `min.insync.replicas` 2) while brokers die: commands flow through the HTTP API, the outbox
//! relay publishes them (idempotent, `acks=all`), two projector workers run. Mid-run the broker
//! leading the busiest partitions is SIGKILLed and later restarted, then the same is done to the
//! active KRaft controller. Under each group protocol in turn, on the same cluster: every event
//! of the store is in the topics exactly once (the relay lost and repeated nothing), the
//! outbox is empty, and every read-model row and cache entry equals the fold of the event store
//! (nothing lost, nothing applied twice).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use prism_bench::load::{self, LoadConfig};
use prism_bench::verify::{self, VerifyConfig};
use prism_testkit::private::PrivateKafka;
use prism_testkit::{GroupProtocol, Services, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn brokers_and_the_controller_killed_mid_run_lose_and_duplicate_nothing() {
    prism_testkit::init_logging();
    let mut cluster = PrivateKafka::start_cluster().await.expect("three-node Kafka cluster");
    for (round, protocol) in [GroupProtocol::Classic, GroupProtocol::Consumer].into_iter().enumerate() {
        run_with_faults(&mut cluster, protocol, round as u64).await;
    }
}

async fn run_with_faults(cluster: &mut PrivateKafka, protocol: GroupProtocol, seed: u64) {
    let services = Services { kafka: cluster.bootstrap_servers(), ..Services::from_env() };
    let env = TestEnv::on(
        services,
        &[
            ("PRISM__KAFKA__GROUP_PROTOCOL", protocol.as_librdkafka()),
            ("PRISM__TOPICS__REPLICATION_FACTOR", "3"),
            ("PRISM__PROJECTOR__SESSION_TIMEOUT_MS", "8000"),
            ("PRISM__PROJECTOR__RETRY_MAX_BACKOFF_MS", "1000"),
        ],
    )
    .await
    .expect("test environment");
    let commands = common::commands(env.config.clone()).await;
    let projectors = [
        prism_projector::Embedded::start(env.config.clone()),
        prism_projector::Embedded::start(env.config.clone()),
    ];
    let load_config = LoadConfig {
        target: commands.base.clone(),
        commands: None,
        duration: Some(Duration::from_secs(30)),
        concurrency: 8,
        seed: 40 + seed,
        invalid_share: 0.0,
    };
    let load = tokio::spawn(async move { load::run(&load_config).await });

    // The broker leading the most events.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let busiest = busiest_leader(&env).await;
    eprintln!("{protocol:?}: killing node {busiest}, the leader of the busiest partitions");
    cluster.kill_node(busiest).await.expect("SIGKILL the busiest leader");
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.start_node(busiest).await.expect("restart it");

    // The active controller.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let controller = cluster.active_controller().await.expect("active controller");
    eprintln!("{protocol:?}: killing node {controller}, the active controller");
    cluster.kill_node(controller).await.expect("SIGKILL the controller");
    tokio::time::sleep(Duration::from_secs(6)).await;
    cluster.start_node(controller).await.expect("restart it");

    let report = load.await.expect("load task").expect("load run");
    eprintln!("{protocol:?}: {} commands at {:.0}/s", report.commands, report.throughput());
    assert_eq!(report.unexpected, 0, "valid commands failed: {:?}", report.unexpected_examples);
    assert_eq!(report.transport_errors, 0);

    let settings = VerifyConfig { wait: Duration::from_secs(180), progress: false };
    let verified = verify::run(&env.config, &settings).await.expect("the read models converge to the fold");
    eprintln!("{protocol:?}: {verified}");
    assert_eq!(verified.events as u64, report.events_reported(), "every event the API reported is in the store");
    assert_eq!(verified.position.outbox_backlog, 0, "the relay published everything");
    assert_eq!(
        verified.position.topic_messages, verified.events as i64,
        "each event is in the topics exactly once: none lost, none repeated by the relay"
    );
    assert_eq!(verified.position.lag_messages, 0);
    assert!(verified.rows > 0 && verified.cache_entries > 0, "{verified}");

    for projector in projectors {
        projector.stop(Duration::from_secs(30)).await.expect("projector exits cleanly");
    }
    commands.stop().await;
}

/// The node leading the partitions that hold the most events of the test's topics.
async fn busiest_leader(env: &TestEnv) -> u32 {
    let leaders = prism_testkit::kafka::leaders(&env.config, &env.event_topics()).await.expect("leaders");
    let mut events_led: BTreeMap<i32, i64> = BTreeMap::new();
    for (leader, high) in leaders.values() {
        *events_led.entry(*leader).or_default() += high;
    }
    let (leader, _) = events_led.into_iter().filter(|(l, _)| *l >= 0).max_by_key(|(_, n)| *n).expect("a leader");
    u32::try_from(leader).expect("node id")
}
