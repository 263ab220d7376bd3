//! `prismctl rebuild` end to end against the real broker, PostgreSQL and Redis, with events
//! published continuously while the rebuild runs. The `prismctl` binary runs as a child
//! process; the shop's live projector workers run in this process (`projector.generation =
//! 0`), and they also build the generations blue/green rebuilds register (prismctl has no
//! folds).
//!
//! What must hold afterwards, for both modes: every read model's rows in PostgreSQL and every
//! cache entry in Redis equal the oracle's fold of everything published (so the rebuilt model
//! is complete, and the live workers kept every other model right while topics were
//! replayed), and rebuilding again gives the same checksum. Each test corrupts the model
//! first where that proves the rebuild really rebuilt (a stale row or cache entry survives a
//! rebuild that only replays). While the blue/green rebuild builds and switches, a reader
//! queries the served view every few milliseconds: no row may disappear and no row's version
//! (or order count) may go backwards, which is what an atomic switch at a common position
//! guarantees to the query side.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prism_events::Event;
use prism_projections::ProjectionInstance;
use prism_testkit::oracle::{CacheCheck, CheckSummary};
use prism_testkit::TestEnv;
use shop::testing::oracle::fold;
use shop::testing::workload::Workload;
use shop_model::read_models::{ORDER_SUMMARY, USER_PROFILE};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;

use crate::support::{command, prismctl_binary, shop, wait_group_empty};

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
        Self(prism_projector::Embedded::start(config, shop()))
    }

    /// A live worker with its configuration changed by `adjust`.
    fn start_with(env: &TestEnv, adjust: impl FnOnce(&mut prism_config::PrismConfig)) -> Self {
        let mut config = env.config.clone();
        config.projector.generation = 0;
        adjust(&mut config);
        Self(prism_projector::Embedded::start(config, shop()))
    }

    /// Stops the worker and waits until the broker no longer lists it in the projector group.
    async fn stop(self, env: &TestEnv) {
        self.0.stop(Duration::from_secs(60)).await.expect("the live projector exits cleanly within 60s");
        let group = prism_kafka::admin::projector_group_id(&env.config);
        wait_group_empty(env, &group, Duration::from_secs(60)).await;
    }
}

/// Live traffic: publishes `events` from `start` in small chunks with pauses, in order, until
/// the list ends or `stop` is set. `published` counts how far it got (always a prefix of
/// `events`); the task returns the final count.
struct Traffic {
    published: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<usize>,
}

impl Traffic {
    fn start(env: &TestEnv, events: Arc<Vec<Event>>, start: usize) -> Self {
        let config = env.config.clone();
        let prefix = env.topic_prefix().to_owned();
        let published = Arc::new(AtomicUsize::new(start));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (published, stop) = (published.clone(), stop.clone());
            async move {
                let producer = prism_testkit::kafka::producer(&config).expect("test producer");
                let mut at = start;
                while at < events.len() && !stop.load(Ordering::SeqCst) {
                    let end = (at + 12).min(events.len());
                    prism_testkit::kafka::publish_events(&producer, &prefix, &events[at..end])
                        .await
                        .expect("publishing live traffic");
                    at = end;
                    published.store(at, Ordering::SeqCst);
                    // Pacing, not synchronisation: about 120 events a second.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                at
            }
        });
        Self { published, stop, task }
    }

    fn published(&self) -> usize {
        self.published.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` events have been published (traffic is flowing).
    async fn wait_published(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.published() < n {
            assert!(
                !self.task.is_finished(),
                "the traffic ended at {} before reaching {n}",
                self.published()
            );
            assert!(Instant::now() < deadline, "traffic stalled at {} of {n}", self.published());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("traffic task")
    }
}

/// Waits until every read model (at its active generation) and its cache equal the oracle.
async fn wait_for_oracle(env: &TestEnv, events: &[Event], timeout: Duration) -> CheckSummary {
    let summary = env.wait_for_oracle(&fold(events), CacheCheck::Complete, timeout).await.expect("oracle");
    let active = env.active_instances().await.expect("active generations");
    assert_eq!(
        active.len(),
        shop().read_models().len(),
        "every read model has an active generation: {active:?}"
    );
    summary
}

async fn active(env: &TestEnv, projection: &str) -> Option<ProjectionInstance> {
    env.active_instances().await.expect("active generations").into_iter().find(|i| i.projection == projection)
}

/// Runs prismctl to the end; returns (success, stdout + stderr).
async fn run_prismctl(env: &TestEnv, args: &[&str]) -> (bool, String) {
    let started = Instant::now();
    let output = tokio::time::timeout(Duration::from_secs(300), command(&env.env_vars, args).await.output())
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

/// The two checksums of the `switched: <old> (…md5 a) -> <new> (…md5 b)` line of `old`.
fn switch_checksums(output: &str, old: &str) -> (String, String) {
    let line = output
        .lines()
        .find(|l| l.starts_with(&format!("switched: {old} (")))
        .unwrap_or_else(|| panic!("no switch of {old} in:\n{output}"));
    let sums: Vec<String> =
        line.split("md5 ").skip(1).map(|s| s.chars().take_while(char::is_ascii_hexdigit).collect()).collect();
    match sums.as_slice() {
        [before, after] if before.len() == 32 => (before.clone(), after.clone()),
        _ => panic!("two checksums in `{line}`"),
    }
}

/// The Redis key prefix of `instance` (its read model is cached).
fn cache_prefix(env: &TestEnv, instance: ProjectionInstance) -> String {
    let kind =
        shop().read_model(instance.projection).and_then(|m| m.cache_kind()).expect("a cached read model");
    instance.cache_prefix(kind, &env.config.redis.key_prefix)
}

async fn redis_keys(env: &TestEnv, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(env.config.redis.url.as_str()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
    redis::cmd("KEYS")
        .arg(format!("{}*", prism_testkit::env::escape_glob(prefix)))
        .query_async(&mut conn)
        .await
        .expect("KEYS")
}

/// Overwrites a cached document with garbage at its current revision: the projector's
/// compare-and-set never replaces it, so only a rebuild that deletes the keys repairs it.
async fn corrupt_cache_entry(env: &TestEnv, prefix: &str) -> String {
    let key = redis_keys(env, prefix).await.first().expect("a cached entry to corrupt").clone();
    let client = redis::Client::open(env.config.redis.url.as_str()).expect("redis url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("redis");
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
    prismctl_binary().await;
    let env = TestEnv::with_overrides(&shop(), OVERRIDES).await.expect("test environment");
    let events = Arc::new(Workload::generate(seed, n));
    let producer = prism_testkit::kafka::producer(&env.config).expect("producer");
    prism_testkit::kafka::publish_events(&producer, env.topic_prefix(), &events[..initial])
        .await
        .expect("publish");
    let live = Live::start(&env);
    wait_for_oracle(&env, &events[..initial], Duration::from_secs(120)).await;
    (env, events, initial, live)
}

/// (offsets loaded and settled, offsets registered) over `instance`'s replay ranges.
async fn replay_progress(env: &TestEnv, instance: ProjectionInstance) -> (i64, i64) {
    let client = env.pg().await.expect("postgres");
    let ranges =
        prism_read_store::projection::replay::ranges(&client, &[instance.id()]).await.expect("ranges");
    ranges
        .iter()
        .fold((0, 0), |(loaded, total), r| (loaded + r.settled_to - r.start, total + r.end - r.start))
}

/// Waits until `instance`'s replay has started but not ended; returns its progress then.
async fn wait_replay_partly_loaded(env: &TestEnv, instance: ProjectionInstance) -> (i64, i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (loaded, total) = replay_progress(env, instance).await;
        assert!(total > 0, "{instance} has replay ranges");
        assert!(loaded < total, "the replay ended before it could be interrupted ({loaded} of {total})");
        if loaded >= 30 {
            return (loaded, total);
        }
        assert!(Instant::now() < deadline, "the replay of {instance} did not start within 60s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the reader of the served `user_profile` view saw.
#[derive(Debug, Default)]
struct Observed {
    /// Reads made, by the generation active just before each.
    reads_by_generation: HashMap<i32, usize>,
    /// Rows in the last read.
    rows: usize,
    /// How many events were published when the reader first saw generation 2 active.
    published_at_switch: Option<usize>,
    /// Every missing row, version or count going backwards, and failed query.
    violations: Vec<String>,
}

/// Reads the whole `user_profile` view every few milliseconds until `stop`: a row once seen
/// must be there in every later read, and its `prism_version` (the user's version it reflects)
/// and `order_count` (summed from order events) must never be lower than already seen.
fn watch_user_profiles(
    env: &TestEnv,
    stop: Arc<AtomicBool>,
    published: Arc<AtomicUsize>,
) -> JoinHandle<Observed> {
    let url =
        format!("{}?options=-csearch_path%3D{}", env.services.database_url(), env.config.postgres.schema);
    tokio::spawn(async move {
        let client = prism_testkit::services::connect_pg(&url).await.expect("reader connection");
        let mut seen: HashMap<String, (i64, i64)> = HashMap::new();
        let mut observed = Observed::default();
        while !stop.load(Ordering::SeqCst) {
            let generation: i32 = match client
                .query_one(
                    "SELECT generation FROM projection_generations WHERE projection = 'user_profile' AND status = 'active'",
                    &[],
                )
                .await
            {
                Ok(row) => row.get(0),
                Err(err) => {
                    observed.violations.push(format!("reading the active generation failed: {err}"));
                    continue;
                }
            };
            if generation == 2 && observed.published_at_switch.is_none() {
                observed.published_at_switch = Some(published.load(Ordering::SeqCst));
            }
            let rows = match client
                .query("SELECT user_id::text, prism_version, order_count FROM user_profile", &[])
                .await
            {
                Ok(rows) => rows,
                Err(err) => {
                    observed
                        .violations
                        .push(format!("reading the view failed (generation {generation}): {err}"));
                    continue;
                }
            };
            *observed.reads_by_generation.entry(generation).or_default() += 1;
            let mut now: HashMap<String, (i64, i64)> = HashMap::with_capacity(rows.len());
            for row in &rows {
                let (user, version, orders): (String, i64, i64) = (row.get(0), row.get(1), row.get(2));
                if let Some((seen_version, seen_orders)) = seen.get(&user) {
                    if version < *seen_version || orders < *seen_orders {
                        observed.violations.push(format!(
                            "user {user} went back from version {seen_version} / {seen_orders} orders to {version} / \
                             {orders} (generation {generation} active)"
                        ));
                    }
                }
                now.insert(user, (version, orders));
            }
            let missing = seen.keys().filter(|user| !now.contains_key(*user)).count();
            if missing > 0 {
                observed.violations.push(format!(
                    "{missing} of {} rows seen before are missing (generation {generation} active)",
                    seen.len()
                ));
            }
            observed.rows = now.len();
            seen = now;
            // Pacing of the reads, not synchronisation.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        observed
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_place_rebuild_under_live_traffic_equals_the_oracle_and_repeats_with_the_same_checksum() {
    prism_testkit::init_logging();
    let started = Instant::now();
    let (env, events, initial, live) = projected_start(41, 6000, 1500).await;

    // Corrupt the model: a rebuild that does not clear would keep these.
    let target = ProjectionInstance::new(ORDER_SUMMARY, 1);
    let pg = env.pg().await.expect("postgres");
    let corrupted = pg
        .execute("UPDATE order_summary_g1 SET status = 'corrupted' WHERE order_id IN (SELECT order_id FROM order_summary_g1 LIMIT 5)", &[])
        .await
        .expect("corrupt rows");
    assert!(corrupted > 0, "the workload placed orders");
    let prefix = cache_prefix(&env, target);
    corrupt_cache_entry(&env, &prefix).await;
    let still_corrupt = || async {
        let count: i64 = pg
            .query_one("SELECT count(*) FROM order_summary_g1 WHERE status = 'corrupted'", &[])
            .await
            .expect("count")
            .get(0);
        count as u64
    };

    let traffic = Traffic::start(&env, events.clone(), initial);
    traffic.wait_published(initial + 24).await;

    // While a worker runs, an in-place rebuild is refused before anything is cleared.
    let (refused_ok, refused) =
        run_prismctl(&env, &["rebuild", "order_summary", "--mode", "in-place", "--yes", "--no-wait"]).await;
    assert!(!refused_ok && refused.contains("active member"), "{refused}");
    assert_eq!(still_corrupt().await, corrupted, "a refused rebuild changes nothing");

    // Workers stopped, traffic keeps flowing; the rebuild waits for them to come back.
    live.stop(&env).await;
    let (dry_ok, dry) =
        run_prismctl(&env, &["rebuild", "order_summary", "--mode", "in-place", "--dry-run"]).await;
    assert!(dry_ok && dry.contains("dry run: nothing changed") && dry.contains("replay"), "{dry}");
    assert_eq!(still_corrupt().await, corrupted, "a dry run changes nothing");
    // Not confirmed (no terminal, no --yes): refused, nothing cleared or reset.
    let group = prism_kafka::admin::projector_group_id(&env.config);
    let offsets_before = prism_testkit::kafka::committed_offsets(&env.config, &group, &env.event_topics())
        .await
        .expect("committed");
    let (unconfirmed_ok, unconfirmed) =
        run_prismctl(&env, &["rebuild", "order_summary", "--mode", "in-place", "--no-wait"]).await;
    assert!(!unconfirmed_ok && unconfirmed.contains("stdin is not a terminal"), "{unconfirmed}");
    assert_eq!(still_corrupt().await, corrupted, "an unconfirmed rebuild changes nothing");
    assert_eq!(
        prism_testkit::kafka::committed_offsets(&env.config, &group, &env.event_topics())
            .await
            .expect("committed"),
        offsets_before,
        "no offset reset"
    );

    let rebuild_started = Instant::now();
    let published_at_start = traffic.published();
    let mut child = command(
        &env.env_vars,
        &["rebuild", "order_summary", "--mode", "in-place", "--yes", "--timeout", "240"],
    )
    .await
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
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
    assert!(output.contains("replay range(s)"), "{output}");
    assert!(output.contains("progress: order_summary_g1 replayed"), "{output}");
    let offsets_after = prism_testkit::kafka::committed_offsets(&env.config, &group, &env.event_topics())
        .await
        .expect("committed");
    for (partition, before) in &offsets_before {
        let after = offsets_after.get(partition).copied().unwrap_or_default();
        assert!(
            after >= *before,
            "an in-place rebuild never moves the group's offsets back: {partition:?} {before} -> {after}"
        );
    }
    assert!(traffic.published() > published_at_start, "traffic flowed during the rebuild");
    eprintln!("in-place rebuild under traffic took {:.1}s", rebuild_started.elapsed().as_secs_f64());
    let first_md5 = printed_md5(&output, "caught up:");

    let published = traffic.stop().await;
    let summary = wait_for_oracle(&env, &events[..published], Duration::from_secs(120)).await;
    eprintln!("after the in-place rebuild: {published} events, {summary:?}");
    let client = env.pg().await.expect("postgres");
    let after_first = prism_read_store::rebuild::checksum(&client, target).await.expect("checksum");
    assert!(after_first.rows > 0);
    eprintln!("checksum after the first rebuild: {after_first} (printed at catch-up: {first_md5})");

    // Again, without waiting: the same events give the same checksum.
    live.stop(&env).await;
    let (ok, output) =
        run_prismctl(&env, &["rebuild", "order_summary", "--mode", "in-place", "--yes", "--no-wait"]).await;
    assert!(ok, "{output}");
    assert!(output.contains(&format!("cleared order_summary_g1: {} rows", after_first.rows)), "{output}");
    assert_eq!(
        prism_read_store::rebuild::checksum(&client, target).await.expect("checksum").rows,
        0,
        "--no-wait returns with the model cleared"
    );
    // A worker that stops in the middle of the replay (tiny chunks, one range at a time) and a
    // fresh one that picks it up where it stopped: every chunk lands once, none is skipped.
    let interrupted = Live::start_with(&env, |config| {
        config.projector.replay_chunk_events = 3;
        config.projector.replay_concurrency = 1;
    });
    let (loaded, total) = wait_replay_partly_loaded(&env, target).await;
    interrupted.stop(&env).await;
    let (loaded_after_stop, _) = replay_progress(&env, target).await;
    eprintln!("stopped the worker mid-replay: {loaded}..{loaded_after_stop} of {total} offsets loaded");
    assert!(
        loaded_after_stop < total,
        "the worker stopped before the replay ended ({loaded_after_stop} of {total})"
    );
    let live = Live::start(&env);
    wait_for_oracle(&env, &events[..published], Duration::from_secs(120)).await;
    assert_eq!(replay_progress(&env, target).await, (total, total), "the replay completed after the restart");
    let after_second = prism_read_store::rebuild::checksum(&client, target).await.expect("checksum");
    assert_eq!(after_second, after_first, "rebuilding twice gives the same checksum");

    // A worker that died after its chunks landed but before their cache writes (simulated:
    // settled_to put back, the cache entries gone): the next worker redelivers those chunks
    // and the cache is complete again, with no new event to write it.
    live.stop(&env).await;
    let unsettled = client
        .execute(
            "UPDATE projection_replays SET settled_to = start_offset WHERE projection = $1",
            &[&target.id()],
        )
        .await
        .expect("unsettle");
    assert!(unsettled > 0, "{target} has ranges");
    prism_testkit::env::delete_keys(&env.config.redis.url, &prefix).await.expect("delete cache keys");
    assert!(redis_keys(&env, &prefix).await.is_empty());
    let live = Live::start(&env);
    wait_for_oracle(&env, &events[..published], Duration::from_secs(120)).await;
    assert_eq!(replay_progress(&env, target).await.0, replay_progress(&env, target).await.1, "settled again");
    live.stop(&env).await;
    eprintln!("in-place test: {:.1}s, checksum {after_second}", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_read_model_rebuilt_in_place_at_once_equals_the_oracle() {
    prism_testkit::init_logging();
    let (env, events, initial, live) = projected_start(43, 3000, 3000).await;
    // Two models corrupted in their table, one in its cache: a rebuild that skipped any would
    // keep what was done to it.
    let pg = env.pg().await.expect("postgres");
    for statement in [
        "UPDATE order_summary_g1 SET status = 'corrupted' WHERE order_id IN (SELECT order_id FROM order_summary_g1 LIMIT 5)",
        "UPDATE product_sales_daily_g1 SET units = units + 1000 WHERE product_id IN (SELECT product_id FROM product_sales_daily_g1 LIMIT 3)",
    ] {
        assert!(pg.execute(statement, &[]).await.expect("corrupt rows") > 0, "{statement}");
    }
    corrupt_cache_entry(&env, &cache_prefix(&env, ProjectionInstance::new(USER_PROFILE, 1))).await;
    live.stop(&env).await;

    let names: Vec<&str> = shop().read_models().iter().map(|m| m.name()).collect();
    let (dry_ok, dry) = run_prismctl(&env, &["rebuild", "--all", "--mode", "in-place", "--dry-run"]).await;
    assert!(dry_ok && dry.contains("dry run: nothing changed"), "{dry}");
    for name in &names {
        assert!(dry.contains(&format!("rebuild {name} in place")), "--all plans {name}:\n{dry}");
    }
    let (ok, output) =
        run_prismctl(&env, &["rebuild", "--all", "--mode", "in-place", "--yes", "--no-wait"]).await;
    assert!(ok, "{output}");
    for name in &names {
        let instance = ProjectionInstance::new(name, 1);
        assert!(output.contains(&format!("cleared {instance}:")), "{instance} cleared:\n{output}");
        assert_eq!(
            prism_read_store::rebuild::checksum(&pg, instance).await.expect("checksum").rows,
            0,
            "{instance} is empty until the workers replay it"
        );
        let (_, registered) = replay_progress(&env, instance).await;
        assert!(registered > 0, "{instance} has ranges to replay");
    }

    // One start of the workers replays every model; the group's offsets never moved back, so
    // the rows must equal the oracle's fold of what was projected before, nothing twice.
    let live = Live::start(&env);
    wait_for_oracle(&env, &events[..initial], Duration::from_secs(180)).await;
    for name in &names {
        let instance = ProjectionInstance::new(name, 1);
        let (settled, registered) = replay_progress(&env, instance).await;
        assert_eq!(settled, registered, "{instance}'s replay settled");
    }
    live.stop(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_rebuild_under_live_traffic_switches_atomically_and_repeats_with_the_same_checksum() {
    prism_testkit::init_logging();
    let started = Instant::now();
    let (env, events, initial, live) = projected_start(42, 9000, 2000).await;
    let g1 = ProjectionInstance::new(USER_PROFILE, 1);
    let g2 = ProjectionInstance::new(USER_PROFILE, 2);
    let g3 = ProjectionInstance::new(USER_PROFILE, 3);
    let pg = env.pg().await.expect("postgres");

    let (dry_ok, dry) =
        run_prismctl(&env, &["rebuild", "user_profile", "--mode", "blue-green", "--dry-run"]).await;
    assert!(dry_ok && dry.contains("dry run: nothing changed") && dry.contains("user_profile_g2"), "{dry}");
    assert_eq!(active(&env, USER_PROFILE).await, Some(g1));
    let (unconfirmed_ok, unconfirmed) =
        run_prismctl(&env, &["rebuild", "user_profile", "--mode", "blue-green"]).await;
    assert!(!unconfirmed_ok && unconfirmed.contains("stdin is not a terminal"), "{unconfirmed}");
    let generations: i64 = pg
        .query_one("SELECT count(*) FROM projection_generations WHERE projection = 'user_profile'", &[])
        .await
        .expect("registry")
        .get(0);
    assert_eq!(generations, 1, "an unconfirmed rebuild registers nothing");

    // Rebuild while events keep arriving (user_profile is fed by two topics: users, orders) and
    // a reader keeps reading the served view.
    let traffic = Traffic::start(&env, events.clone(), initial);
    traffic.wait_published(initial + 24).await;
    let stop_reader = Arc::new(AtomicBool::new(false));
    let reader = watch_user_profiles(&env, stop_reader.clone(), traffic.published.clone());
    let rebuild_started = Instant::now();
    let published_at_start = traffic.published();
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
    assert!(ok, "blue/green rebuild failed:\n{output}");
    assert!(
        !traffic.task.is_finished(),
        "the event list ran out before the rebuild finished: make it longer"
    );
    assert!(traffic.published() > published_at_start, "traffic flowed during the rebuild");
    assert!(output.contains("retired user_profile_g1: table dropped true"), "{output}");
    let (before, after) = switch_checksums(&output, "user_profile_g1");
    assert_eq!(before, after, "both generations are equal at the common position:\n{output}");
    eprintln!("blue/green rebuild under traffic took {:.1}s", rebuild_took.as_secs_f64());

    // Traffic after the switch must land in g2 through the live workers: let some more flow,
    // while the reader keeps reading.
    traffic.wait_published(traffic.published() + 60).await;
    stop_reader.store(true, Ordering::SeqCst);
    let observed = reader.await.expect("reader task");
    let published = traffic.stop().await;
    eprintln!(
        "the reader saw: {:?}",
        (&observed.reads_by_generation, observed.rows, observed.published_at_switch)
    );
    assert!(
        observed.violations.is_empty(),
        "the switch was not atomic for readers:\n{}",
        observed.violations.join("\n")
    );
    let reads = |generation| observed.reads_by_generation.get(&generation).copied().unwrap_or(0);
    assert!(reads(1) >= 10 && reads(2) >= 10, "the reader read before and after the switch: {observed:?}");
    assert!(observed.rows > 0, "the reader saw rows");
    let at_switch = observed.published_at_switch.expect("the reader saw generation 2 become active");
    assert!(at_switch > published_at_start && published > at_switch, "traffic before and after the switch");

    let summary = wait_for_oracle(&env, &events[..published], Duration::from_secs(120)).await;
    eprintln!("after the blue/green rebuild: {published} events published, {summary:?}");
    assert_eq!(active(&env, USER_PROFILE).await, Some(g2));
    let old_table: Option<String> =
        pg.query_one("SELECT to_regclass('user_profile_g1')::text", &[]).await.expect("regclass").get(0);
    assert_eq!(old_table, None, "the old generation's table is dropped");
    let old_gate: i64 = pg
        .query_one("SELECT count(*) FROM projection_gate WHERE projection = 'user_profile_g1'", &[])
        .await
        .expect("gate")
        .get(0);
    assert_eq!(old_gate, 0, "the old generation's gate rows are deleted");
    assert_eq!(redis_keys(&env, &cache_prefix(&env, g1)).await.len(), 0, "old cache keys deleted");
    let view_rows: i64 = pg.query_one("SELECT count(*) FROM user_profile", &[]).await.expect("view").get(0);
    let after_first = prism_read_store::rebuild::checksum(&pg, g2).await.expect("checksum");
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
    assert_eq!(active(&env, USER_PROFILE).await, Some(g2), "g2 still serves");
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
    let g4 = ProjectionInstance::new(USER_PROFILE, 4);
    assert_eq!(
        printed_md5(&output, "checksum user_profile_g4:"),
        after_first.md5,
        "rebuilding twice gives the same checksum"
    );
    wait_for_oracle(&env, &events[..published], Duration::from_secs(120)).await;
    assert_eq!(active(&env, USER_PROFILE).await, Some(g4));
    let after_second = prism_read_store::rebuild::checksum(&pg, g4).await.expect("checksum");
    assert_eq!(after_second, after_first);
    for gone in [g2, g3] {
        let table: Option<String> =
            pg.query_one("SELECT to_regclass($1)::text", &[&gone.id()]).await.expect("regclass").get(0);
        assert_eq!(table, None, "{gone} dropped");
    }
    live.stop(&env).await;
    eprintln!("blue/green test: {:.1}s, checksum {after_second}", started.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_read_model_rebuilt_blue_green_at_once_under_live_traffic_equals_the_oracle() {
    prism_testkit::init_logging();
    let (env, events, initial, live) = projected_start(44, 6000, 2000).await;
    // One model corrupted in its table, on carts no later event touches (so live traffic
    // cannot repair them first): a rebuild that switched without rebuilding it would keep the
    // corruption, one that skipped its verification would not see the difference.
    let pg = env.pg().await.expect("postgres");
    let mut last_event_of_cart: HashMap<uuid::Uuid, usize> = HashMap::new();
    for (at, event) in events.iter().enumerate() {
        if event.meta.aggregate_type == shop_model::aggregates::CART {
            last_event_of_cart.insert(event.meta.aggregate_id, at);
        }
    }
    let settled_carts: Vec<uuid::Uuid> =
        last_event_of_cart.iter().filter(|(_, at)| **at < initial).map(|(id, _)| *id).take(4).collect();
    let corrupted = pg
        .execute("UPDATE cart_view_g1 SET status = 'corrupted' WHERE cart_id = ANY($1)", &[&settled_carts])
        .await
        .expect("corrupt rows");
    assert!(corrupted > 0, "carts whose events are all projected: {settled_carts:?}");

    let names: Vec<&str> = shop().read_models().iter().map(|m| m.name()).collect();
    let (dry_ok, dry) = run_prismctl(&env, &["rebuild", "--all", "--mode", "blue-green", "--dry-run"]).await;
    assert!(dry_ok && dry.contains("dry run: nothing changed"), "{dry}");
    for name in &names {
        assert!(
            dry.contains(&format!("rebuild {name} blue/green: {name}_g1 keeps serving")),
            "--all plans {name}:\n{dry}"
        );
    }

    // Every model rebuilt at once while events keep arriving. The corrupted model differs from
    // its rebuild: it must stay building, and its old generation serving, while every other
    // model is switched (equal at the common position) and its old generation retired.
    let traffic = Traffic::start(&env, events.clone(), initial);
    traffic.wait_published(initial + 24).await;
    let published_at_start = traffic.published();
    let (ok, output) = run_prismctl(
        &env,
        &["rebuild", "--all", "--mode", "blue-green", "--yes", "--retire-grace", "1", "--timeout", "240"],
    )
    .await;
    assert!(!ok, "a difference in one read model fails the run:\n{output}");
    assert!(traffic.published() > published_at_start, "traffic flowed during the rebuild");
    assert!(
        output.contains("cart_view_g2 was not switched to and stays building")
            && output.contains("verification failed at a common position: cart_view_g1"),
        "{output}"
    );
    let first_switch = output.find("switched: ").expect("a switch");
    for name in &names {
        let (old, new) = (format!("{name}_g1"), format!("{name}_g2"));
        // Every generation is registered before the first switch: they are built at once.
        let at = output
            .find(&format!("registered {new} (building)"))
            .unwrap_or_else(|| panic!("{new}:\n{output}"));
        assert!(at < first_switch, "{new} registered before any switch:\n{output}");
        if *name == "cart_view" {
            assert!(!output.contains("switched: cart_view_g1"), "{output}");
            assert_eq!(
                active(&env, name).await,
                Some(ProjectionInstance::new(name, 1)),
                "{name} still serves g1"
            );
            continue;
        }
        let (before, after) = switch_checksums(&output, &old);
        assert_eq!(before, after, "{name}: both generations are equal at the common position:\n{output}");
        assert!(output.contains(&format!("retired {old}: table dropped true")), "{old} retired:\n{output}");
        assert_eq!(active(&env, name).await, Some(ProjectionInstance::new(name, 2)), "{name} serves g2");
    }
    // Traffic after the switches lands in the new generations through the live workers.
    traffic.wait_published(traffic.published() + 60).await;
    let published = traffic.stop().await;

    // The difference was meant (a repair): rebuilt again, the unfinished generation dropped.
    // Without traffic no batch of the build group comes to load the replay: the worker's
    // replay task must load the ranges of the generation it builds.
    let (ok, output) = run_prismctl(
        &env,
        &[
            "rebuild",
            "cart_view",
            "--mode",
            "blue-green",
            "--yes",
            "--retire-grace",
            "1",
            "--timeout",
            "60",
            "--abandon-previous",
            "--allow-changes",
        ],
    )
    .await;
    assert!(ok && output.contains("dropped abandoned cart_view_g2"), "{output}");
    assert_eq!(active(&env, "cart_view").await, Some(ProjectionInstance::new("cart_view", 3)));

    let summary = wait_for_oracle(&env, &events[..published], Duration::from_secs(120)).await;
    eprintln!("after the blue/green rebuild of every read model: {published} events published, {summary:?}");
    live.stop(&env).await;
}
