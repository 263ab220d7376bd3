//! Readiness reports a stalled worker: with events waiting and nothing landing for
//! `projector.stall_after_seconds` (here: the gate table locked by another session),
//! `/readyz`'s progress check fails; once the lock is gone
//! the backlog lands, the check passes again and the read models equal the oracle.

use std::time::{Duration, Instant};

use prism_runtime::Health;
use prism_testkit::kafka::{producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::workload::Workload;
use prism_testkit::TestEnv;

/// Waits until the `progress` readiness check is `want`; returns its detail.
async fn wait_for_progress(health: &Health, want: bool, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let snapshot = health.snapshot();
        if let Some(check) = snapshot.get("progress") {
            if check.ok == want {
                return check.detail.clone();
            }
        }
        assert!(Instant::now() < deadline, "progress check never became {want}: {snapshot:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_that_lands_nothing_while_events_wait_is_not_ready() {
    prism_testkit::init_logging();
    let env = TestEnv::with_overrides(&[("PRISM__PROJECTOR__STALL_AFTER_SECONDS", "2")])
        .await
        .expect("test environment");
    let mut config = env.config.clone();
    config.projector.listen = "127.0.0.1:0".into();
    let health = Health::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let projector = tokio::spawn(prism_projector::run(config, health.clone(), async {
        let _ = stopped.await;
    }));

    let producer = producer(&env.config).expect("producer");
    let events = Workload::generate(23, 600);
    let (first, second) = events.split_at(300);
    publish_events(&producer, env.topic_prefix(), first).await.expect("publish");
    env.wait_for_oracle(first, CacheCheck::Complete, Duration::from_secs(90))
        .await
        .expect("first part lands");
    wait_for_progress(&health, true, Duration::from_secs(30)).await;
    assert!(health.is_ready(), "ready while caught up: {:?}", health.snapshot());

    // Every batch writes gate rows: with the gate table locked, nothing can land.
    let mut blocker = env.pg().await.expect("pg");
    let lock = blocker.transaction().await.expect("begin");
    lock.batch_execute("LOCK TABLE projection_gate IN ACCESS EXCLUSIVE MODE").await.expect("lock the gate");
    publish_events(&producer, env.topic_prefix(), second).await.expect("publish");
    let reason = wait_for_progress(&health, false, Duration::from_secs(60)).await;
    assert!(reason.contains("lag") && reason.contains("nothing landed"), "{reason}");
    assert!(!health.is_ready(), "a stalled worker is not ready");

    lock.rollback().await.expect("release the gate");
    env.wait_for_oracle(&events, CacheCheck::Complete, Duration::from_secs(90))
        .await
        .expect("the backlog lands");
    wait_for_progress(&health, true, Duration::from_secs(30)).await;

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), projector)
        .await
        .expect("stops within 30s")
        .expect("task")
        .expect("clean exit");
}
