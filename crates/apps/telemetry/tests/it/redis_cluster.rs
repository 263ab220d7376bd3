//! The pipeline with its cache on a Redis Cluster (three masters, three replicas of Debian's
//! redis-server, `redis.mode = "cluster"`): the Python producer writes while an embedded
//! projector projects; a master that holds cache entries is killed with SIGKILL mid-run and
//! its replica promoted. Afterwards every row in PostgreSQL and every cache entry on the
//! cluster equals the oracle — none newer than PostgreSQL, none stale, none missing — and
//! the projector is still running. Then the query service, on the same cluster, serves every
//! device from PostgreSQL after the cache is emptied, refills the cluster, and serves them
//! again.
//!
//! Why none may be missing or stale: a projector's cache write counts as done only once a
//! replica of the written master acknowledged it (`redis.cluster_replica_acks = 1`), and a
//! write that did not (the master died first) fails and is retried, landing on the promoted
//! replica. So the killed master takes nothing with it that the projector thinks is written.
//!
//! The test kit's oracle check reads one Redis node; here it runs on every master (each holds
//! its own slots' keys), checking the entries present there, and the entries found on all
//! masters together must be as many as the oracle has rows: every entry present, each right.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use prism_projections::{ProjectionInstance, ReadModel};
use prism_testkit::oracle::{check_expected, normalize, CacheCheck, Expected};
use prism_testkit::private::redis_cluster::PrivateRedisCluster;
use prism_testkit::{Services, TestEnv};
use serde_json::Value;

use crate::oracle;
use crate::support::{dead_letters, PythonProducer, Workload, FAST_FAILOVER};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pipeline_on_a_redis_cluster_loses_nothing_when_a_master_fails_over() {
    prism_testkit::init_logging();
    let started = Instant::now();
    let mut cluster = PrivateRedisCluster::start()
        .await
        .expect("a private Redis Cluster starts (see the message for what is missing)");
    let app = telemetry::application();
    let services = Services { redis: cluster.seed_url(), ..Services::from_env() };
    let seeds = format!("[\"{}\", \"{}\"]", cluster.url(1), cluster.url(2));
    let mut overrides =
        vec![("PRISM__REDIS__MODE", "cluster"), ("PRISM__REDIS__CLUSTER_SEEDS", seeds.as_str())];
    overrides.extend_from_slice(FAST_FAILOVER);
    let env = TestEnv::on(&app, services, &overrides).await.expect("test environment on the cluster");
    let cache_pattern = format!("{}*", prism_testkit::env::escape_glob(&env.config.redis.key_prefix));

    let projector = prism_projector::Embedded::start(env.config.clone(), app.clone());
    // About 16 s of traffic, so the failover happens while events arrive.
    let mut producer = PythonProducer::spawn(&env, "redis-cluster", &Workload::new(120, 8, 40, 31).rate(300));

    // Kill a master once the projector has written entries to it.
    let victim = cluster.masters().await.expect("masters")[0];
    let replica = cluster.replica_of(victim).await.expect("its replica");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while keys_on_node(&cluster, victim, &cache_pattern).await.len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the projector wrote no cache entries to master {victim}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.kill(victim).await.expect("SIGKILL the master");
    let killed_at = started.elapsed();
    cluster.wait_for_promotion(replica).await.expect("its replica takes over");
    let promoted_at = started.elapsed();
    let traffic_outlived_failover = producer.running();
    let produced = producer.finish(Duration::from_secs(90)).await;
    eprintln!(
        "master {victim} killed at {:.1}s, replica {replica} promoted at {:.1}s, {} events produced by {:.1}s",
        killed_at.as_secs_f64(),
        promoted_at.as_secs_f64(),
        produced.events.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        traffic_outlived_failover,
        "the producer finished before the failover: make the traffic last longer"
    );

    let expected = oracle::fold(&produced.events);
    let cached = wait_for_oracle_on_cluster(&env, &cluster, &expected, Duration::from_secs(90)).await;
    assert_eq!(cached, 120, "one cached device_status per device");
    assert!(!projector.is_finished(), "the projector is still running");
    let dead = dead_letters(&env).await;
    assert!(dead.is_empty(), "valid events must never be dead-lettered: {dead:?}");
    projector.stop(Duration::from_secs(30)).await.expect("the projector stops cleanly");

    // The query side on the cluster: misses (the cache emptied on every master) go to
    // PostgreSQL and refill the cluster; then the same reads come from the cache.
    for master in cluster.masters().await.expect("masters") {
        delete_on_node(&cluster, master, &cache_pattern).await;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let service = tokio::spawn(prism_query::serve(
        env.config.clone(),
        app.clone(),
        telemetry::query::routes(),
        listener,
        async {
            let _ = stopped.await;
        },
    ));
    let http = reqwest::Client::new();
    let devices = &expected.rows["device_status"];
    for round in ["from PostgreSQL", "from the cache"] {
        for (id, row) in devices {
            let url = format!("{base}/read-models/device_status/{id}");
            let answer = http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
            assert_eq!(answer.status().as_u16(), 200, "device {id} {round}");
            let body: Value = answer.json().await.expect("JSON");
            assert_eq!(normalize(&body), normalize(row), "device {id} {round}");
        }
        let refilled = wait_for_oracle_on_cluster(&env, &cluster, &expected, Duration::from_secs(10)).await;
        assert_eq!(refilled, devices.len(), "every read device is cached on the cluster again ({round})");
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), service)
        .await
        .expect("stops")
        .expect("task")
        .expect("clean exit");
    eprintln!(
        "{} events, failover and query reads in {:.1}s",
        produced.events.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Waits until PostgreSQL equals `expected` and the cache entries on every master of the
/// cluster, together, are exactly the oracle's cached rows; returns how many there are.
/// Panics with the last difference after `timeout`.
async fn wait_for_oracle_on_cluster(
    env: &TestEnv,
    cluster: &PrivateRedisCluster,
    expected: &Expected,
    timeout: Duration,
) -> usize {
    let client = env.pg().await.expect("postgres");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let targets: Vec<(ProjectionInstance, &ReadModel)> =
            env.active_targets().await.expect("active generations");
        let want: usize = targets
            .iter()
            .filter(|(_, model)| model.cache_kind().is_some())
            .map(|(instance, _)| expected.rows.get(instance.projection).map_or(0, |rows| rows.len()))
            .sum();
        let mut problems = Vec::new();
        let mut found = 0;
        for master in cluster.masters().await.expect("masters") {
            // Each master holds only its slots' entries: check those present, count them.
            match check_expected(
                expected,
                &client,
                &node_url(cluster, master),
                &env.config.redis.key_prefix,
                &targets,
                CacheCheck::PresentOnly,
            )
            .await
            .expect("the oracle check runs")
            {
                Ok(summary) => found += summary.cache_entries,
                Err(diff) => problems.push(format!("master {master}: {diff}")),
            }
        }
        if problems.is_empty() && found == want {
            return found;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!(
                "the read models and the cluster's cache differ from the oracle after {timeout:?}: {found} of {want} \
                 cache entries present\n{}",
                problems.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn node_url(cluster: &PrivateRedisCluster, node: usize) -> String {
    cluster.url(node)
}

/// Keys matching `pattern` on node `node` itself.
async fn keys_on_node(cluster: &PrivateRedisCluster, node: usize, pattern: &str) -> BTreeSet<String> {
    cluster.keys_on_node(node, pattern).await.expect("SCAN on a cluster node")
}

/// Deletes the keys matching `pattern` on node `node` (each key is in one of its slots).
async fn delete_on_node(cluster: &PrivateRedisCluster, node: usize, pattern: &str) {
    let keys = keys_on_node(cluster, node, pattern).await;
    let mut connection = cluster.node(node).await.expect("node connection");
    for key in keys {
        let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut connection).await.expect("DEL");
    }
}
