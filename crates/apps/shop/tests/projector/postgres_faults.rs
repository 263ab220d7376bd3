//! PostgreSQL failing under a running projector, on a private server: backends terminated in
//! the middle of batches, the server restarted, and the server refusing writes for a while.
//! Transient failures wait and retry; no offset is committed for a batch that did not land
//! (invariant 1); in the end every row and cache entry equals the oracle. Under both group
//! protocols. And the test kit's own wait for the oracle outlasts a restart it meets.

use std::time::{Duration, Instant};

use crate::support::{dead_letter_counts, InProcess};
use prism_testkit::kafka::{committed_offsets, end_offsets, producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::private::PrivatePostgres;
use prism_testkit::{group_protocol_tests, GroupProtocol, Services, TestEnv};
use shop::testing::workload::Workload;

async fn terminate_projector_backends(admin: &tokio_postgres::Client) -> u64 {
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'shop-projector'",
            &[],
        )
        .await
        .map_or(0, |rows| rows.len() as u64)
}

group_protocol_tests!(postgres_outages_and_refused_writes_delay_but_never_lose => postgres_outages);

async fn postgres_outages(protocol: GroupProtocol) {
    prism_testkit::init_logging();
    let mut postgres = PrivatePostgres::start().await.expect("private PostgreSQL");
    let services = Services { postgres: postgres.url(), ..Services::from_env() };
    let protocol = protocol.as_librdkafka();
    let env = TestEnv::on(
        &shop_model::application(),
        services,
        &[("PRISM__PROJECTOR__RETRY_MAX_BACKOFF_MS", "500"), ("PRISM__KAFKA__GROUP_PROTOCOL", protocol)],
    )
    .await
    .expect("test environment");
    let producer = producer(&env.config).expect("producer");
    let events = Workload::generate(41, 9_000);
    let chunks: Vec<&[prism_events::Event]> = events.chunks(3_000).collect();
    let projector = InProcess::start(env.config.clone());

    // 1. Backends killed again and again while batches are in flight.
    publish_events(&producer, env.topic_prefix(), chunks[0]).await.expect("publish");
    let admin = env.pg().await.expect("admin connection");
    let mut terminated = 0;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        terminated += terminate_projector_backends(&admin).await;
    }
    assert!(terminated > 0, "the projector's connections were terminated");

    // 2. The server restarted.
    publish_events(&producer, env.topic_prefix(), chunks[1]).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(500)).await;
    postgres.restart().await.expect("restart PostgreSQL");

    // 3. The server refusing writes: nothing may be committed while it does.
    env.wait_for_oracle(
        &shop::testing::oracle::fold(&events[..6_000]),
        CacheCheck::Complete,
        Duration::from_secs(120),
    )
    .await
    .expect("caught up after the outages");
    let admin = env.pg().await.expect("admin connection after restart");
    // Two statements: ALTER SYSTEM may not share a transaction.
    admin.batch_execute("ALTER SYSTEM SET default_transaction_read_only = on").await.expect("read-only");
    admin.batch_execute("SELECT pg_reload_conf()").await.expect("reload");
    terminate_projector_backends(&admin).await;
    let group = prism_projector::group_id(&env.config);
    let topics = env.event_topics();
    // What landed before the refusal is committed within a commit interval; from then on
    // nothing may move.
    let before = end_offsets(&env.config, &topics).await.expect("end offsets");
    let settle = Instant::now();
    loop {
        let committed = committed_offsets(&env.config, &group, &topics).await.expect("committed");
        if committed == before {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(30),
            "the landed events' offsets were not committed within 30s: {committed:?} of {before:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    publish_events(&producer, env.topic_prefix(), chunks[2]).await.expect("publish");
    let refused_since = Instant::now();
    while refused_since.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = committed_offsets(&env.config, &group, &topics).await.expect("committed");
        assert_eq!(now, before, "offsets moved while PostgreSQL refused every write");
    }
    admin.batch_execute("ALTER SYSTEM RESET default_transaction_read_only").await.expect("writable again");
    admin.batch_execute("SELECT pg_reload_conf()").await.expect("reload");

    let summary = env
        .wait_for_oracle(
            &shop::testing::oracle::fold(&events),
            CacheCheck::Complete,
            Duration::from_secs(120),
        )
        .await
        .expect("oracle");
    eprintln!("{summary:?}");
    assert!(dead_letter_counts(&env).await.is_empty(), "outages never dead-letter valid events");
    projector.stop().await;
}

/// The test kit's wait for the oracle keeps its PostgreSQL connection between looks; a restart
/// closes it. The wait opens it again, rather than failing every later look until its deadline
/// (what a test that restarts PostgreSQL while it waits would report as a failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oracle_wait_outlasts_a_postgres_restart() {
    prism_testkit::init_logging();
    let mut postgres = PrivatePostgres::start().await.expect("private PostgreSQL");
    let services = Services { postgres: postgres.url(), ..Services::from_env() };
    let env = TestEnv::on(&shop_model::application(), services, &[]).await.expect("test environment");
    let producer = producer(&env.config).expect("producer");
    let events = Workload::generate(43, 600);
    publish_events(&producer, env.topic_prefix(), &events).await.expect("publish");

    // The wait's first looks find nothing projected; then PostgreSQL restarts under it, and
    // only after that does a projector start.
    let expected = shop::testing::oracle::fold(&events);
    let wait = env.wait_for_oracle(&expected, CacheCheck::Complete, Duration::from_secs(60));
    let restart_then_project = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        postgres.restart().await.expect("restart PostgreSQL");
        InProcess::start(env.config.clone())
    };
    let (waited, projector) = tokio::join!(wait, restart_then_project);
    let summary = waited.expect("the wait, across the restart, sees the projector catch up");
    eprintln!("{summary:?}");
    projector.stop().await;
}
