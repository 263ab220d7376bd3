//! Group membership as Apache Kafka runs it, under both group protocols, with projector
//! workers as real processes:
//!
//! - a SIGKILLed worker's partitions move to the survivor within the session timeout (the
//!   classic group's `projector.session_timeout_ms`, the KIP-848 group's broker setting), and
//!   the events published meanwhile all land;
//! - a worker restarted with the same `projector.group_instance_id` (static membership) gets
//!   exactly its partitions back, and the other worker keeps its own without a revocation.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::WorkerProcess;
use prism_testkit::kafka::{producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::{group_protocol_tests, GroupProtocol, TestEnv};
use shop::testing::workload::Workload;

/// 4 topics of 4 partitions.
const PARTITIONS: f64 = 16.0;
/// The classic session timeout the workers are given; the dev broker's KIP-848 session
/// timeout is 10 s (ops/kafka/server.properties.in).
const CLASSIC_SESSION_MS: &str = "8000";
const CONSUMER_SESSION: Duration = Duration::from_secs(10);

async fn assigned(worker: &WorkerProcess) -> f64 {
    worker.metric_sum("prism_projector_assigned_partitions", "group=").await
}

async fn revocations(worker: &WorkerProcess) -> f64 {
    worker.metric_sum("prism_projector_rebalances_total", "kind=\"revoke\"").await
}

/// Waits until `done` holds for the workers' assigned-partition counts.
async fn wait_assigned(
    workers: &[&WorkerProcess],
    timeout: Duration,
    done: impl Fn(&[f64]) -> bool,
) -> Vec<f64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut counts = Vec::new();
        for worker in workers {
            counts.push(assigned(worker).await);
        }
        if done(&counts) {
            return counts;
        }
        if tokio::time::Instant::now() > deadline {
            let logs: Vec<String> =
                workers.iter().map(|w| format!("--- {} ---\n{}", w.name, w.log_tail())).collect();
            panic!("assignment not reached within {timeout:?}: {counts:?}\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

group_protocol_tests!(a_killed_workers_partitions_move_to_the_survivor_within_the_session_timeout => kill_moves_partitions);

async fn kill_moves_partitions(protocol: GroupProtocol) {
    prism_testkit::init_logging();
    let env =
        TestEnv::for_protocol(&shop_model::application(), protocol, &[]).await.expect("test environment");
    let session = match protocol {
        GroupProtocol::Classic => Duration::from_millis(CLASSIC_SESSION_MS.parse().expect("ms")),
        GroupProtocol::Consumer => CONSUMER_SESSION,
    };
    let settings = [("PRISM__PROJECTOR__SESSION_TIMEOUT_MS", CLASSIC_SESSION_MS)];
    let mut doomed = WorkerProcess::spawn(&env, "doomed", &settings);
    let survivor = WorkerProcess::spawn(&env, "survivor", &settings);
    wait_assigned(&[&doomed, &survivor], Duration::from_secs(60), |c| {
        c[0] > 0.0 && c[1] > 0.0 && c[0] + c[1] == PARTITIONS
    })
    .await;

    doomed.kill().await;
    let killed_at = Instant::now();
    let events = Workload::generate(17, 2_000);
    publish_events(&producer(&env.config).expect("producer"), env.topic_prefix(), &events)
        .await
        .expect("publish");
    wait_assigned(&[&survivor], session + Duration::from_secs(30), |c| c[0] == PARTITIONS).await;
    let moved_after = killed_at.elapsed();
    eprintln!(
        "{protocol:?}: partitions of the killed worker moved after {moved_after:?} (session {session:?})"
    );
    assert!(
        moved_after <= session + Duration::from_secs(6),
        "the killed worker's partitions moved only after {moved_after:?}, session timeout {session:?}"
    );
    env.wait_for_oracle(
        &shop::testing::oracle::fold(&events),
        CacheCheck::Complete,
        Duration::from_secs(120),
    )
    .await
    .expect("oracle");
}

/// The partitions a worker holds, from its log: every `partitions assigned` adds its list,
/// every `partitions revoked` removes its list.
fn held_from_log(log: &str) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    for line in log.lines() {
        let Some(list) = line.split("partitions=").nth(1) else { continue };
        let partitions = list.split_whitespace().map(str::to_owned);
        if line.contains("partitions assigned") {
            held.extend(partitions);
        } else if line.contains("partitions revoked") {
            for partition in partitions {
                held.remove(&partition);
            }
        }
    }
    held
}

group_protocol_tests!(a_static_member_restarted_gets_its_partitions_back_without_revoking_the_others => static_restart);

async fn static_restart(protocol: GroupProtocol) {
    prism_testkit::init_logging();
    let env =
        TestEnv::for_protocol(&shop_model::application(), protocol, &[]).await.expect("test environment");
    let settings = |instance: &'static str| {
        [("PRISM__PROJECTOR__GROUP_INSTANCE_ID", instance), ("PRISM__PROJECTOR__SESSION_TIMEOUT_MS", "30000")]
    };
    let mut first = WorkerProcess::spawn(&env, "static-a", &settings("worker-a"));
    let other = WorkerProcess::spawn(&env, "static-b", &settings("worker-b"));
    wait_assigned(&[&first, &other], Duration::from_secs(60), |c| {
        c[0] > 0.0 && c[1] > 0.0 && c[0] + c[1] == PARTITIONS
    })
    .await;
    // Let the group settle: the assignment must be the final one before the restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = first.full_log();
    assert!(!log.contains('\u{1b}'), "a log written to a file carries no terminal colour codes");
    let held_before = held_from_log(&log);
    let other_held = held_from_log(&other.full_log());
    let other_revocations = revocations(&other).await;
    assert_eq!(held_before.len() + other_held.len(), PARTITIONS as usize, "{held_before:?} / {other_held:?}");

    let status = first.terminate(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "static-a exits 0 on SIGTERM: {status:?}");
    let restarted = WorkerProcess::spawn(&env, "static-a-again", &settings("worker-a"));
    wait_assigned(&[&restarted], Duration::from_secs(30), |c| c[0] == held_before.len() as f64).await;
    let held_after = held_from_log(&restarted.full_log());
    assert_eq!(held_after, held_before, "the restarted static member got exactly its partitions back");
    // A little longer, so a late rebalance would show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        revocations(&other).await,
        other_revocations,
        "the other member was never revoked\n{}",
        other.log_tail()
    );
    assert_eq!(held_from_log(&other.full_log()), other_held, "the other member kept its partitions");
    assert_eq!(assigned(&restarted).await + assigned(&other).await, PARTITIONS);

    let events = Workload::generate(23, 1_000);
    publish_events(&producer(&env.config).expect("producer"), env.topic_prefix(), &events)
        .await
        .expect("publish");
    env.wait_for_oracle(
        &shop::testing::oracle::fold(&events),
        CacheCheck::Complete,
        Duration::from_secs(120),
    )
    .await
    .expect("oracle");
}
