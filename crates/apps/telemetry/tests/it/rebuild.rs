//! A blue/green rebuild of `device_status` under live traffic, with the generic `prismctl`
//! (no telemetry code in it) as a child process: the application's running worker builds
//! generation 2 (prismctl has no folds), prismctl verifies it at a common position, switches
//! and retires generation 1, while the Python producer keeps writing. Afterwards generation 2
//! and its cache equal the oracle's fold of everything produced — before, during and after the
//! rebuild — and generation 1's table, gate rows and cache keys are gone.

use std::time::{Duration, Instant};

use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;
use telemetry::read_models::{DEVICE_CACHE_KIND, DEVICE_STATUS, SITE_HOURLY_READINGS};

use crate::oracle;
use crate::support::{dead_letters, wait_for_oracle_at_active, PythonProducer, Workload};

/// Quick commits and short sessions, so positions are visible soon.
const OVERRIDES: &[(&str, &str)] = &[
    ("PRISM__PROJECTOR__COMMIT_INTERVAL_MS", "200"),
    ("PRISM__PROJECTOR__SESSION_TIMEOUT_MS", "8000"),
    ("PRISM__PROJECTOR__RETRY_MAX_BACKOFF_MS", "1000"),
];

/// Runs prismctl to the end; returns (success, stdout + stderr).
async fn prismctl(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let run = prism_testkit::prismctl::run(env, args).await;
    (run.ok(), format!("{}{}", run.stdout, run.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_rebuild_of_device_status_under_live_traffic_switches_and_equals_the_oracle() {
    prism_testkit::init_logging();
    // Built (if needed) before the clock starts.
    prism_testkit::prismctl::binary().await;
    let started = Instant::now();
    let app = telemetry::application();
    let env = TestEnv::with_overrides(&app, OVERRIDES).await.expect("test environment");

    // A projected history first, with the live worker running (following the active generation,
    // and building the generations blue/green rebuilds register).
    let before = PythonProducer::spawn(&env, "history", &Workload::new(40, 6, 30, 31))
        .finish(Duration::from_secs(60))
        .await;
    let live = prism_projector::Embedded::start(env.config.clone(), app.clone());
    env.wait_for_oracle(&oracle::fold(&before.events), CacheCheck::Complete, Duration::from_secs(60))
        .await
        .expect("the history is projected");

    // Live traffic (other devices, same sites) during the whole rebuild: enough for three
    // minutes at this rate, stopped once the rebuild is done.
    let mut traffic = PythonProducer::spawn(&env, "live", &Workload::new(150, 6, 240, 32).rate(200));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rebuild_started = Instant::now();
    let (ok, output) = prismctl(
        &env,
        &[
            "rebuild",
            DEVICE_STATUS,
            "--mode",
            "blue-green",
            "--yes",
            "--retire-grace",
            "1",
            "--timeout",
            "75",
        ],
    )
    .await;
    let rebuild_took = rebuild_started.elapsed();
    let traffic_was_live = traffic.running();
    assert!(ok, "the blue/green rebuild failed:\n{output}");
    assert!(traffic_was_live, "the producer finished before the rebuild did: make the traffic last longer");
    assert!(output.contains("switched: device_status_g1 ("), "{output}");
    assert!(output.contains("retired device_status_g1: table dropped true"), "{output}");
    let switch_line = output.lines().find(|l| l.starts_with("switched:")).expect("a switched line");
    let sums: Vec<String> = switch_line
        .split("md5 ")
        .skip(1)
        .map(|s| s.chars().take_while(char::is_ascii_hexdigit).collect())
        .collect();
    assert!(
        sums.len() == 2 && sums[0].len() == 32 && sums[0] == sums[1],
        "both generations are equal at the common position: {switch_line}"
    );

    // Traffic after the switch lands in generation 2, through the live worker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = traffic.stop().await;
    assert!(!during.events.is_empty());
    let all: Vec<_> = before.events.iter().chain(&during.events).cloned().collect();
    let (summary, instances) =
        wait_for_oracle_at_active(&env, &oracle::fold(&all), Duration::from_secs(60)).await;
    let device_status = instances.iter().find(|i| i.projection == DEVICE_STATUS).expect("device_status");
    let hourly =
        instances.iter().find(|i| i.projection == SITE_HOURLY_READINGS).expect("site_hourly_readings");
    assert_eq!((device_status.generation, hourly.generation), (2, 1), "only device_status was rebuilt");
    // The live producer interleaves its 150 devices at random, so a short rebuild may end
    // before every one of them wrote its first event: count the devices that did.
    let devices: std::collections::BTreeSet<_> = all.iter().map(|e| e.meta.aggregate_id).collect();
    assert!(devices.len() > 40, "live traffic reached new devices during the rebuild");
    assert_eq!(summary.cache_entries, devices.len(), "every device cached in generation 2");

    // Generation 1 is gone: table, gate rows, cache keys; the view reads generation 2.
    let pg = env.pg().await.expect("postgres");
    let old_table: Option<String> =
        pg.query_one("SELECT to_regclass('device_status_g1')::text", &[]).await.expect("regclass").get(0);
    assert_eq!(old_table, None, "generation 1's table is dropped");
    let old_gate: i64 = pg
        .query_one("SELECT count(*) FROM projection_gate WHERE projection = 'device_status_g1'", &[])
        .await
        .expect("gate")
        .get(0);
    assert_eq!(old_gate, 0, "generation 1's gate rows are deleted");
    let view_rows: i64 = pg.query_one("SELECT count(*) FROM device_status", &[]).await.expect("view").get(0);
    assert_eq!(view_rows as usize, devices.len(), "the view reads generation 2");
    let statuses: Vec<(i32, String)> = pg
        .query("SELECT generation, status FROM projection_generations WHERE projection = 'device_status' ORDER BY 1", &[])
        .await
        .expect("registry")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(statuses, vec![(1, "retired".to_owned()), (2, "active".to_owned())]);
    let mut conn = prism_testkit::services::redis_connection(&env.config.redis.url).await.expect("redis");
    let g1_prefix = prism_projections::ProjectionInstance::new(DEVICE_STATUS, 1)
        .cache_prefix(DEVICE_CACHE_KIND, &env.config.redis.key_prefix);
    let old_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", prism_testkit::env::escape_glob(&g1_prefix)))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    assert!(old_keys.is_empty(), "generation 1's cache keys are deleted: {} left", old_keys.len());
    let dead = dead_letters(&env).await;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");

    live.stop(Duration::from_secs(30)).await.expect("the live projector stops cleanly");
    eprintln!(
        "rebuild took {:.1}s under traffic; {} + {} events -> {summary:?}; test {:.1}s",
        rebuild_took.as_secs_f64(),
        before.events.len(),
        during.events.len(),
        started.elapsed().as_secs_f64()
    );
}
