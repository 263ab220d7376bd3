//! The projector end to end over the real broker, PostgreSQL and Redis: a realistic
//! workload produced into the topics lands in every read model and cache entry exactly as
//! the oracle folds it, and SIGTERM-style shutdown returns cleanly.

use std::time::{Duration, Instant};

use prism_runtime::metric_names as m;
use prism_runtime::Health;
use prism_testkit::kafka::{producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;
use shop::testing::workload::Workload;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_workload_lands_exactly_in_postgres_and_redis() {
    prism_testkit::init_logging();
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let events = Workload::generate(1, 3000);
    publish_events(&producer(&env.config).expect("producer"), env.topic_prefix(), &events)
        .await
        .expect("publish");

    let mut config = env.config.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    config.projector.listen = format!("127.0.0.1:{port}");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let mut worker =
        tokio::spawn(prism_projector::run(config, shop_model::application(), Health::new(), async {
            let _ = stopped.await;
        }));

    let expected = shop::testing::oracle::fold(&events);
    let summary = tokio::select! {
        summary = env.wait_for_oracle(&expected, CacheCheck::Complete, Duration::from_secs(120)) => {
            summary.expect("read models equal the oracle")
        }
        exit = &mut worker => panic!("the projector stopped early: {exit:?}"),
    };
    eprintln!("{} events -> {summary:?} in {:?}", events.len(), started.elapsed());
    assert!(summary.rows > 500, "the workload filled the read models: {summary:?}");

    // The operations endpoints: alive, ready, and every projector metric exported.
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{base}/healthz")).send().await.expect("healthz").status(), 200);
    let ready = http.get(format!("{base}/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics =
            http.get(format!("{base}/metrics")).send().await.expect("metrics").text().await.expect("text");
        let missing: Vec<&str> = [
            m::PROJECTOR_EVENTS_APPLIED,
            m::PROJECTOR_BATCH_DURATION,
            m::PROJECTOR_BATCH_SIZE,
            m::PROJECTOR_REBALANCES,
            m::PROJECTOR_ASSIGNED_PARTITIONS,
            m::PROJECTOR_LAG_MESSAGES,
            m::PROJECTOR_LAG_SECONDS,
            m::PROJECTOR_LAST_PROGRESS,
        ]
        .into_iter()
        .filter(|name| !metrics.contains(name))
        .collect();
        if missing.is_empty() {
            assert!(metrics.contains("projection=\"order_summary_g1\""), "per read model labels");
            // Every landed batch's time, step by step (an attempt retried after a transient
            // failure is timed in the steps it got through as well).
            let batches = sample(&metrics, &format!("{}_count", m::PROJECTOR_BATCH_DURATION)).unwrap_or(0.0);
            assert!(batches > 0.0, "batches counted");
            for phase in ["replays", "decode", "postgres", "cache", "dead_letters"] {
                let timed =
                    sample(&metrics, &format!("{}_count{{phase=\"{phase}\"}}", m::PROJECTOR_BATCH_PHASE));
                assert!(
                    timed.is_some_and(|n| n >= batches),
                    "{batches} batches, timed in phase {phase}: {timed:?}"
                );
            }
            break;
        }
        // Lag arrives with librdkafka's statistics, every few seconds.
        assert!(Instant::now() < deadline, "metrics not exported: {missing:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("shutdown within the deadline")
        .expect("task")
        .expect("clean exit");
}

/// The value of the first Prometheus sample whose name and labels start with `prefix`.
fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(prefix) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
