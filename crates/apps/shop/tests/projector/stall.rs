//! A partition that cannot make progress shows, whatever holds it: here another session holds
//! an uncommitted gate row of one order, so every batch of that order's partition waits on it
//! (as it would behind a poison row, a lock or a retried failure), while the other partitions
//! move on. The partition never committed an offset. Within `projector.stall_after_seconds`:
//!
//! - `/readyz`'s progress check fails and names the partition (a worker whose other
//!   partitions land is still stalled);
//! - `prism_projector_stalled_partitions` is 1 and the partition's lag series shows its
//!   backlog although it has no committed offset;
//!
//! everything else lands meanwhile; once the row is released the backlog lands, readiness
//! returns, and the read models equal the oracle.

use std::time::{Duration, Instant};

use prism_runtime::metric_names as m;
use prism_runtime::Health;
use prism_testkit::kafka::{producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;
use shop::testing::workload::Workload;
use shop_model::aggregates::ORDER;

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

/// The value of the first sample of `name` whose labels contain every one of `labels`.
fn gauge(name: &str, labels: &[&str]) -> Option<f64> {
    prism_runtime::telemetry::install()
        .render()
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_that_lands_nothing_shows_in_readiness_metrics_and_lag() {
    prism_testkit::init_logging();
    let env = TestEnv::with_overrides(
        &shop_model::application(),
        &[("PRISM__PROJECTOR__STALL_AFTER_SECONDS", "3")],
    )
    .await
    .expect("test environment");
    let events = Workload::generate(23, 1_200);
    let victim = events.iter().find(|e| e.meta.aggregate_type == ORDER).expect("an order").meta.aggregate_id;

    // Another session's uncommitted gate row for the victim: the projector's gate update of
    // that order waits for it, and with it every batch of the order's partition.
    let mut blocker = env.pg().await.expect("pg");
    let hold = blocker.transaction().await.expect("begin");
    hold.execute(
        "INSERT INTO projection_gate (projection, aggregate_type, aggregate_id, last_version)
         VALUES ('order_summary_g1', 'order', $1, 0)",
        &[&victim],
    )
    .await
    .expect("hold the victim's gate row");

    publish_events(&producer(&env.config).expect("producer"), env.topic_prefix(), &events)
        .await
        .expect("publish");
    let mut config = env.config.clone();
    config.projector.listen = "127.0.0.1:0".into();
    let group = prism_projector::group_id(&config);
    let health = Health::new();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let projector =
        tokio::spawn(prism_projector::run(config, shop_model::application(), health.clone(), async {
            let _ = stopped.await;
        }));

    let reason = wait_for_progress(&health, false, Duration::from_secs(60)).await;
    assert!(!health.is_ready(), "a worker with a stalled partition is not ready");
    let orders = ORDER.topic(env.topic_prefix());
    assert!(reason.contains(&format!("{orders}/")) && reason.contains("nothing landed"), "{reason}");
    let stalled: Vec<&str> = reason.trim_start_matches("stalled partitions: ").split(" | ").collect();
    assert_eq!(stalled.len(), 1, "only the victim's partition is stalled: {reason}");
    let partition: i32 = stalled[0]
        .split(':')
        .next()
        .and_then(|id| id.rsplit('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a partition in {reason}"));

    // In the metrics: one stalled partition, and its backlog in the lag series although it
    // never committed.
    let group_label = format!("group=\"{group}\"");
    let partition_labels =
        [group_label.as_str(), &format!("topic=\"{orders}\""), &format!("partition=\"{partition}\"")];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stalled_gauge = gauge(m::PROJECTOR_STALLED_PARTITIONS, &[&group_label]);
        let lag = gauge(m::PROJECTOR_LAG_MESSAGES, &partition_labels);
        if stalled_gauge == Some(1.0) && lag.is_some_and(|lag| lag > 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stalled gauge {stalled_gauge:?} and lag {lag:?} of {orders}/{partition} never showed the stall"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let committed =
        prism_testkit::kafka::committed_offsets(&env.config, &group, std::slice::from_ref(&orders))
            .await
            .expect("committed");
    assert!(
        !committed.contains_key(&(orders.clone(), partition)),
        "the stalled partition never committed: {committed:?}"
    );

    // Everything else moves on meanwhile: other topics commit to their ends.
    let others: Vec<String> = env.event_topics().into_iter().filter(|t| *t != orders).collect();
    let ends = prism_testkit::kafka::end_offsets(&env.config, &others).await.expect("ends");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed =
            prism_testkit::kafka::committed_offsets(&env.config, &group, &others).await.expect("committed");
        if ends.iter().all(|(tp, end)| committed.get(tp) == Some(end)) {
            break;
        }
        assert!(Instant::now() < deadline, "the other partitions stalled too: {committed:?} of {ends:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(!health.is_ready(), "still not ready while the partition is stuck");

    hold.rollback().await.expect("release the gate row");
    env.wait_for_oracle(&shop::testing::oracle::fold(&events), CacheCheck::Complete, Duration::from_secs(90))
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
