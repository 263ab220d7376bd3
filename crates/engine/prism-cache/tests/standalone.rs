//! The cache on one real Redis server (a private `redis-server` per test, started by
//! `prism_testkit::private::redis`): a write of many entries, sent as several script calls in
//! flight at once, lands every entry, and the compare-and-set keeps the newest revision of each
//! whichever call carries it.
//!
//! A test that cannot start the server fails naming what is missing (`ops/dev-stack up`
//! installs redis-server).

use prism_cache::{Cache, Cached, Entry};
use prism_config::{ConfigSources, PrismConfig, RedisMode};
use prism_testkit::private::PrivateRedis;

const PREFIX: &str = "prism-test:g1:row:";

async fn connect(redis: &PrivateRedis) -> Cache {
    let env = vec![("PRISM__REDIS__URL".to_owned(), redis.url())];
    let config =
        PrismConfig::load(&ConfigSources { env, ..Default::default() }).expect("configuration loads");
    assert_eq!(config.redis.mode, RedisMode::Standalone);
    Cache::connect(&config.redis).await.expect("the cache connects to its private Redis")
}

fn document(key: &str, revision: i64) -> String {
    format!(r#"{{"key":"{key}","revision":{revision}}}"#)
}

/// Writes each `(key, revision)`; returns how many the cache reported written.
async fn put(cache: &Cache, writes: &[(String, i64)]) -> usize {
    let documents: Vec<String> = writes.iter().map(|(key, revision)| document(key, *revision)).collect();
    let entries: Vec<Entry<'_>> = writes
        .iter()
        .zip(&documents)
        .map(|((key, revision), document)| Entry { key, revision: *revision, version: *revision, document })
        .collect();
    cache.put_if_newer(&entries).await.expect("the write lands")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_of_many_entries_lands_every_one_and_keeps_the_newest_revision_of_each() {
    prism_testkit::init_logging();
    let redis =
        PrivateRedis::start().await.expect("a private Redis starts (see the message for what is missing)");
    let cache = connect(&redis).await;
    // Several script calls' worth (a call carries at most 200 entries).
    let keys: Vec<String> = (0..1_050).map(|i| format!("{PREFIX}{i:05}")).collect();

    let first: Vec<(String, i64)> = keys.iter().map(|key| (key.clone(), 2)).collect();
    assert_eq!(put(&cache, &first).await, keys.len(), "every new entry is written");

    // Every other key older than what is cached, the rest newer; and a key written twice in
    // one call list, older in the later call: the newer one must stay.
    let mut second: Vec<(String, i64)> =
        keys.iter().enumerate().map(|(i, key)| (key.clone(), if i % 2 == 0 { 1 } else { 3 })).collect();
    second.insert(0, (keys[1].clone(), 5));
    // The odd keys, `keys[1]` once (at 5; its 3 comes after and is older).
    let newer = keys.len() / 2;
    assert_eq!(put(&cache, &second).await, newer, "only entries newer than the cached ones are written");

    for (i, key) in keys.iter().enumerate() {
        let expected = match i {
            1 => 5,
            i if i % 2 == 0 => 2,
            _ => 3,
        };
        assert_eq!(
            cache.get(key).await.expect("the entry reads"),
            Some(Cached { revision: expected, version: expected, document: document(key, expected) }),
            "{key}"
        );
    }
}
