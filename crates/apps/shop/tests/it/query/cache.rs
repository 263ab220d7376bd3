//! Cache-aside behaviour: a miss reads PostgreSQL and refills Redis, the next read hits
//! Redis, a refill never overwrites a newer entry, and cache keys follow the active
//! generation across a blue/green switch.

mod common;

use std::time::Duration;

use common::{publish, Running};
use prism_cache::{Cache, Entry};
use prism_projections::views::OrderSummary;
use prism_projections::{ProjectionInstance, ProjectionName};
use prism_projector::Embedded;
use prism_query::generations::ActiveGenerations;
use prism_query::notify::AppliedSignals;
use prism_query::reader::ReadModels;
use prism_testkit::oracle::CacheCheck;
use prism_testkit::workload::Workload;
use prism_testkit::TestEnv;
use reqwest::StatusCode;
use serde_json::Value;
use uuid::Uuid;

/// An environment with a projected workload; returns it with an order of version >= 2.
async fn projected(seed: u64) -> (TestEnv, Uuid, i64) {
    let env = TestEnv::new().await.expect("test environment");
    let events = Workload::generate(seed, 300);
    publish(&env, &events).await;
    let projector = Embedded::start(env.config.clone());
    env.wait_for_oracle(&events, CacheCheck::Complete, Duration::from_secs(90)).await.expect("projected");
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
    let client = env.pg().await.expect("pg");
    let row = client
        .query_one(
            "SELECT order_id, version FROM order_summary WHERE version >= 2 ORDER BY order_id LIMIT 1",
            &[],
        )
        .await
        .expect("an order with two events");
    (env, row.get(0), row.get(1))
}

async fn redis(env: &TestEnv) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.config.redis.url.as_str())
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

async fn entry(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> (Option<i64>, Option<String>) {
    redis::cmd("HMGET").arg(key).arg("rev").arg("doc").query_async(conn).await.expect("HMGET")
}

fn order_key(env: &TestEnv, generation: u32, id: Uuid) -> String {
    let prefix = ProjectionInstance::new(ProjectionName::OrderSummary, generation)
        .cache_prefix(&env.config.redis.key_prefix)
        .expect("orders are cached");
    format!("{prefix}{id}")
}

fn counter(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_refills_the_cache_the_next_read_hits_and_min_version_skips_an_older_entry() {
    prism_testkit::init_logging();
    let (env, order_id, version) = projected(11).await;
    let query = Running::query(env.config.clone()).await;
    let key = order_key(&env, 1, order_id);
    let mut conn = redis(&env).await;

    // Miss: the projector's entry is removed; the answer comes from PostgreSQL and refills.
    let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.expect("DEL");
    let misses = "prism_query_cache_lookups_total{read_model=\"order_summary\",result=\"miss\"}";
    let hits = "prism_query_cache_lookups_total{read_model=\"order_summary\",result=\"hit\"}";
    let before = query.metrics().await;
    let got = query.get(&format!("/orders/{order_id}"), &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.version_header(), Some(version));
    let (revision, document) = entry(&mut conn, &key).await;
    assert_eq!(revision, Some(version), "refilled at the row's version");
    let document: Value = serde_json::from_str(&document.expect("refilled document")).expect("json");
    assert_eq!(document, got.body, "the refill is the document served");
    let after = query.metrics().await;
    assert_eq!(counter(&after, misses), counter(&before, misses) + 1.0, "one miss counted");

    // Hit: a marked document at the same revision is what the next read serves.
    let mut marked = got.body.clone();
    marked["carrier"] = Value::String("served-from-redis".into());
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("doc")
        .arg(marked.to_string())
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let got = query.get(&format!("/orders/{order_id}"), &[]).await;
    assert_eq!(got.body["carrier"], "served-from-redis", "a hit is served from Redis");
    let latest = query.metrics().await;
    assert_eq!(counter(&latest, hits), counter(&after, hits) + 1.0, "one hit counted");

    // An older cached entry: served as is without min_version, skipped (PostgreSQL read and
    // cache refilled) when the client needs the current version.
    let mut older = got.body.clone();
    older["version"] = Value::from(version - 1);
    older["carrier"] = Value::String("older".into());
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("rev")
        .arg(version - 1)
        .arg("doc")
        .arg(older.to_string())
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let got = query.get(&format!("/orders/{order_id}"), &[]).await;
    assert_eq!(got.version_header(), Some(version - 1));
    let got = query.get(&format!("/orders/{order_id}?min_version={version}"), &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.version_header(), Some(version));
    assert_ne!(got.body["carrier"], "older");
    assert_eq!(entry(&mut conn, &key).await.0, Some(version), "the newer row replaced the older entry");
    query.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_never_overwrites_a_newer_cache_entry() {
    prism_testkit::init_logging();
    let (env, order_id, version) = projected(12).await;
    let cache = Cache::connect(&env.config.redis).await.expect("redis");
    let generations = ActiveGenerations::default();
    generations.reload(&env.db).await.expect("generations");
    let reads = ReadModels::new(
        env.db.clone(),
        cache.clone(),
        env.config.redis.key_prefix.clone(),
        generations,
        AppliedSignals::new(),
    );
    let key = reads.key_of::<OrderSummary>(order_id).expect("a cache key");
    assert_eq!(key, order_key(&env, 1, order_id));

    // A projector wrote version+1 after our PostgreSQL read of `version`.
    let row = reads.from_postgres::<OrderSummary>(order_id).await.expect("read").expect("a row");
    assert_eq!(row.version, version);
    let newer = format!("{{\"newer\":{}}}", version + 1);
    let written = cache
        .put_if_newer(&[Entry { key: &key, revision: version + 1, document: &newer }])
        .await
        .expect("write");
    assert_eq!(written, 1);

    // Concurrent refills of the older row: none lands.
    let refills: Vec<bool> = futures::future::join_all((0..16).map(|_| reads.refill(&row))).await;
    assert!(refills.iter().all(|written| !written), "{refills:?}");
    let mut conn = redis(&env).await;
    assert_eq!(entry(&mut conn, &key).await, (Some(version + 1), Some(newer.clone())));

    // The same revision is not rewritten either; an older entry is.
    let _: () =
        redis::cmd("HSET").arg(&key).arg("rev").arg(version).query_async(&mut conn).await.expect("HSET");
    assert!(!reads.refill(&row).await, "same revision: left alone");
    let _: () =
        redis::cmd("HSET").arg(&key).arg("rev").arg(version - 1).query_async(&mut conn).await.expect("HSET");
    assert!(reads.refill(&row).await, "older revision: replaced");
    let (revision, document) = entry(&mut conn, &key).await;
    assert_eq!(revision, Some(version));
    let document: OrderSummary = serde_json::from_str(&document.expect("document")).expect("an order");
    assert_eq!(document, row);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_a_blue_green_switch_of_the_active_generation() {
    prism_testkit::init_logging();
    let (env, order_id, version) = projected(13).await;
    let query = Running::query(env.config.clone()).await;
    let first = query.get(&format!("/orders/{order_id}"), &[]).await;
    assert_eq!(first.status, StatusCode::OK);

    // Build generation 2 beside 1 (a copy with one visible difference) and switch to it the
    // way a blue/green rebuild does: one transaction, then the notification.
    let mut client = env.pg().await.expect("pg");
    let g2 = ProjectionInstance::new(ProjectionName::OrderSummary, 2);
    prism_store::read_models::create_tables(&client, g2).await.expect("g2 tables");
    client
        .batch_execute(&format!(
            "INSERT INTO order_summary_g2 SELECT * FROM order_summary_g1;
             UPDATE order_summary_g2 SET carrier = 'rebuilt' WHERE order_id = '{order_id}';"
        ))
        .await
        .expect("g2 rows");
    let tx = client.transaction().await.expect("tx");
    tx.execute(
        "UPDATE projection_generations SET status = 'retired', retired_at = now()
         WHERE projection = 'order_summary' AND generation = 1",
        &[],
    )
    .await
    .expect("retire g1");
    tx.execute(
        "INSERT INTO projection_generations (projection, generation, status, activated_at)
         VALUES ('order_summary', 2, 'active', now())",
        &[],
    )
    .await
    .expect("activate g2");
    prism_store::read_models::point_view(&tx, g2).await.expect("view");
    let channel = prism_store::read_models::generations_channel(&env.config.postgres.schema);
    tx.execute("SELECT pg_notify($1, 'order_summary')", &[&channel]).await.expect("notify");
    tx.commit().await.expect("switch");

    // Well within the 30 s fallback refresh: only the notification can make this pass.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = query.get(&format!("/orders/{order_id}"), &[]).await;
        if got.body["carrier"] == "rebuilt" {
            assert_eq!(got.version_header(), Some(version));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still serving generation 1: {:?}", got.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut conn = redis(&env).await;
    let (revision, document) = entry(&mut conn, &order_key(&env, 2, order_id)).await;
    assert_eq!(revision, Some(version), "refilled under the generation-2 key");
    assert!(document.is_some_and(|d| d.contains("rebuilt")));
    query.stop().await;
}
