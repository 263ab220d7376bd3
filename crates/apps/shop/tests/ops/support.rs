//! Shared by the operations tests: the shop's environment, running the `prismctl` binary
//! against it (or any set of `PRISM__*` variables), and waits on observable state — the
//! projector group's committed offsets, the projector's metrics.

#![allow(dead_code)]

use std::time::Duration;

use prism_projections::Application;
use prism_testkit::TestEnv;

/// The shop as the engine runs it.
pub fn shop() -> Application {
    shop_model::application()
}

pub use prism_testkit::prismctl::{
    binary as prismctl_binary, command, run as prismctl, run_with as prismctl_with, with_var,
};

/// Waits until the projector group has committed the end of every event topic.
pub async fn wait_caught_up(env: &TestEnv, timeout: Duration) {
    let group = prism_kafka::admin::projector_group_id(&env.config);
    let topics = env.event_topics();
    let ends = prism_testkit::kafka::end_offsets(&env.config, &topics).await.expect("end offsets");
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let committed =
            prism_testkit::kafka::committed_offsets(&env.config, &group, &topics).await.expect("committed");
        if ends.iter().all(|(tp, end)| committed.get(tp).copied().unwrap_or(0) >= *end) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never caught up: {committed:?} / {ends:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of the projector's duplicate-skip counters, as its metrics render them.
pub fn duplicates_skipped() -> f64 {
    let text = prism_runtime::telemetry::install().render();
    text.lines()
        .filter(|l| {
            l.starts_with("prism_projector_events_skipped_total") && l.contains("reason=\"duplicate\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until a projector (this process's, with its metrics) has left its group: the
/// broker describes the group without members.
pub async fn wait_group_empty(env: &TestEnv, group: &str, timeout: Duration) {
    use prism_kafka::admin::{group_membership, GroupMembership};
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let membership =
            group_membership(&env.config.kafka, group, Duration::from_secs(10)).await.expect("membership");
        if matches!(membership, GroupMembership::Empty { .. }) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "group {group} still has members: {membership:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
