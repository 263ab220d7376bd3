//! Cache-aside behaviour: a miss reads PostgreSQL and refills Redis, the next read hits Redis,
//! a refill never overwrites a newer entry, and cache keys follow the active generation across
//! a blue/green switch.

use std::time::Duration;

use prism_cache::{Cache, Entry};
use prism_projections::ProjectionInstance;
use prism_query::ReadPath;
use prism_testkit::TestEnv;
use reqwest::StatusCode;
use serde_json::Value;
use shop::testing::workload::Workload;
use shop_model::read_models::ORDER_SUMMARY;
use uuid::Uuid;

use crate::support::{environment, metric, projector, publish, shop, wait_projected, Running};

/// An order of the projected workload with version >= 2: its id, version and revision.
struct Order {
    id: Uuid,
    version: i64,
    revision: i64,
}

/// An environment with a projected workload, and an order of it with two events or more.
async fn projected(seed: u64) -> (TestEnv, Order) {
    let env = environment().await;
    let events = Workload::generate(seed, 300);
    publish(&env, &events).await;
    let projector = projector(&env);
    wait_projected(&env, &events, Duration::from_secs(90)).await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
    let client = env.pg().await.expect("pg");
    let row = client
        .query_one(
            "SELECT order_id, prism_version, prism_revision FROM order_summary
             WHERE prism_version >= 2 ORDER BY order_id LIMIT 1",
            &[],
        )
        .await
        .expect("an order with two events");
    (env, Order { id: row.get(0), version: row.get(1), revision: row.get(2) })
}

async fn redis(env: &TestEnv) -> redis::aio::MultiplexedConnection {
    redis::Client::open(env.config.redis.url.as_str())
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// (rev, ver, doc) of a cache entry.
async fn entry(
    conn: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> (Option<i64>, Option<i64>, Option<String>) {
    redis::cmd("HMGET").arg(key).arg("rev").arg("ver").arg("doc").query_async(conn).await.expect("HMGET")
}

fn order_key(env: &TestEnv, generation: u32, id: Uuid) -> String {
    let prefix = ProjectionInstance::new(ORDER_SUMMARY, generation)
        .cache_prefix("order", &env.config.redis.key_prefix);
    format!("{prefix}{id}")
}

fn counter(metrics: &str, series: &str) -> f64 {
    metric(metrics, series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_refills_the_cache_the_next_read_hits_and_min_version_skips_an_older_entry() {
    let _metrics = crate::support::metrics_exclusive().await;
    prism_testkit::init_logging();
    let (env, order) = projected(11).await;
    let (order_id, version) = (order.id, order.version);
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
    let (revision, cached_version, document) = entry(&mut conn, &key).await;
    assert_eq!(revision, Some(order.revision), "refilled at the row's revision");
    assert_eq!(cached_version, Some(version), "refilled with the row's version");
    let document: Value = serde_json::from_str(&document.expect("refilled document")).expect("json");
    assert_eq!(document, got.body, "the refill is the document served");
    assert!(
        document.as_object().is_some_and(|o| !o.keys().any(|k| k.starts_with("prism_"))),
        "no engine columns in what is served or cached: {document}"
    );
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
        .arg(order.revision - 1)
        .arg("ver")
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
    let (revision, cached_version, _) = entry(&mut conn, &key).await;
    assert_eq!(
        (revision, cached_version),
        (Some(order.revision), Some(version)),
        "the newer row replaced the older entry"
    );
    query.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_never_overwrites_a_newer_cache_entry() {
    let _metrics = crate::support::metrics_shared().await;
    prism_testkit::init_logging();
    let (env, order) = projected(12).await;
    let (order_id, version, revision) = (order.id, order.version, order.revision);
    let cache = Cache::connect(&env.config.redis).await.expect("redis");
    let reads = ReadPath::connect(&env.config, shop()).await.expect("read path");
    let id = order_id.to_string();
    let key = reads.cache_key(ORDER_SUMMARY, &id).expect("a cache key");
    assert_eq!(key, order_key(&env, 1, order_id));

    // A projector wrote revision+1 after our PostgreSQL read of `revision`.
    let row = reads.stored(ORDER_SUMMARY, &id).await.expect("read").expect("a row");
    assert_eq!((row.version, row.revision), (version, revision));
    let newer = format!("{{\"newer\":{}}}", revision + 1);
    let written = cache
        .put_if_newer(&[Entry { key: &key, revision: revision + 1, version: version + 1, document: &newer }])
        .await
        .expect("write");
    assert_eq!(written, 1);

    // Concurrent refills of the older row: none lands.
    let refills: Vec<bool> =
        futures::future::join_all((0..16).map(|_| reads.refill(ORDER_SUMMARY, &row))).await;
    assert!(refills.iter().all(|written| !written), "{refills:?}");
    let mut conn = redis(&env).await;
    assert_eq!(entry(&mut conn, &key).await, (Some(revision + 1), Some(version + 1), Some(newer.clone())));

    // The same revision is not rewritten either; an older entry is.
    let _: () =
        redis::cmd("HSET").arg(&key).arg("rev").arg(revision).query_async(&mut conn).await.expect("HSET");
    assert!(!reads.refill(ORDER_SUMMARY, &row).await, "same revision: left alone");
    let _: () =
        redis::cmd("HSET").arg(&key).arg("rev").arg(revision - 1).query_async(&mut conn).await.expect("HSET");
    assert!(reads.refill(ORDER_SUMMARY, &row).await, "older revision: replaced");
    let (cached_revision, cached_version, document) = entry(&mut conn, &key).await;
    assert_eq!((cached_revision, cached_version), (Some(revision), Some(version)));
    let document: Value = serde_json::from_str(&document.expect("document")).expect("json");
    assert_eq!(document, row.document);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_follow_a_blue_green_switch_of_the_active_generation() {
    let _metrics = crate::support::metrics_shared().await;
    prism_testkit::init_logging();
    let (env, order) = projected(13).await;
    let (order_id, version) = (order.id, order.version);
    let query = Running::query(env.config.clone()).await;
    let first = query.get(&format!("/orders/{order_id}"), &[]).await;
    assert_eq!(first.status, StatusCode::OK);

    // Build generation 2 beside 1 (a copy with one visible difference) and switch to it the way
    // a blue/green rebuild does: one transaction, then the notification.
    let mut client = env.pg().await.expect("pg");
    let g2 = ProjectionInstance::new(ORDER_SUMMARY, 2);
    let model = shop().read_model(ORDER_SUMMARY).cloned().expect("order_summary");
    prism_read_store::read_models::create_tables(&client, g2, model.table_sql()).await.expect("g2 tables");
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
    prism_read_store::read_models::point_view(&tx, g2).await.expect("view");
    let channel = prism_read_store::read_models::generations_channel(&env.config.postgres.schema);
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
    let (revision, _, document) = entry(&mut conn, &order_key(&env, 2, order_id)).await;
    assert_eq!(revision, Some(order.revision), "refilled under the generation-2 key");
    assert!(document.is_some_and(|d| d.contains("rebuilt")));
    query.stop().await;
}
