//! Reads from PostgreSQL read replicas (`query.replica_urls`), against a real primary and a
//! streaming hot standby made with `pg_basebackup` ([`PrivatePostgresPair`]), fed by the real
//! projector writing to the primary, with the standby's replay paused, delayed or stopped on
//! purpose:
//!
//! - read-your-writes stays exact: no answer to a `min_version` request is older than asked,
//!   every one within the wait bound, while the replica is behind; once it has the version, the
//!   replica answers;
//! - reads without `min_version` are served by the replica (its older rows while replay is
//!   paused; a replica row never refills the cache), converge once replay resumes, and skip a
//!   replica beyond `query.replica_max_lag_ms`;
//! - a stopped replica sends every read to the primary, the service stays ready with a degraded
//!   `replicas` check, also when it starts while the replica is down; a restarted replica
//!   serves again.
//!
//! Each test has its own application (read models named after the test), so the process-wide
//! metrics of tests running side by side do not mix.

use std::time::Duration;

use axum::Router;
use prism_config::PrismConfig;
use prism_events::{Event, EventRegistry};
use prism_projections::{Application, ReadModel, Unprojectable};
use prism_testkit::private::PrivatePostgresPair;
use prism_testkit::probe::{noted, Noted, PROBE};
use prism_testkit::TestEnv;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

/// `query.min_version_wait_ms` of the services under test: the time bound of read-your-writes.
const WAIT_MS: u64 = 10_000;
/// Slack over [`WAIT_MS`] for an answer to travel back on a busy machine.
const SLACK: Duration = Duration::from_secs(3);

/// One row per probe aggregate: its last number and how many events it folded. The projector
/// folds event `v` with `n = 10 * v`, so a row at version `v` has `count == v` and
/// `last == 10 * v`: the body says which version it is, independently of the header.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Note {
    id: Uuid,
    last: i64,
    count: i64,
}

fn note(current: Option<Note>, event: &Event) -> Result<Note, Unprojectable> {
    let noted = event.body::<Noted>().ok_or_else(|| Unprojectable::new("not a Noted event"))?;
    let count = current.map_or(0, |note| note.count) + 1;
    Ok(Note { id: event.meta.aggregate_id, last: noted.n, count })
}

const NOTE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS {table} (id uuid PRIMARY KEY, last bigint NOT NULL, count bigint NOT NULL)";

/// The test's application: `<test>_note` (not cached: every read reaches PostgreSQL) and
/// `<test>_card` (the same fold, cached in Redis).
struct Probe {
    app: Application,
    note: &'static str,
    card: &'static str,
}

fn application(test: &str) -> Probe {
    let note_name = prism_projections::intern(&format!("{test}_note"));
    let card_name = prism_projections::intern(&format!("{test}_card"));
    let events = EventRegistry::of::<Noted>().expect("the probe's events");
    let app = Application::new(
        prism_projections::intern(test),
        events,
        vec![
            ReadModel::new(note_name).table(NOTE_TABLE).key(&["id"]).fold(PROBE, note),
            ReadModel::new(card_name).table(NOTE_TABLE).key(&["id"]).cached("card").fold(PROBE, note),
        ],
    )
    .expect("the test application");
    Probe { app, note: note_name, card: card_name }
}

/// A query service of the test, stopped on drop of [`Service::stop`].
struct Service {
    base: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Service {
    /// Serves `app` over the test's primary with `replica_urls`, after `adjust`.
    async fn start(env: &TestEnv, app: &Application, adjust: impl FnOnce(&mut PrismConfig)) -> Self {
        let mut config = env.config.clone();
        config.query.min_version_wait_ms = WAIT_MS;
        adjust(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(prism_query::serve(config, app.clone(), Router::new(), listener, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        let service = Self { base, http, stop: Some(stop), task: Some(task) };
        // Serving once /readyz answers (serve connects before it binds routes).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = service.http.get(format!("{}/readyz", service.base)).send().await {
                if response.status() == StatusCode::OK {
                    return service;
                }
            }
            let task = service.task.as_ref().expect("running");
            assert!(!task.is_finished(), "the query service exited at start");
            assert!(Instant::now() < deadline, "the query service is not ready after 30s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /read-models/{read_model}/{id}`, with `?min_version=` when given.
    async fn read(&self, read_model: &str, id: Uuid, min_version: Option<i64>) -> Read {
        let mut url = format!("{}/read-models/{read_model}/{id}", self.base);
        if let Some(min) = min_version {
            url.push_str(&format!("?min_version={min}"));
        }
        let started = Instant::now();
        let response = self.http.get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status();
        let version = response
            .headers()
            .get("x-prism-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok());
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Read { id, asked: min_version, status, version, body, took: started.elapsed() }
    }

    /// The value of the sample of `name` whose labels include every one of `labels` (0 when
    /// there is none).
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.get_text("/metrics").await;
        text.lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .find(|line| labels.iter().all(|(k, v)| line.contains(&format!("{k}=\"{v}\""))))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    /// Waits until the `replicas` check's detail satisfies `expected`; `/readyz` must say
    /// ready, and the check pass, all along (replicas only ever degrade the service).
    async fn wait_for_replicas(&self, expected: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let response = self.http.get(format!("{}/readyz", self.base)).send().await.expect("readyz");
            let status = response.status();
            let body: Value = response.json().await.expect("readyz json");
            let check = &body["checks"]["replicas"];
            assert_eq!(status, StatusCode::OK, "replicas never make the service unready: {body}");
            assert_eq!(check["ok"], true, "the replicas check always passes: {body}");
            if expected(check["detail"].as_str().unwrap_or_default()) {
                return;
            }
            assert!(Instant::now() < deadline, "the replicas check still says {check} after 30s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get_text(&self, path: &str) -> String {
        self.http.get(format!("{}{path}", self.base)).send().await.expect("GET").text().await.expect("text")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stops within 30s")
            .expect("task")
            .expect("clean exit");
    }
}

/// One answer of the query service.
#[derive(Debug)]
struct Read {
    id: Uuid,
    asked: Option<i64>,
    status: StatusCode,
    version: Option<i64>,
    body: Value,
    took: Duration,
}

impl Read {
    /// The version the body shows (`count`), checked against the header and `last`.
    fn body_version(&self) -> Option<i64> {
        let count = self.body["count"].as_i64()?;
        assert_eq!(
            self.body["last"].as_i64(),
            Some(10 * count),
            "a row folded from {count} events: {self:?}"
        );
        assert_eq!(self.body["id"], Value::String(self.id.to_string()), "the row asked for: {self:?}");
        Some(count)
    }

    /// Fails unless this is a fresh answer at or above the version asked for, in time.
    fn assert_at_least_asked(&self) {
        let asked = self.asked.expect("a read-your-writes read");
        assert_eq!(self.status, StatusCode::OK, "a fresh answer within the bound: {self:?}");
        let version = self.version.expect("X-Prism-Version");
        assert!(version >= asked, "answered version {version}, older than the {asked} asked for: {self:?}");
        assert_eq!(self.body_version(), Some(version), "the body is the version the header says: {self:?}");
        assert!(
            self.took <= Duration::from_millis(WAIT_MS) + SLACK,
            "answered after {:?}: {self:?}",
            self.took
        );
    }
}

/// The `replica` label of the pair's standby.
fn replica_label(pair: &PrivatePostgresPair, env: &TestEnv) -> String {
    format!("127.0.0.1:{}/{}", pair.standby_port(), env.services.database)
}

fn replica_url(pair: &PrivatePostgresPair, env: &TestEnv) -> String {
    format!("{}/{}", pair.standby_url(), env.services.database)
}

/// Publishes event `version` of each aggregate.
async fn publish(env: &TestEnv, ids: &[Uuid], version: i64) {
    let producer = prism_testkit::kafka::producer(&env.config).expect("producer");
    let events: Vec<Event> =
        ids.iter().map(|id| noted(*id, u64::try_from(version).expect("a positive version"))).collect();
    prism_testkit::kafka::publish_events(&producer, env.topic_prefix(), &events).await.expect("publish");
}

/// Rows of `read_model` of the aggregates `ids` at `version` or later on the server at `url`
/// (the primary or the standby), read directly.
async fn rows_at(url: &str, env: &TestEnv, read_model: &str, ids: &[Uuid], version: i64) -> i64 {
    let client = prism_testkit::services::connect_pg(&format!(
        "{url}/{}?options=-csearch_path%3D{}",
        env.services.database, env.config.postgres.schema
    ))
    .await
    .expect("connect");
    client
        .query_one(
            &format!("SELECT count(*) FROM {read_model} WHERE id = ANY($1) AND prism_version >= $2"),
            &[&ids, &version],
        )
        .await
        .expect("count")
        .get(0)
}

/// Waits until the primary holds the rows of `read_model` of all aggregates `ids` at `version`
/// or later.
async fn wait_on_primary(
    pair: &PrivatePostgresPair,
    env: &TestEnv,
    read_model: &str,
    ids: &[Uuid],
    version: i64,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = ids.len() as i64;
    loop {
        let found = rows_at(&pair.primary_url(), env, read_model, ids, version).await;
        if found == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{found} of {expected} {read_model} rows at v{version} on the primary after 60s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads every id with `min_version` at once.
async fn read_all(service: &Service, read_model: &str, ids: &[Uuid], min_version: Option<i64>) -> Vec<Read> {
    futures::future::join_all(ids.iter().map(|id| service.read(read_model, *id, min_version))).await
}

fn ids(n: usize) -> Vec<Uuid> {
    (0..n).map(|_| Uuid::new_v4()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_your_writes_is_never_older_than_asked_while_the_replica_lags() {
    prism_testkit::init_logging();
    let pair = PrivatePostgresPair::start()
        .await
        .expect("a primary and a standby (`ops/dev-stack up` installs PostgreSQL)");
    let probe = application("rrywlag");
    let env = TestEnv::on(&probe.app, pair.services(), &[]).await.expect("test environment on the primary");
    let projector = prism_projector::Embedded::start(env.config.clone(), probe.app.clone());
    pair.wait_for_standby(Duration::from_secs(60)).await.expect("the schema reaches the standby");
    let replica = replica_url(&pair, &env);
    let service = Service::start(&env, &probe.app, |config| {
        config.query.replica_urls = vec![replica.clone()];
        // No lag bound: the replica is asked however far behind it is, so exactness rests on
        // the version check alone.
        config.query.replica_max_lag_ms = 0;
    })
    .await;
    let note = probe.note;

    // The projector consumes before the timed waves start.
    let warm = ids(1);
    publish(&env, &warm, 1).await;
    wait_on_primary(&pair, &env, note, &warm, 1).await;

    // Replay paused: the replica has none of what lands from now on.
    pair.pause_replay().await.expect("pause replay");
    let replica_reads = service
        .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
        .await;
    let aggregates = ids(20);
    for version in 1..=3 {
        publish(&env, &aggregates, version).await;
        // Right after the events reach the broker (before the projector lands them): the
        // version just written, and the one before it.
        let (fresh, older) = tokio::join!(
            read_all(&service, note, &aggregates, Some(version)),
            read_all(&service, note, &aggregates, Some((version - 1).max(1))),
        );
        for read in fresh.iter().chain(&older) {
            read.assert_at_least_asked();
        }
    }
    assert_eq!(
        rows_at(&pair.standby_url(), &env, note, &aggregates, 1).await,
        0,
        "the paused replica has none of the rows"
    );
    let behind = service
        .metric("prism_query_replica_fallbacks_total", &[("read_model", note), ("reason", "behind")])
        .await;
    let from_replica = service
        .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
        .await;
    assert!(behind >= 120.0, "every read asked the replica first and found it behind ({behind} fallbacks)");
    assert_eq!(from_replica, replica_reads, "no answer came from the paused replica");

    // Replay delayed instead: each commit shows on the replica a second after the primary.
    pair.set_apply_delay(Duration::from_secs(1)).await.expect("apply delay");
    pair.resume_replay().await.expect("resume replay");
    for version in 4..=6 {
        publish(&env, &aggregates, version).await;
        for read in read_all(&service, note, &aggregates, Some(version)).await {
            read.assert_at_least_asked();
        }
        // Once the replica has replayed the version, it answers the same requests itself.
        pair.wait_for_standby(Duration::from_secs(30)).await.expect("the delayed replica catches up");
        let before = service
            .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
            .await;
        for read in read_all(&service, note, &aggregates, Some(version)).await {
            read.assert_at_least_asked();
            assert_eq!(read.version, Some(version), "the replica has exactly this version: {read:?}");
        }
        let after = service
            .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
            .await;
        assert_eq!(after - before, aggregates.len() as f64, "every caught-up read was the replica's");
    }

    service.stop().await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_without_min_version_come_from_the_replica_and_converge_once_it_resumes() {
    prism_testkit::init_logging();
    let pair = PrivatePostgresPair::start()
        .await
        .expect("a primary and a standby (`ops/dev-stack up` installs PostgreSQL)");
    let probe = application("rrconverge");
    let env = TestEnv::on(&probe.app, pair.services(), &[]).await.expect("test environment on the primary");
    let projector = prism_projector::Embedded::start(env.config.clone(), probe.app.clone());
    let (note, card) = (probe.note, probe.card);
    let aggregates = ids(10);
    publish(&env, &aggregates, 1).await;
    wait_on_primary(&pair, &env, note, &aggregates, 1).await;
    wait_on_primary(&pair, &env, card, &aggregates, 1).await;
    pair.wait_for_standby(Duration::from_secs(60)).await.expect("version 1 reaches the standby");

    let replica = replica_url(&pair, &env);
    let unbounded = Service::start(&env, &probe.app, |config| {
        config.query.replica_urls = vec![replica.clone()];
        config.query.replica_max_lag_ms = 0;
    })
    .await;
    let bounded = Service::start(&env, &probe.app, |config| {
        config.query.replica_urls = vec![replica.clone()];
        config.query.replica_max_lag_ms = 3000;
    })
    .await;

    // Replay paused, version 2 lands on the primary (and in Redis, written by the projector).
    pair.pause_replay().await.expect("pause replay");
    publish(&env, &aggregates, 2).await;
    wait_on_primary(&pair, &env, note, &aggregates, 2).await;
    wait_on_primary(&pair, &env, card, &aggregates, 2).await;

    // Without a lag bound the replica answers, with what it has: version 1.
    let before = unbounded
        .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
        .await;
    for read in read_all(&unbounded, note, &aggregates, None).await {
        assert_eq!(
            (read.status, read.version, read.body_version()),
            (StatusCode::OK, Some(1), Some(1)),
            "{read:?}"
        );
    }
    let after = unbounded
        .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
        .await;
    assert!(after - before >= 10.0, "the reads were the replica's ({before} → {after})");

    // A cached read model: Redis has version 2. A key missing from Redis is read from the
    // replica (version 1) and must not be put back into Redis from there: the cache would then
    // hold version 1 until the aggregate changes again.
    let mut redis =
        prism_testkit::services::redis_connection(&env.config.redis.url).await.expect("redis connection");
    let evicted = aggregates[0];
    let key = format!("{}g1:card:{evicted}", env.config.redis.key_prefix);
    let deleted: i64 = redis::cmd("DEL").arg(&key).query_async(&mut redis).await.expect("DEL");
    assert_eq!(deleted, 1, "the projector cached {key}");
    let read = unbounded.read(card, evicted, None).await;
    assert_eq!(
        (read.status, read.version),
        (StatusCode::OK, Some(1)),
        "a miss served by the paused replica: {read:?}"
    );
    let exists: i64 = redis::cmd("EXISTS").arg(&key).query_async(&mut redis).await.expect("EXISTS");
    assert_eq!(exists, 0, "a replica's row never refills the cache");
    let read = unbounded.read(card, aggregates[1], None).await;
    assert_eq!((read.status, read.version), (StatusCode::OK, Some(2)), "a hit is Redis's: {read:?}");

    // With a bound of 3s the paused replica is skipped once it is that far behind: the primary
    // answers (version 2), and readiness says so while staying ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reads = read_all(&bounded, note, &aggregates, None).await;
        if reads.iter().all(|read| read.version == Some(2)) {
            for read in &reads {
                assert_eq!((read.status, read.body_version()), (StatusCode::OK, Some(2)), "{read:?}");
            }
            break;
        }
        assert!(Instant::now() < deadline, "the lagging replica still answers after 30s: {reads:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lagging = bounded
        .metric("prism_query_replica_fallbacks_total", &[("read_model", note), ("reason", "lagging")])
        .await;
    assert!(lagging >= 10.0, "{lagging} reads counted as skipping a lagging replica");
    bounded
        .wait_for_replicas(|detail| detail.starts_with("degraded:") && detail.contains("behind the primary"))
        .await;

    // Replay resumes: every read converges on version 2, from the replica, and the evicted
    // card (never refilled from the replica) is version 2 as well.
    pair.resume_replay().await.expect("resume replay");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let notes = read_all(&unbounded, note, &aggregates, None).await;
        let evicted_card = unbounded.read(card, evicted, None).await;
        if notes.iter().chain(std::iter::once(&evicted_card)).all(|read| read.version == Some(2)) {
            for read in notes.iter().chain(std::iter::once(&evicted_card)) {
                assert_eq!((read.status, read.body_version()), (StatusCode::OK, Some(2)), "{read:?}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reads did not converge within 60s of resuming: {notes:?} {evicted_card:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bounded.wait_for_replicas(|detail| detail == "1 of 1 serving reads").await;
    let before = bounded
        .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
        .await;
    for read in read_all(&bounded, note, &aggregates, None).await {
        assert_eq!((read.status, read.version), (StatusCode::OK, Some(2)), "{read:?}");
    }
    let after = bounded
        .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
        .await;
    assert!(after - before >= 10.0, "the caught-up replica serves the bounded service again");

    unbounded.stop().await;
    bounded.stop().await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_replica_sends_every_read_to_the_primary_and_the_service_stays_ready() {
    prism_testkit::init_logging();
    let mut pair = PrivatePostgresPair::start()
        .await
        .expect("a primary and a standby (`ops/dev-stack up` installs PostgreSQL)");
    let probe = application("rrstopped");
    let env = TestEnv::on(&probe.app, pair.services(), &[]).await.expect("test environment on the primary");
    let projector = prism_projector::Embedded::start(env.config.clone(), probe.app.clone());
    let note = probe.note;
    let aggregates = ids(10);
    publish(&env, &aggregates, 1).await;
    wait_on_primary(&pair, &env, note, &aggregates, 1).await;
    pair.wait_for_standby(Duration::from_secs(60)).await.expect("version 1 reaches the standby");
    let replica = replica_url(&pair, &env);
    let label = replica_label(&pair, &env);
    let service =
        Service::start(&env, &probe.app, |config| config.query.replica_urls = vec![replica.clone()]).await;
    service.wait_for_replicas(|detail| detail == "1 of 1 serving reads").await;
    let before = service
        .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
        .await;
    for read in read_all(&service, note, &aggregates, None).await {
        assert_eq!((read.status, read.version), (StatusCode::OK, Some(1)), "{read:?}");
    }
    let after = service
        .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
        .await;
    assert!(after - before >= 10.0, "a caught-up replica serves the reads");

    // The standby stops; version 2 lands on the primary.
    pair.stop_standby().await.expect("stop the standby");
    publish(&env, &aggregates, 2).await;
    for read in read_all(&service, note, &aggregates, Some(2)).await {
        read.assert_at_least_asked();
    }
    for read in read_all(&service, note, &aggregates, None).await {
        assert_eq!(
            (read.status, read.version, read.body_version()),
            (StatusCode::OK, Some(2), Some(2)),
            "{read:?}"
        );
    }
    service
        .wait_for_replicas(|detail| {
            detail.starts_with("degraded:") && detail.contains(&format!("{label} is down"))
        })
        .await;
    assert_eq!(service.metric("prism_query_replica_up", &[("replica", &label)]).await, 0.0);
    let unavailable = service
        .metric("prism_query_replica_fallbacks_total", &[("read_model", note), ("reason", "unavailable")])
        .await;
    let failed = service
        .metric("prism_query_replica_fallbacks_total", &[("read_model", note), ("reason", "failed")])
        .await;
    assert!(
        unavailable + failed >= 20.0,
        "reads went to the primary in place of the replica ({unavailable} + {failed})"
    );

    // A service started while the replica is down starts, ready and degraded, and answers.
    let late =
        Service::start(&env, &probe.app, |config| config.query.replica_urls = vec![replica.clone()]).await;
    late.wait_for_replicas(|detail| {
        detail.starts_with("degraded:") && detail.contains(&format!("{label} is down"))
    })
    .await;
    for read in read_all(&late, note, &aggregates, Some(2)).await {
        read.assert_at_least_asked();
    }

    // The standby comes back and catches up: both services read from it again.
    pair.restart_standby().await.expect("restart the standby");
    pair.wait_for_standby(Duration::from_secs(60)).await.expect("the standby catches up");
    for service in [&service, &late] {
        service.wait_for_replicas(|detail| detail == "1 of 1 serving reads").await;
        let before = service
            .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
            .await;
        for read in read_all(service, note, &aggregates, Some(2)).await {
            read.assert_at_least_asked();
        }
        let after = service
            .metric("prism_query_source_reads_total", &[("read_model", note), ("source", "replica")])
            .await;
        assert_eq!(after - before, aggregates.len() as f64, "the restarted replica answers");
        assert_eq!(service.metric("prism_query_replica_up", &[("replica", &label)]).await, 1.0);
    }

    service.stop().await;
    late.stop().await;
    projector.stop(Duration::from_secs(30)).await.expect("the projector exits cleanly");
}
