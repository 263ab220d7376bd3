//! Workers joining and leaving the group while events flow (incremental rebalancing hands
//! partitions over, under both group protocols), each leaving worker stopped with SIGTERM: it
//! exits 0 within the shutdown deadline, having committed what it landed (invariant 6).
//! Periodic and caught-up commits are off, so only the commits made on revocation and on SIGTERM can move
//! the group's offsets: at the end they are the end of every topic, and the read models equal
//! the oracle.

use std::time::Duration;

use crate::support::{dead_letter_counts, WorkerProcess};
use prism_testkit::kafka::{committed_offsets, end_offsets, producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::{group_protocol_tests, GroupProtocol, TestEnv};
use shop::testing::workload::Workload;

/// A short shutdown deadline, and no periodic commits: whatever is committed at the end was
/// committed when a partition was revoked or a worker stopped (invariant 6), so a worker that
/// forgot to commit on the way out leaves its partitions behind the end.
const WORKER_SETTINGS: &[(&str, &str)] = &[
    ("PRISM__PROJECTOR__SHUTDOWN_DEADLINE_MS", "5000"),
    ("PRISM__PROJECTOR__COMMIT_INTERVAL_MS", "3600000"),
    ("PRISM__PROJECTOR__COMMIT_WHEN_CAUGHT_UP", "false"),
];

/// Stops a worker with SIGTERM; returns the duplicates it skipped while it ran.
async fn stop(worker: &mut WorkerProcess) -> f64 {
    let duplicates = worker.duplicates_skipped().await;
    let status = worker.terminate(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{} must exit 0 on SIGTERM within the deadline, got {status:?}\n{}",
        worker.name,
        worker.log_tail()
    );
    duplicates
}

group_protocol_tests!(workers_joining_and_leaving_hand_over_cleanly => join_and_leave);

async fn join_and_leave(protocol: GroupProtocol) {
    prism_testkit::init_logging();
    let env =
        TestEnv::for_protocol(&shop_model::application(), protocol, &[]).await.expect("test environment");
    let producer = producer(&env.config).expect("producer");
    let events = Workload::generate(71, 12_000);
    let chunks: Vec<&[prism_events::Event]> = events.chunks(2_000).collect();

    let mut w1 = WorkerProcess::spawn(&env, "w1", WORKER_SETTINGS);
    publish_events(&producer, env.topic_prefix(), chunks[0]).await.expect("publish");
    let mut w2 = WorkerProcess::spawn(&env, "w2", WORKER_SETTINGS);
    publish_events(&producer, env.topic_prefix(), chunks[1]).await.expect("publish");
    let mut w3 = WorkerProcess::spawn(&env, "w3", WORKER_SETTINGS);
    publish_events(&producer, env.topic_prefix(), chunks[2]).await.expect("publish");
    // Stopped right after a chunk arrived: batches are in flight as it leaves.
    let mut duplicates = stop(&mut w1).await;
    publish_events(&producer, env.topic_prefix(), chunks[3]).await.expect("publish");
    let mut w4 = WorkerProcess::spawn(&env, "w4", WORKER_SETTINGS);
    publish_events(&producer, env.topic_prefix(), chunks[4]).await.expect("publish");
    duplicates += stop(&mut w2).await;
    publish_events(&producer, env.topic_prefix(), chunks[5]).await.expect("publish");

    env.wait_for_oracle(
        &shop::testing::oracle::fold(&events),
        CacheCheck::Complete,
        Duration::from_secs(180),
    )
    .await
    .expect("oracle");
    assert!(dead_letter_counts(&env).await.is_empty());

    duplicates += stop(&mut w3).await;
    duplicates += stop(&mut w4).await;
    // Every handover started the new owner exactly where the old one had landed: had a
    // leaving or revoked worker not committed what it landed, its successor would have read
    // those events again and skipped them as duplicates. (No event of the workload repeats.)
    assert_eq!(
        duplicates, 0.0,
        "events delivered twice across handovers: a commit on the way out was missing"
    );
    // Everything landed was committed on the way out: the group resumes exactly at the end.
    let topics = env.event_topics();
    let ends = end_offsets(&env.config, &topics).await.expect("end offsets");
    let committed = committed_offsets(&env.config, &prism_projector::group_id(&env.config), &topics)
        .await
        .expect("committed");
    for (tp, end) in &ends {
        assert_eq!(
            committed.get(tp).copied().unwrap_or(0),
            *end,
            "committed offset of {tp:?} after all workers left"
        );
    }
}
