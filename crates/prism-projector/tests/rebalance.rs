//! Workers joining and leaving the group while events flow (cooperative rebalancing hands
//! partitions over), each leaving worker stopped with SIGTERM: it exits 0 within the
//! shutdown deadline, having committed what it landed (invariant 6). At the end the group's
//! committed offsets are the end of every topic and the read models equal the oracle.

mod common;

use std::time::Duration;

use common::{dead_letter_counts, WorkerProcess};
use prism_testkit::kafka::{committed_offsets, end_offsets, producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::workload::Workload;
use prism_testkit::TestEnv;

const SHUTDOWN_DEADLINE: &[(&str, &str)] = &[("PRISM__PROJECTOR__SHUTDOWN_DEADLINE_MS", "5000")];

async fn stop(worker: &mut WorkerProcess) {
    let status = worker.terminate(Duration::from_secs(20)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{} must exit 0 on SIGTERM within the deadline, got {status:?}\n{}",
        worker.name,
        worker.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_joining_and_leaving_hand_over_cleanly() {
    prism_testkit::init_logging();
    let env = TestEnv::new().await.expect("test environment");
    let producer = producer(&env.config).expect("producer");
    let events = Workload::generate(71, 12_000);
    let chunks: Vec<&[prism_events::Event]> = events.chunks(2_000).collect();

    let mut w1 = WorkerProcess::spawn(&env, "w1", SHUTDOWN_DEADLINE);
    publish_events(&producer, env.topic_prefix(), chunks[0]).await.expect("publish");
    let mut w2 = WorkerProcess::spawn(&env, "w2", SHUTDOWN_DEADLINE);
    publish_events(&producer, env.topic_prefix(), chunks[1]).await.expect("publish");
    let mut w3 = WorkerProcess::spawn(&env, "w3", SHUTDOWN_DEADLINE);
    publish_events(&producer, env.topic_prefix(), chunks[2]).await.expect("publish");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(&mut w1).await;
    publish_events(&producer, env.topic_prefix(), chunks[3]).await.expect("publish");
    let mut w4 = WorkerProcess::spawn(&env, "w4", SHUTDOWN_DEADLINE);
    publish_events(&producer, env.topic_prefix(), chunks[4]).await.expect("publish");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop(&mut w2).await;
    publish_events(&producer, env.topic_prefix(), chunks[5]).await.expect("publish");

    env.wait_for_oracle(&events, CacheCheck::Complete, Duration::from_secs(180)).await.expect("oracle");
    assert!(dead_letter_counts(&env).await.is_empty());

    stop(&mut w3).await;
    stop(&mut w4).await;
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
