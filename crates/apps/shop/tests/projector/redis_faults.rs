//! Redis failing under a running projector, on a private server. While Redis is down a
//! partition waits after its PostgreSQL commit and commits no offset past the cache entry it
//! could not write (invariant 4); when Redis returns, empty, every entry touched since is
//! written; a flush mid-run is survived the same way. Cache entries are never newer than
//! PostgreSQL and never stale: every one present equals the oracle.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::{dead_letter_counts, InProcess};
use prism_events::Event;
use prism_projections::ProjectionInstance;
use prism_testkit::kafka::{committed_offsets, end_offsets, producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::private::PrivateRedis;
use prism_testkit::{Services, TestEnv};
use shop::testing::workload::Workload;
use shop_model::aggregates::{CART, ORDER, PRODUCT, USER};
use shop_model::read_models::{CART_VIEW, ORDER_SUMMARY, PRODUCT_CATALOG, USER_PROFILE};

/// Cache keys of the entity rows `events` touch (their own aggregates).
fn touched_keys(env: &TestEnv, events: &[Event]) -> BTreeSet<String> {
    events
        .iter()
        .filter_map(|e| {
            let projection = match e.meta.aggregate_type {
                t if t == ORDER => ORDER_SUMMARY,
                t if t == PRODUCT => PRODUCT_CATALOG,
                t if t == CART => CART_VIEW,
                t if t == USER => USER_PROFILE,
                _ => return None,
            };
            let kind = env.app.read_model(projection)?.cache_kind()?;
            let prefix =
                ProjectionInstance::new(projection, 1).cache_prefix(kind, &env.config.redis.key_prefix);
            Some(format!("{prefix}{}", e.meta.aggregate_id))
        })
        .collect()
}

async fn missing_keys(url: &str, keys: &BTreeSet<String>) -> Vec<String> {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let mut missing = Vec::new();
    for key in keys {
        let exists: bool = redis::cmd("EXISTS").arg(key).query_async(&mut conn).await.expect("exists");
        if !exists {
            missing.push(key.clone());
        }
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_restarted_and_flushed_never_leaves_a_wrong_or_stale_entry() {
    prism_testkit::init_logging();
    let mut redis = PrivateRedis::start().await.expect("private Redis");
    let services = Services { redis: redis.url(), ..Services::from_env() };
    let env = TestEnv::on(
        &shop_model::application(),
        services,
        &[("PRISM__PROJECTOR__RETRY_MAX_BACKOFF_MS", "500")],
    )
    .await
    .expect("test environment");
    let producer = producer(&env.config).expect("producer");
    let events = Workload::generate(51, 6_000);
    let (first, rest) = events.split_at(2_000);
    let (second, third) = rest.split_at(2_000);
    let projector = InProcess::start(env.config.clone());

    publish_events(&producer, env.topic_prefix(), first).await.expect("publish");
    env.wait_for_oracle(&shop::testing::oracle::fold(first), CacheCheck::Complete, Duration::from_secs(120))
        .await
        .expect("first part lands");

    // Landed offsets are committed on an interval: wait until the first part's are, so the
    // outage starts from a settled position and any later movement is the projector's doing.
    let group = prism_projector::group_id(&env.config);
    let topics = env.event_topics();
    let ends = end_offsets(&env.config, &topics).await.expect("end offsets");
    let settled_by = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let committed = committed_offsets(&env.config, &group, &topics).await.expect("committed");
        let settled = ends.iter().all(|(tp, end)| *end == 0 || committed.get(tp) == Some(end));
        if settled {
            break committed;
        }
        assert!(
            Instant::now() < settled_by,
            "first part's offsets never committed: {committed:?} vs {ends:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Redis down: batches commit in PostgreSQL, then wait; no offset moves.
    redis.stop().await.expect("stop Redis");
    publish_events(&producer, env.topic_prefix(), second).await.expect("publish");
    let down_since = Instant::now();
    while down_since.elapsed() < Duration::from_secs(4) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = committed_offsets(&env.config, &group, &topics).await.expect("committed");
        assert_eq!(now, before, "offsets moved past cache entries that were never written");
    }

    // Back, empty (it keeps nothing on disk): the entries of everything touched since the
    // outage are written by the retried batches.
    redis.restart().await.expect("restart Redis");
    let mut applied: Vec<Event> = first.to_vec();
    applied.extend_from_slice(second);
    env.wait_for_oracle(
        &shop::testing::oracle::fold(&applied),
        CacheCheck::PresentOnly,
        Duration::from_secs(120),
    )
    .await
    .expect("second part lands");
    let wanted = touched_keys(&env, second);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = missing_keys(&redis.url(), &wanted).await;
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} entries touched during the outage never written, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(3)]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Flushed while the third part flows.
    publish_events(&producer, env.topic_prefix(), &third[..1_000]).await.expect("publish");
    let client = redis::Client::open(redis.url()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.expect("flush");
    publish_events(&producer, env.topic_prefix(), &third[1_000..]).await.expect("publish");
    env.wait_for_oracle(
        &shop::testing::oracle::fold(&events),
        CacheCheck::PresentOnly,
        Duration::from_secs(120),
    )
    .await
    .expect("everything lands");
    let missing = missing_keys(&redis.url(), &touched_keys(&env, &third[1_000..])).await;
    assert!(missing.is_empty(), "entries written after the flush are all there: missing {missing:?}");

    assert!(dead_letter_counts(&env).await.is_empty(), "outages never dead-letter valid events");
    projector.stop().await;
}
