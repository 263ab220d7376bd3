//! The broker restarted, gracefully and with SIGKILL, under running projectors (a private
//! Kafka node of the test's own), under both group protocols: consumption pauses and resumes
//! from the committed offsets, and every row and cache entry ends equal to the oracle.

use std::time::Duration;

use crate::support::{dead_letter_counts, InProcess};
use prism_testkit::kafka::{producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::private::PrivateKafka;
use prism_testkit::{group_protocol_tests, GroupProtocol, Services, TestEnv};
use shop::testing::workload::Workload;

group_protocol_tests!(a_broker_restart_mid_run_loses_and_duplicates_nothing => broker_restarts);

async fn broker_restarts(protocol: GroupProtocol) {
    prism_testkit::init_logging();
    let mut broker = PrivateKafka::start().await.expect("private broker");
    let services = Services { kafka: broker.bootstrap_servers(), ..Services::from_env() };
    let protocol = protocol.as_librdkafka();
    let env = TestEnv::on(
        &shop_model::application(),
        services,
        &[("PRISM__PROJECTOR__RETRY_MAX_BACKOFF_MS", "500"), ("PRISM__KAFKA__GROUP_PROTOCOL", protocol)],
    )
    .await
    .expect("test environment");
    let events = Workload::generate(61, 6_000);
    let projector = InProcess::start(env.config.clone());

    {
        let producer = producer(&env.config).expect("producer");
        publish_events(&producer, env.topic_prefix(), &events[..3_000]).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    broker.restart().await.expect("graceful restart");
    {
        let producer = producer(&env.config).expect("producer");
        publish_events(&producer, env.topic_prefix(), &events[3_000..4_500]).await.expect("publish");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.kill().await.expect("SIGKILL");
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.restart().await.expect("start after SIGKILL");
    {
        let producer = producer(&env.config).expect("producer");
        publish_events(&producer, env.topic_prefix(), &events[4_500..]).await.expect("publish");
    }

    env.wait_for_oracle(
        &shop::testing::oracle::fold(&events),
        CacheCheck::Complete,
        Duration::from_secs(180),
    )
    .await
    .expect("oracle");
    assert!(dead_letter_counts(&env).await.is_empty(), "broker outages never dead-letter valid events");
    projector.stop().await;
}
