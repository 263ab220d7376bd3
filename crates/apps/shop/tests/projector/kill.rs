//! Workers killed with SIGKILL again and again while tens of thousands of events flow, with
//! three workers in the group, under both group protocols: nothing is lost, nothing applied
//! twice, every row and cache entry ends equal to the oracle, and nothing is dead-lettered.
//! A killed member's partitions reach the survivors once its session expires.
//!
//! That the kills interrupted work in flight is checked, not assumed: events a killed worker
//! had landed but not yet committed are delivered again to the next owner of their partition,
//! which skips them as duplicates; the workers' duplicate counters (read from each victim just
//! before its kill, and from the survivors at the end) must show such redeliveries.

use std::time::{Duration, Instant};

use crate::support::WorkerProcess;
use prism_testkit::kafka::{producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::{group_protocol_tests, GroupProtocol, TestEnv};
use rand::Rng;
use shop::testing::workload::Workload;

group_protocol_tests!(workers_killed_again_and_again_lose_and_duplicate_nothing => killed_again_and_again);

async fn killed_again_and_again(protocol: GroupProtocol) {
    prism_testkit::init_logging();
    let env =
        TestEnv::for_protocol(&shop_model::application(), protocol, &[]).await.expect("test environment");
    let events = Workload::generate(11, 20_000);

    // Offsets committed every 3 s rather than every second, and not when a worker caught up: a
    // kill almost always finds batches that landed but whose offsets were not committed yet,
    // which is what this test is about.
    let slow_commits = [
        ("PRISM__PROJECTOR__COMMIT_INTERVAL_MS", "3000"),
        ("PRISM__PROJECTOR__COMMIT_WHEN_CAUGHT_UP", "false"),
    ];
    let mut workers: Vec<WorkerProcess> =
        (0..3).map(|i| WorkerProcess::spawn(&env, &format!("w{i}"), &slow_commits)).collect();
    let publisher = {
        let (config, prefix, events) = (env.config.clone(), env.topic_prefix().to_owned(), events.clone());
        tokio::spawn(async move {
            let producer = producer(&config).expect("producer");
            // In slices, so kills land while events are still arriving.
            for chunk in events.chunks(1_000) {
                publish_events(&producer, &prefix, chunk).await.expect("publish");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };

    let started = Instant::now();
    let mut kills = 0;
    let mut rng = rand::rng();
    let mut duplicates_seen = 0.0;
    // Eight kills, and up to eight more while none has yet shown a redelivery: on a loaded
    // machine a run of kills can land only between commits, which proves nothing.
    while kills < 8 || (duplicates_seen == 0.0 && kills < 16) {
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2_500))).await;
        let victim = rng.random_range(0..workers.len());
        duplicates_seen += workers[victim].duplicates_skipped().await;
        workers[victim].kill().await;
        kills += 1;
        let name = format!("w{victim}-{kills}");
        workers[victim] = WorkerProcess::spawn(&env, &name, &slow_commits);
    }
    publisher.await.expect("publisher");
    eprintln!("{kills} kills in {:?}", started.elapsed());

    let summary = env
        .wait_for_oracle(
            &shop::testing::oracle::fold(&events),
            CacheCheck::Complete,
            Duration::from_secs(240),
        )
        .await;
    if summary.is_err() {
        for w in &workers {
            eprintln!("--- {} ---\n{}", w.name, w.log_tail());
        }
    }
    let summary = summary.expect("read models equal the oracle");
    eprintln!("{} events -> {summary:?} after {:?}", events.len(), started.elapsed());
    assert!(
        crate::support::dead_letter_counts(&env).await.is_empty(),
        "valid events must never be dead-lettered"
    );
    for w in &workers {
        duplicates_seen += w.duplicates_skipped().await;
    }
    assert!(
        duplicates_seen > 0.0,
        "no redelivered event was seen: the kills never interrupted landed-but-uncommitted work, so this run proved nothing"
    );
    eprintln!("{duplicates_seen} redelivered events skipped as duplicates");
    for w in &mut workers {
        assert!(
            w.terminate(Duration::from_secs(30)).await.is_some_and(|s| s.success()),
            "{} exits 0 on SIGTERM",
            w.name
        );
    }
}
