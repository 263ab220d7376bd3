//! What the query service can serve when a dependency is away. Every read works
//! from PostgreSQL alone, so a Redis outage keeps the service ready — the degraded cache shows
//! in `/readyz`'s body and in `prism_query_cache_up`, and reads stop waiting on Redis — and the
//! cache is used again when Redis is back, even when it was down at start. Without PostgreSQL
//! nothing can be served: not ready, and reads answer 503.

use std::time::Duration;

use prism_testkit::private::{PrivatePostgres, PrivateRedis};
use prism_testkit::{Services, TestEnv};
use reqwest::StatusCode;
use serde_json::Value;
use shop::testing::workload::Workload;
use shop_model::read_models::ORDER_SUMMARY;
use uuid::Uuid;

use crate::support::{metric, projector, publish, shop, wait_projected, Running};

/// An order of `env` with its version (`prism_version`).
async fn an_order(env: &TestEnv) -> (Uuid, i64) {
    let client = env.pg().await.expect("pg");
    let row = client
        .query_one("SELECT order_id, prism_version FROM order_summary ORDER BY order_id LIMIT 1", &[])
        .await
        .expect("an order");
    (row.get(0), row.get(1))
}

/// Polls `/readyz` until the `redis` check's detail starts with `prefix`, asserting that every
/// answer on the way is 200 (ready). Returns the last body.
async fn wait_redis_detail(query: &Running, prefix: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = query.get("/readyz", &[]).await;
        assert_eq!(ready.status, StatusCode::OK, "readiness must not depend on Redis: {:?}", ready.body);
        let detail = ready.body["checks"]["redis"]["detail"].as_str().unwrap_or_default().to_owned();
        if detail.starts_with(prefix) {
            assert_eq!(ready.body["checks"]["redis"]["ok"], Value::Bool(true), "{:?}", ready.body);
            return ready.body;
        }
        assert!(tokio::time::Instant::now() < deadline, "redis detail still {detail:?}, not {prefix}…");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn order_served(query: &Running, order_id: Uuid, version: i64) {
    let started = std::time::Instant::now();
    let got = query.get(&format!("/orders/{order_id}"), &[]).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert_eq!(got.version_header(), Some(version));
    let fresh = query.get(&format!("/orders/{order_id}?min_version={version}"), &[]).await;
    assert_eq!(fresh.status, StatusCode::OK, "{:?}", fresh.body);
    let generic = query.get(&format!("/read-models/{ORDER_SUMMARY}/{order_id}"), &[]).await;
    assert_eq!(generic.status, StatusCode::OK, "{:?}", generic.body);
    assert!(started.elapsed() < Duration::from_secs(3), "three reads took {:?}", started.elapsed());
}

async fn cached(env: &TestEnv, order_id: Uuid) -> bool {
    let mut conn = redis::Client::open(env.config.redis.url.as_str())
        .expect("redis")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    let key = format!("{}g1:order:{order_id}", env.config.redis.key_prefix);
    redis::cmd("EXISTS").arg(key).query_async::<bool>(&mut conn).await.expect("EXISTS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_degrades_the_cache_but_not_readiness_or_reads() {
    let _metrics = crate::support::metrics_exclusive().await;
    prism_testkit::init_logging();
    let mut redis = PrivateRedis::start().await.expect("private Redis");
    let services = Services { redis: redis.url(), ..Services::from_env() };
    let env = TestEnv::on(&shop(), services, &[]).await.expect("test environment");
    let events = Workload::generate(41, 200);
    publish(&env, &events).await;
    let projector = projector(&env);
    wait_projected(&env, &events, Duration::from_secs(90)).await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
    let (order_id, version) = an_order(&env).await;
    let query = Running::query(env.config.clone()).await;
    order_served(&query, order_id, version).await;
    assert_eq!(metric(&query.metrics().await, "prism_query_cache_up"), Some(1.0));

    // Redis goes away: still ready, degraded in the body and the gauge, reads from PostgreSQL.
    redis.stop().await.expect("stop Redis");
    let body = wait_redis_detail(&query, "degraded").await;
    assert_eq!(body["ready"], Value::Bool(true), "{body:?}");
    assert_eq!(metric(&query.metrics().await, "prism_query_cache_up"), Some(0.0));
    order_served(&query, order_id, version).await;
    let metrics = query.metrics().await;
    let bypassed =
        metric(&metrics, "prism_query_cache_lookups_total{read_model=\"order_summary\",result=\"bypassed\"}");
    assert!(bypassed.is_some_and(|n| n >= 1.0), "lookups bypass the degraded cache: {bypassed:?}");

    // Redis is back (empty: nothing is persisted): the cache is used and refilled again.
    redis.restart().await.expect("restart Redis");
    wait_redis_detail(&query, "connected").await;
    assert_eq!(metric(&query.metrics().await, "prism_query_cache_up"), Some(1.0));
    assert!(!cached(&env, order_id).await);
    order_served(&query, order_id, version).await;
    assert!(cached(&env, order_id).await, "a read refilled the cache");
    query.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_service_starts_and_serves_while_redis_is_down_and_uses_it_once_it_is_up() {
    let _metrics = crate::support::metrics_shared().await;
    prism_testkit::init_logging();
    let mut redis = PrivateRedis::start().await.expect("private Redis");
    let services = Services { redis: redis.url(), ..Services::from_env() };
    let env = TestEnv::on(&shop(), services, &[]).await.expect("test environment");
    let events = Workload::generate(42, 150);
    publish(&env, &events).await;
    let projector = projector(&env);
    wait_projected(&env, &events, Duration::from_secs(90)).await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
    let (order_id, version) = an_order(&env).await;

    redis.stop().await.expect("stop Redis");
    let query = Running::query(env.config.clone()).await;
    wait_redis_detail(&query, "degraded").await;
    order_served(&query, order_id, version).await;

    redis.restart().await.expect("start Redis");
    wait_redis_detail(&query, "connected").await;
    order_served(&query, order_id, version).await;
    assert!(cached(&env, order_id).await, "a read refilled the cache once Redis answered");
    query.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_postgresql_the_service_is_not_ready_and_reads_are_503() {
    let _metrics = crate::support::metrics_shared().await;
    prism_testkit::init_logging();
    let mut postgres = PrivatePostgres::start().await.expect("private PostgreSQL");
    let services = Services { postgres: postgres.url(), ..Services::from_env() };
    let env = TestEnv::on(&shop(), services, &[]).await.expect("test environment");
    let query = Running::query(env.config.clone()).await;
    let id = Uuid::new_v4();
    assert_eq!(query.get(&format!("/orders/{id}"), &[]).await.status, StatusCode::NOT_FOUND);

    postgres.stop().await.expect("stop PostgreSQL");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = query.get("/readyz", &[]).await;
        if ready.body["checks"]["postgres"]["ok"] == Value::Bool(false) {
            assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", ready.body);
            assert_eq!(ready.body["ready"], Value::Bool(false), "{:?}", ready.body);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "PostgreSQL still reported up: {:?}", ready.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = query.get(&format!("/orders/{id}"), &[]).await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", got.body);
    assert_eq!(got.error("code"), Some("unavailable"));

    postgres.restart().await.expect("restart PostgreSQL");
    query.wait_ready().await;
    assert_eq!(query.get(&format!("/orders/{id}"), &[]).await.status, StatusCode::NOT_FOUND);
    query.stop().await;
}
