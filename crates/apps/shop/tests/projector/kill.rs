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
    // What each worker had applied at the last look. A kill takes a worker that applied events
    // since then: one that is landing batches, whose offsets (committed every 3 s) are likely
    // behind. A kill of an idle worker, or of one still joining while the group waits out a
    // dead member's session, interrupts nothing and would prove nothing.
    let mut applied_before = vec![0.0; workers.len()];
    let mut extra_events = Vec::new();
    let extra_producer = producer(&env.config).expect("producer");
    // Eight kills, and up to eight more while none has yet shown a redelivery.
    while kills < 8 || (duplicates_seen == 0.0 && kills < 16) {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "only {kills} kills in 3 minutes: the workers stopped applying events\n{}",
            workers.iter().map(|w| format!("--- {} ---\n{}", w.name, w.log_tail())).collect::<String>()
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(800..2_500))).await;
        let mut landing = Vec::new();
        for (index, worker) in workers.iter().enumerate() {
            let applied = worker.events_applied().await;
            if applied > applied_before[index] {
                landing.push(index);
            }
            applied_before[index] = applied;
        }
        if landing.is_empty() {
            // Published everything and applied it: publish more so the kills find work.
            let more = Workload::generate(11 + kills as u64 + 100, 1_000);
            publish_events(&extra_producer, env.topic_prefix(), &more).await.expect("publish");
            extra_events.extend(more);
            continue;
        }
        let victim = landing[rng.random_range(0..landing.len())];
        duplicates_seen += workers[victim].duplicates_skipped().await;
        workers[victim].kill().await;
        kills += 1;
        let name = format!("w{victim}-{kills}");
        workers[victim] = WorkerProcess::spawn(&env, &name, &slow_commits);
        applied_before[victim] = 0.0;
    }
    publisher.await.expect("publisher");
    eprintln!("{kills} kills in {:?}", started.elapsed());
    let events: Vec<_> = events.into_iter().chain(extra_events).collect();

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
