//! Workers killed with SIGKILL again and again while the Python producer writes events, three
//! `telemetry-projector` processes in the group, under both group protocols: nothing is lost,
//! nothing applied twice (a double-applied reading would show in `reading_count` and the
//! hourly sums), every row and cache entry ends equal to the oracle, nothing is dead-lettered,
//! and the survivors exit 0 on SIGTERM.

use std::time::{Duration, Instant};

use prism_testkit::oracle::CacheCheck;
use prism_testkit::{group_protocol_tests, GroupProtocol, TestEnv};

use crate::oracle;
use crate::support::{dead_letters, PythonProducer, WorkerProcess, Workload};

group_protocol_tests!(workers_killed_again_and_again_lose_and_duplicate_nothing => killed_again_and_again);

/// How many times a worker is killed.
const KILLS: usize = 8;

async fn killed_again_and_again(protocol: GroupProtocol) {
    prism_testkit::init_logging();
    let started = Instant::now();
    let app = telemetry::application();
    let env = TestEnv::for_protocol(&app, protocol, &[]).await.expect("test environment");

    let mut workers: Vec<WorkerProcess> =
        (0..3).map(|i| WorkerProcess::spawn(&env, &format!("w{i}"))).collect();
    // About 24 s of traffic, so the kills land while events arrive.
    let mut producer = PythonProducer::spawn(&env, "kill", &Workload::new(150, 10, 40, 21).rate(250));

    // Deterministic victims and pauses (a pseudo-random walk): reproducible runs.
    let mut kills = 0;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    while kills < KILLS {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        tokio::time::sleep(Duration::from_millis(1_500 + (state >> 33) % 1_500)).await;
        let victim = ((state >> 17) % workers.len() as u64) as usize;
        workers[victim].kill().await;
        kills += 1;
        workers[victim] = WorkerProcess::spawn(&env, &format!("w{victim}-{kills}"));
    }
    let kills_took = started.elapsed();
    let traffic_outlived_kills = producer.running();
    let produced = producer.finish(Duration::from_secs(60)).await;
    eprintln!(
        "{kills} kills in {:.1}s, {} events produced in {:.1}s",
        kills_took.as_secs_f64(),
        produced.events.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        traffic_outlived_kills,
        "the producer finished before the last kill: make the traffic last longer"
    );

    let expected = oracle::fold(&produced.events);
    let summary = env.wait_for_oracle(&expected, CacheCheck::Complete, Duration::from_secs(60)).await;
    if summary.is_err() {
        for w in &workers {
            eprintln!("--- {} ---\n{}", w.name, w.log_tail());
        }
    }
    let summary = summary.expect("read models equal the oracle");
    let dead = dead_letters(&env).await;
    assert!(dead.is_empty(), "valid events must never be dead-lettered: {dead:?}");
    for w in &mut workers {
        let status = w.terminate(Duration::from_secs(30)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{} exits 0 on SIGTERM ({status:?}):\n{}",
            w.name,
            w.log_tail()
        );
    }
    eprintln!(
        "{:?}: {} events -> {summary:?} in {:.1}s",
        protocol,
        produced.events.len(),
        started.elapsed().as_secs_f64()
    );
}
