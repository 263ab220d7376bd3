//! `prismctl rebuild` end to end against the real broker, PostgreSQL and Redis, with events
//! published continuously while the rebuild runs. The `prismctl` binary runs as a child
//! process; the live projector workers run in this process (`projector.generation = 0`).
//!
//! What must hold afterwards, for both modes: every read model's rows in PostgreSQL and every
//! cache entry in Redis equal the oracle's fold of everything published (so the rebuilt model
//! is complete, and the live workers kept every other model right while topics were
//! replayed), and rebuilding again gives the same checksum. Each test corrupts the model
//! first where that proves the rebuild really rebuilt (a stale row or cache entry survives a
//! rebuild that only replays).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_events::Event;
use prism_projections::{ProjectionInstance, ProjectionName};
use prism_testkit::oracle::{self, CacheCheck, CheckSummary};
use prism_testkit::workload::Workload;
use prism_testkit::TestEnv;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::task::JoinHandle;

/// Quick commits and short sessions, so positions are visible soon and restarts are fast.
const OVERRIDES: &[(&str, &str)] = &[
    ("PRISM__PROJECTOR__COMMIT_INTERVAL_MS", "200"),
    ("PRISM__PROJECTOR__SESSION_TIMEOUT_MS", "8000"),
    ("PRISM__PROJECTOR__RETRY_MAX_BACKOFF_MS", "1000"),
];

/// A live projector worker (all read models, following the active generation).
struct Live(prism_projector::Embedded);

impl Live {
    fn start(env: &TestEnv) -> Self {
        let mut config = env.config.clone();
        config.projector.generation = 0;
        Self(prism_projector::Embedded::start(config))
    }

    async fn stop(self) {
        self.0.stop(Duration::from_secs(60)).await.expect("the live projector exits cleanly within 60s");
    }
}
/// Publishes `events` in small chunks with pauses, in order, until the list ends or `stop` is
/// set; returns how many were published (always a prefix of `events`).
fn traffic(env: &TestEnv, events: Arc<Vec<Event>>, start: usize, stop: Arc<AtomicBool>) -> JoinHandle<usize> {
    let config = env.config.clone();
    let prefix = env.topic_prefix().to_owned();
    tokio::spawn(async move {
        let producer = prism_testkit::kafka::producer(&config).expect("test producer");
        let mut published = start;
        while published < events.len() && !stop.load(Ordering::SeqCst) {
            let end = (published + 12).min(events.len());
            prism_testkit::kafka::publish_events(&producer, &prefix, &events[published..end])
                .await
                .expect("publishing live traffic");
            published = end;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        published
    })
}

async fn active_instances(client: &tokio_postgres::Client) -> Vec<ProjectionInstance> {
    prism_store::rebuild::active_generations(client, &ProjectionName::ALL).await.expect("active generations")
}

/// Waits until every read model (at its active generation) and its cache equal the oracle.
async fn wait_for_oracle(env: &TestEnv, events: &[Event], timeout: Duration) -> CheckSummary {
    let client = env.pg().await.expect("postgres");
    let expected = oracle::fold(events);
    let deadline = Instant::now() + timeout;
    loop {
        let instances = active_instances(&client).await;
        assert_eq!(instances.len(), ProjectionName::ALL.len(), "every read model has an active generation");
        let outcome = oracle::check_expected(
            &expected,
            &client,
            &env.config.redis.url,
            &env.config.redis.key_prefix,
            &instances,
            CacheCheck::Complete,
        )
        .await
        .expect("oracle check runs");
        match outcome {
            Ok(summary) => return summary,
            Err(diff) if Instant::now() >= deadline => {
                panic!("read models differ from the oracle after {timeout:?} ({instances:?}):\n{diff}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn prismctl(env: &TestEnv, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_prismctl"));
    command
        .envs(env.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs prismctl to the end; returns (success, stdout + stderr).
async fn run_prismctl(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let started = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(300), prismctl(env, args).output())
        .await
        .expect("prismctl finishes within 300s")
        .expect("prismctl runs");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    eprintln!("$ prismctl {} ({:.1}s)\n{text}", args.join(" "), started.elapsed().as_secs_f64());
    (output.status.success(), text)
}

/// The md5 of a `checksum <instance>: <rows> rows, md5 <hex>` or `caught up: …` line.
fn printed_md5(output: &str, marker: &str) -> String {
    let line = output
        .lines()
        .find(|l| l.starts_with(marker))
        .unwrap_or_else(|| panic!("no `{marker}` line in:\n{output}"));
    line.rsplit("md5 ").next().expect("md5").trim().to_owned()
}

async fn redis_keys(env: &TestEnv, prefix: &str) -> usize {
    let client = redis::Client::open(env.config.redis.url.as_str()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", prism_testkit::env::escape_glob(prefix)))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    keys.len()
}

/// Overwrites a cached document with garbage at its current revision: the projector's
/// compare-and-set never replaces it, so only a rebuild that deletes the keys repairs it.
async fn corrupt_cache_entry(env: &TestEnv, prefix: &str) -> String {
    let client = redis::Client::open(env.config.redis.url.as_str()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", prism_testkit::env::escape_glob(prefix)))
        .query_async(&mut conn)
        .await
        .expect("KEYS");
    let key = keys.first().expect("a cached entry to corrupt").clone();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("doc")
        .arg("{\"corrupted\":true}")
        .query_async(&mut conn)
        .await
        .expect("HSET");
    key
}

/// A test environment whose first `initial` of `n` generated events are projected by a live
/// worker, which keeps running.
async fn projected_start(seed: u64, n: usize, initial: usize) -> (TestEnv, Arc<Vec<Event>>, usize, Live) {
    let env = TestEnv::with_overrides(OVERRIDES).await.expect("test environment");
    let events = Arc::new(Workload::generate(seed, n));
    let producer = prism_testkit::kafka::producer(&env.config).expect("producer");
    prism_testkit::kafka::publish_events(&producer, env.topic_prefix(), &events[..initial])
        .await
        .expect("publish");
    let live = Live::start(&env);
    wait_for_oracle(&env, &events[..initial], Duration::from_secs(120)).await;
    (env, events, initial, live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_place_rebuild_under_live_traffic_equals_the_oracle_and_repeats_with_the_same_checksum() {
    prism_testkit::init_logging();
    let started = Instant::now();
    let (env, events, initial, live) = projected_start(41, 6000, 1500).await;

    // Corrupt the model: a rebuild that does not clear would keep these.
    let target = ProjectionInstance::new(ProjectionName::OrderSummary, 1);
    let pg = env.pg().await.expect("postgres");
    let corrupted = pg
        .execute("UPDATE order_summary_g1 SET status = 'corrupted' WHERE order_id IN (SELECT order_id FROM order_summary_g1 LIMIT 5)", &[])
        .await
        .expect("corrupt rows");
    assert!(corrupted > 0, "the workload placed orders");
    let cache_prefix = target.cache_prefix(&env.config.redis.key_prefix).expect("order_summary is cached");
    corrupt_cache_entry(&env, &cache_prefix).await;

    let stop_traffic = Arc::new(AtomicBool::new(false));
    let publisher = traffic(&env, events.clone(), initial, stop_traffic.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;

    // While a worker runs, an in-place rebuild is refused before anything is cleared.
    let (refused_ok, refused) =
        run_prismctl(&env, &["rebuild", "order_summary", "--mode", "in-place", "--yes", "--no-wait"]).await;
    assert!(!refused_ok && refused.contains("active member"), "{refused}");
    let still_corrupt: i64 = pg
        .query_one("SELECT count(*) FROM order_summary_g1 WHERE status = 'corrupted'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(still_corrupt as u64, corrupted, "a refused rebuild changes nothing");

    // Workers stopped, traffic keeps flowing; the rebuild waits for them to come back.
    live.stop().await;
    let (dry_ok, dry) =
        run_prismctl(&env, &["rebuild", "order_summary", "--mode", "in-place", "--dry-run"]).await;
    assert!(
        dry_ok && dry.contains("dry run: nothing changed") && dry.contains("skip them as duplicates"),
        "{dry}"
    );
    let still_corrupt: i64 = pg
        .query_one("SELECT count(*) FROM order_summary_g1 WHERE status = 'corrupted'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(still_corrupt as u64, corrupted, "a dry run changes nothing");

    let rebuild_started = Instant::now();
    let mut child = prismctl(
        &env,
        &[
            "rebuild",
            "order_summary",
            "--mode",
            "in-place",
            "--yes",
            "--timeout",
            "240",
        ],
    )
    .spawn()
    .expect("prismctl starts");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut output = String::new();
    let mut live = None;
    while let Some(line) = tokio::time::timeout(Duration::from_secs(240), lines.next_line())
        .await
        .expect("prismctl keeps talking")
        .expect("read stdout")
    {
        eprintln!("prismctl> {line}");
        output.push_str(&line);
        output.push('\n');
        if line.starts_with("waiting for the projector workers") {
            live = Some(Live::start(&env));
        }
    }
    let status = child.wait().await.expect("prismctl exits");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut stderr).await;
    }
    assert!(status.success(), "prismctl rebuild failed:\n{output}{stderr}");
    let live = live.expect("prismctl asked for the workers");
    assert!(output.contains("cleared order_summary_g1:"), "{output}");
    assert!(output.contains("reset ") && output.contains("earliest offsets"), "{output}");
    assert!(output.contains("progress: "), "{output}");
    eprintln!("in-place rebuild under traffic took {:.1}s", rebuild_started.elapsed().as_secs_f64());
    let first_md5 = printed_md5(&output, "caught up:");

    stop_traffic.store(true, Ordering::SeqCst);
    let published = publisher.await.expect("traffic task");
    assert!(published > initial, "traffic flowed during the rebuild");
    let summary = wait_for_oracle(&env, &events[..published], Duration::from_secs(120)).await;
    eprintln!("after the in-place rebuild: {published} events, {summary:?}");
    let client = env.pg().await.expect("postgres");
    let after_first = prism_store::rebuild::checksum(&client, target).await.expect("checksum");
    assert!(after_first.rows > 0);
    eprintln!("checksum after the first rebuild: {after_first} (printed at catch-up: {first_md5})");

    // Again, without waiting: the same events give the same checksum.
    live.stop().await;
    let (ok, output) =
        run_prismctl(&env, &["rebuild", "order_summary", "--mode", "in-place", "--yes", "--no-wait"]).await;
    assert!(ok, "{output}");
    assert!(output.contains(&format!("cleared order_summary_g1: {} rows", after_first.rows)), "{output}");
    assert_eq!(
        prism_store::rebuild::checksum(&client, target).await.expect("checksum").rows,
        0,
        "--no-wait returns with the model cleared"
    );
    let live = Live::start(&env);
    wait_for_oracle(&env, &events[..published], Duration::from_secs(120)).await;
    let after_second = prism_store::rebuild::checksum(&client, target).await.expect("checksum");
    assert_eq!(after_second, after_first, "rebuilding twice gives the same checksum");
    live.stop().await;
    eprintln!("in-place test: {:.1}s, checksum {after_second}", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_rebuild_under_live_traffic_switches_atomically_and_repeats_with_the_same_checksum() {
    prism_testkit::init_logging();
    let started = Instant::now();
    let (env, events, initial, live) = projected_start(42, 9000, 2000).await;
    let g1 = ProjectionInstance::new(ProjectionName::UserProfile, 1);
    let g2 = ProjectionInstance::new(ProjectionName::UserProfile, 2);
    let g3 = ProjectionInstance::new(ProjectionName::UserProfile, 3);
    let key_prefix = env.config.redis.key_prefix.clone();
    let pg = env.pg().await.expect("postgres");

    let (dry_ok, dry) =
        run_prismctl(&env, &["rebuild", "user_profile", "--mode", "blue-green", "--dry-run"]).await;
    assert!(dry_ok && dry.contains("dry run: nothing changed") && dry.contains("user_profile_g2"), "{dry}");
    assert_eq!(active_instances(&pg).await.iter().find(|i| i.projection == g1.projection), Some(&g1));

    // Rebuild while events keep arriving; user_profile is fed by two topics (users, orders).
    let stop_traffic = Arc::new(AtomicBool::new(false));
    let publisher = traffic(&env, events.clone(), initial, stop_traffic.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rebuild_started = Instant::now();
    let (ok, output) = run_prismctl(
        &env,
        &[
            "rebuild",
            "user_profile",
            "--mode",
            "blue-green",
            "--yes",
            "--retire-grace",
            "2",
            "--timeout",
            "240",
        ],
    )
    .await;
    let rebuild_took = rebuild_started.elapsed();
    let traffic_was_live = !publisher.is_finished();
    assert!(ok, "blue/green rebuild failed:\n{output}");
    assert!(traffic_was_live, "the event list ran out before the rebuild finished: make it longer");
    assert!(output.contains("switched: user_profile_g1 ("), "{output}");
    assert!(output.contains("retired user_profile_g1: table dropped true"), "{output}");
    let switch_line = output.lines().find(|l| l.starts_with("switched:")).expect("switched line");
    let sums: Vec<String> = switch_line
        .split("md5 ")
        .skip(1)
        .map(|s| s.chars().take_while(char::is_ascii_hexdigit).collect())
        .collect();
    assert_eq!(sums.len(), 2, "{switch_line}");
    assert_eq!(sums[0].len(), 32, "{switch_line}");
    assert_eq!(sums[0], sums[1], "both generations are equal at the common position: {switch_line}");
    eprintln!("blue/green rebuild under traffic took {:.1}s", rebuild_took.as_secs_f64());

    // Traffic after the switch must land in g2 through the live workers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_traffic.store(true, Ordering::SeqCst);
    let published = publisher.await.expect("traffic task");
    let summary = wait_for_oracle(&env, &events[..published], Duration::from_secs(120)).await;
    eprintln!("after the blue/green rebuild: {published} events published, {summary:?}");
    assert_eq!(active_instances(&pg).await.iter().find(|i| i.projection == g2.projection), Some(&g2));
    let old_table: Option<String> =
        pg.query_one("SELECT to_regclass('user_profile_g1')::text", &[]).await.expect("regclass").get(0);
    assert_eq!(old_table, None, "the old generation's table is dropped");
    let old_gate: i64 = pg
        .query_one("SELECT count(*) FROM projection_gate WHERE projection = 'user_profile_g1'", &[])
        .await
        .expect("gate")
        .get(0);
    assert_eq!(old_gate, 0, "the old generation's gate rows are deleted");
    assert_eq!(
        redis_keys(&env, &g1.cache_prefix(&key_prefix).expect("cached")).await,
        0,
        "old cache keys deleted"
    );
    let view_rows: i64 = pg.query_one("SELECT count(*) FROM user_profile", &[]).await.expect("view").get(0);
    let after_first = prism_store::rebuild::checksum(&pg, g2).await.expect("checksum");
    assert_eq!(view_rows, after_first.rows, "the view reads the new generation");
    let statuses: Vec<(i32, String)> = pg
        .query("SELECT generation, status FROM projection_generations WHERE projection = 'user_profile' ORDER BY 1", &[])
        .await
        .expect("registry")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(statuses, vec![(1, "retired".to_owned()), (2, "active".to_owned())]);

    // A model that differs from its rebuild is not switched silently...
    pg.execute("UPDATE user_profile_g2 SET display_name = 'corrupted' WHERE user_id IN (SELECT user_id FROM user_profile_g2 LIMIT 3)", &[])
        .await
        .expect("corrupt");
    let (ok, output) = run_prismctl(
        &env,
        &[
            "rebuild",
            "user_profile",
            "--mode",
            "blue-green",
            "--yes",
            "--retire-grace",
            "0",
            "--timeout",
            "120",
        ],
    )
    .await;
    assert!(!ok, "a difference at the common position stops the switch:\n{output}");
    assert!(output.contains("verification failed at a common position"), "{output}");
    assert_eq!(
        active_instances(&pg).await.iter().find(|i| i.projection == g2.projection),
        Some(&g2),
        "g2 still serves"
    );
    // ...and with --allow-changes the rebuild repairs it, to the same checksum as before.
    let (ok, output) = run_prismctl(
        &env,
        &[
            "rebuild",
            "user_profile",
            "--mode",
            "blue-green",
            "--yes",
            "--retire-grace",
            "1",
            "--timeout",
            "120",
            "--abandon-previous",
            "--allow-changes",
        ],
    )
    .await;
    assert!(ok, "{output}");
    assert!(output.contains("dropped abandoned user_profile_g3"), "{output}");
    let g4 = ProjectionInstance::new(ProjectionName::UserProfile, 4);
    assert_eq!(
        printed_md5(&output, "checksum user_profile_g4:"),
        after_first.md5,
        "rebuilding twice gives the same checksum"
    );
    wait_for_oracle(&env, &events[..published], Duration::from_secs(120)).await;
    assert_eq!(active_instances(&pg).await.iter().find(|i| i.projection == g4.projection), Some(&g4));
    let after_second = prism_store::rebuild::checksum(&pg, g4).await.expect("checksum");
    assert_eq!(after_second, after_first);
    for gone in [g2, g3] {
        let table: Option<String> =
            pg.query_one("SELECT to_regclass($1)::text", &[&gone.id()]).await.expect("regclass").get(0);
        assert_eq!(table, None, "{gone} dropped");
    }
    live.stop().await;
    eprintln!("blue/green test: {:.1}s, checksum {after_second}", started.elapsed().as_secs_f64());
}
