//! A test's own looks at Redis (the oracle's comparison of every cache entry, key cleanup)
//! wait for a slow reply as the engine's cache client does, instead of failing after redis-rs's
//! default 500 ms: on a machine running four tests at once, a reply that late failed a test
//! that was only waiting for the read models to catch up.

use std::time::{Duration, Instant};

use prism_testkit::private::PrivateRedis;
use prism_testkit::services::redis_connection;

/// Keeps the server busy for `ARGV[1]` milliseconds, as a slow reply on a loaded machine would.
const BUSY: &str = "local wait_ms = tonumber(ARGV[1]) \
    local start = redis.call('TIME') \
    local t0 = start[1] * 1000 + start[2] / 1000 \
    while true do \
        local now = redis.call('TIME') \
        if now[1] * 1000 + now[2] / 1000 - t0 >= wait_ms then return 1 end \
    end";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_waits_out_a_reply_slower_than_half_a_second() {
    let redis =
        PrivateRedis::start().await.expect("a private Redis starts (see the message for what is missing)");
    let url = redis.url();

    // The default connection gives up: what the looks used before.
    let mut default = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let refused: Result<i64, _> =
        redis::cmd("EVAL").arg(BUSY).arg(0).arg(1_200).query_async(&mut default).await;
    assert!(
        refused.as_ref().is_err_and(redis::RedisError::is_timeout),
        "redis-rs's default waits 500 ms for a reply: {refused:?}"
    );
    // Let the script end before the next one.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let mut patient = redis_connection(&url).await.expect("connect");
    let started = Instant::now();
    let done: i64 = redis::cmd("EVAL")
        .arg(BUSY)
        .arg(0)
        .arg(1_200)
        .query_async(&mut patient)
        .await
        .expect("the reply, late");
    assert_eq!(done, 1);
    assert!(started.elapsed() >= Duration::from_millis(1_200), "the script ran its 1.2 s");
}
