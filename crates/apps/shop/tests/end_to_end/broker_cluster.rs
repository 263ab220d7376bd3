//! The whole pipeline on a private three-node Kafka cluster (replication factor 3,
//! `min.insync.replicas` 2, `PrivateKafka::start_cluster`) while brokers die: commands flow
//! through the shop's HTTP API, the outbox relay publishes them (idempotent, `acks=all`), two
//! projector workers run. Mid-run the broker leading the busiest partitions is SIGKILLed, and
//! restarted once the relay has had more events acknowledged without it; then the same is done
//! to the active KRaft controller. Under each group protocol, on a cluster of its own (the two
//! run at once, each three to four minutes on 2 cores): every event of the store is in the topics
//! exactly once (the relay lost and repeated nothing), the outbox is empty, and every read-model
//! row and cache entry equals the fold of the event store (nothing lost, nothing applied twice).

use std::collections::BTreeMap;
use std::time::Duration;

use prism_testkit::private::PrivateKafka;
use prism_testkit::{GroupProtocol, Services, TestEnv};
use shop::load::{self, LoadConfig, LoadReport};
use shop::verify::{self, VerifyConfig};
use tokio::sync::watch;

use crate::support;

/// Events the relay must get acknowledged while a node is down: the two remaining replicas
/// keep every partition writable (`min.insync.replicas` 2) once leadership has moved.
const PUBLISHED_WITHOUT_A_NODE: i64 = 200;

/// The load runs in chunks of this length until the faults are over, so it outlasts them
/// however long a leader election or a node's restart takes on a busy machine.
const LOAD_CHUNK: Duration = Duration::from_secs(5);

prism_testkit::group_protocol_tests!(brokers_and_the_controller_killed_mid_run_lose_and_duplicate_nothing => run_with_faults);

async fn run_with_faults(protocol: GroupProtocol) {
    prism_testkit::init_logging();
    let mut cluster = PrivateKafka::start_cluster().await.expect("three-node Kafka cluster");
    let load_seed = match protocol {
        GroupProtocol::Classic => 40,
        GroupProtocol::Consumer => 41,
    };
    let services = Services { kafka: cluster.bootstrap_servers(), ..Services::from_env() };
    let env = TestEnv::on(
        &support::shop(),
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
    let commands = support::commands(env.config.clone()).await;
    let projectors = support::projectors(&env.config, 2);
    let (stop_load, load_stopped) = watch::channel(false);
    let load = tokio::spawn(load_until_stopped(commands.base.clone(), load_seed, load_stopped));

    // The broker leading the most events, once events are flowing.
    wait_until_published(&env, PUBLISHED_WITHOUT_A_NODE, "before the first fault").await;
    let busiest = busiest_leader(&env).await;
    eprintln!("{protocol:?}: killing node {busiest}, the leader of the busiest partitions");
    let before = published(&env).await;
    cluster.kill_node(busiest).await.expect("SIGKILL the busiest leader");
    wait_until_published(&env, before + PUBLISHED_WITHOUT_A_NODE, "with the busiest leader down").await;
    cluster.start_node(busiest).await.expect("restart it");

    // The active controller.
    let controller = cluster.active_controller().await.expect("active controller");
    eprintln!("{protocol:?}: killing node {controller}, the active controller");
    let before = published(&env).await;
    cluster.kill_node(controller).await.expect("SIGKILL the controller");
    wait_until_published(&env, before + PUBLISHED_WITHOUT_A_NODE, "with the controller down").await;
    cluster.start_node(controller).await.expect("restart it");

    let _ = stop_load.send(true);
    let report = load.await.expect("load task");
    eprintln!("{protocol:?}: {} commands at {:.0}/s", report.commands, report.throughput());
    assert_eq!(report.unexpected, 0, "valid commands failed: {:?}", report.unexpected_examples);
    assert_eq!(report.transport_errors, 0);

    let settings = VerifyConfig { wait: Duration::from_secs(180), progress: false };
    let verified = verify::run(&env.config, &settings).await.expect("the read models converge to the fold");
    eprintln!("{protocol:?}: {verified}");
    assert_eq!(
        verified.events as u64,
        report.events_reported(),
        "every event the API reported is in the store"
    );
    assert_eq!(verified.position.outbox_backlog, 0, "the relay published everything");
    assert_eq!(
        verified.position.topic_messages, verified.events as i64,
        "each event is in the topics exactly once: none lost, none repeated by the relay"
    );
    assert_eq!(verified.position.lag_messages, 0);
    assert!(verified.rows > 0 && verified.cache_entries > 0, "{verified}");

    support::stop_projectors(projectors).await;
    commands.stop().await;
}

/// Runs the shop's load against `target` in chunks of [`LOAD_CHUNK`] (each a fresh set of
/// aggregates, from its own seed) until `stop` turns true, and adds their reports up.
async fn load_until_stopped(target: String, seed: u64, stop: watch::Receiver<bool>) -> LoadReport {
    let mut total = LoadReport::default();
    for chunk in 0u64.. {
        if *stop.borrow() {
            break;
        }
        let config = LoadConfig {
            target: target.clone(),
            commands: None,
            duration: Some(LOAD_CHUNK),
            concurrency: 8,
            seed: seed * 1_000_000 + chunk,
            invalid_share: 0.0,
        };
        let report = load::run(&config).await.expect("load run");
        total.commands += report.commands;
        total.elapsed += report.elapsed;
        for (route, statuses) in report.by_route {
            for (status, n) in statuses {
                *total.by_route.entry(route).or_default().entry(status).or_default() += n;
            }
        }
        total.unexpected += report.unexpected;
        total.unexpected_examples.extend(report.unexpected_examples);
        total.transport_errors += report.transport_errors;
        for (aggregate, version) in report.versions {
            let earlier = total.versions.insert(aggregate.clone(), version);
            assert!(earlier.is_none(), "two load chunks touched {aggregate:?}: their seeds collide");
        }
    }
    total
}

/// Events the relay has had acknowledged by the brokers: stored events whose outbox row is
/// gone (the relay deletes a row once the broker acknowledged its event, `acks=all`).
async fn published(env: &TestEnv) -> i64 {
    let client = env.db.client().await.expect("client");
    client
        .query_one("SELECT (SELECT count(*) FROM events) - (SELECT count(*) FROM outbox)", &[])
        .await
        .expect("published events")
        .get(0)
}

/// Waits until the relay has had `wanted` events acknowledged (60 s at most).
async fn wait_until_published(env: &TestEnv, wanted: i64, when: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = published(env).await;
        if now >= wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} events published {when}, not {wanted}, after 60s: the relay stopped publishing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node leading the partitions that hold the most events of the test's topics.
async fn busiest_leader(env: &TestEnv) -> u32 {
    let leaders = prism_testkit::kafka::leaders(&env.config, &env.event_topics()).await.expect("leaders");
    let mut events_led: BTreeMap<i32, i64> = BTreeMap::new();
    for (leader, high) in leaders.values() {
        *events_led.entry(*leader).or_default() += high;
    }
    let (leader, _) =
        events_led.into_iter().filter(|(l, _)| *l >= 0).max_by_key(|(_, n)| *n).expect("a leader");
    u32::try_from(leader).expect("node id")
}
