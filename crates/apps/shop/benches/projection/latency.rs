//! Latency at a fixed load: half of Prism's steady rate from the throughput run (or
//! `PRISM_BENCH_LATENCY_RATE` events/s), for `PRISM_BENCH_LATENCY_SECONDS` (default 60).
//!
//! The projector, `shop-commands` (with its outbox relay) and `shop-query` run as processes,
//! release builds, default configuration. Two measurements run at the same time:
//!
//! - **produce → visible.** A producer publishes a fresh shop workload at the fixed rate (each
//!   event scheduled at `i / rate` seconds, stamped when it is handed to the producer client,
//!   `linger.ms` 5: librdkafka's default and what Prism's own relay uses; 1 ms cost the broker
//!   half again as much CPU, which the projector then lacked, for no shorter latency). A checker knows which row must show each event: the row the event's
//!   aggregate folds into (`order_summary`, `product_catalog`, `cart_view`, `user_profile`),
//!   whose `prism_version` reaches the event's version once it is applied, and that row's Redis
//!   entry, whose `ver` field does. It looks in PostgreSQL whenever the projector's
//!   `NOTIFY prism_applied_<schema>` (sent with every batch's commit) arrives — at most every
//!   5 ms, and every 20 ms without one — with one `= ANY($1)` query per read model over the
//!   oldest aggregates still pending (at most 512 each: asking about every pending aggregate
//!   made a look's cost grow with the backlog it measures, until the checker kept a PostgreSQL
//!   backend busy on its own; an event seen only once it is among the oldest 512 is counted
//!   late, never early); and in Redis every 2 ms, for the events already visible in
//!   PostgreSQL (the cache is written after the commit, never before). An event's latency is
//!   the start of the look that first saw it minus its stamp: the method adds at most one look
//!   interval plus one query (their durations are reported as its overhead).
//! - **command → visible** (read-your-writes through the whole path: HTTP command, event store
//!   and outbox, relay, broker, projector, query service). `PRISM_BENCH_CLIENTS` (default 16)
//!   clients, each with a user and a product of its own, loop: send a command (alternately a
//!   profile change and a price change), take the `version` it answers with, then read the
//!   entity from the query API with `?min_version=<version>` (the query service waits on the
//!   projector's notifications, up to `query.min_version_wait_ms`, and answers 202 when the
//!   wait ran out: the client then asks again). Latency = from the command's answer to the
//!   query's 200. The clients' load comes on top of the producer's.
//!
//! The checker follows every `PRISM_BENCH_LATENCY_SAMPLE`-th event (default 10; 1 follows all):
//! its looks are PostgreSQL and Redis work on the machine being measured, and following every
//! event of a high rate made them a load of their own, larger as the backlog they measure grew.
//! Which events are followed depends only on their position in the stream, not on anything
//! about them, so the sample's percentiles estimate those of all events.
//!
//! Percentiles are over every followed event and every command of the run; the time series
//! (per second: count, p50, p99, max) is what the plot shows.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use prism_events::Event;
use prism_projections::FeedKind;
use prism_testkit::TestEnv;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::binaries::{Binaries, Service};
use crate::procs::{self, Services};

/// What to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Events per second the producer publishes.
    pub rate: f64,
    /// How long, seconds.
    pub seconds: u64,
    /// Command-then-read clients.
    pub clients: usize,
    /// The checker follows every this many-th produced event (1: all of them).
    pub sample_every: usize,
    /// Print the projector's batch metrics after the run.
    pub show_batches: bool,
}

/// Latencies of one kind, in milliseconds, with when they started (seconds from the start).
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// (seconds since start, milliseconds).
    pub samples: Vec<(f64, f64)>,
}

/// p50, p99 and max of some milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// How many.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// Nearest-rank percentiles of `values`.
pub fn percentiles(mut values: Vec<f64>) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_by(f64::total_cmp);
    let rank = |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    Percentiles { count: values.len(), p50: rank(0.50), p99: rank(0.99), max: values[values.len() - 1] }
}

impl Series {
    /// Over the whole run.
    pub fn percentiles(&self) -> Percentiles {
        percentiles(self.samples.iter().map(|(_, ms)| *ms).collect())
    }

    /// Per second of the run.
    pub fn per_second(&self) -> Vec<(u64, Percentiles)> {
        let mut buckets: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
        for (at, ms) in &self.samples {
            buckets.entry(at.max(0.0) as u64).or_default().push(*ms);
        }
        buckets.into_iter().map(|(second, values)| (second, percentiles(values))).collect()
    }
}

/// The latency run's figures.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Events per second asked for.
    pub target_rate: f64,
    /// Events per second the producer achieved.
    pub produced_rate: f64,
    /// Events produced.
    pub produced: usize,
    /// Seconds the producer ran.
    pub seconds: f64,
    /// The checker followed every this many-th event.
    pub sample_every: usize,
    /// Produce → visible in PostgreSQL.
    pub produce_pg: Series,
    /// Produce → visible in Redis.
    pub produce_redis: Series,
    /// Events never seen visible (within 30 s after the run).
    pub not_visible: usize,
    /// Command answered → visible through the query API.
    pub command_visible: Series,
    /// Command sent → answered.
    pub command_answer: Series,
    /// Commands per second the clients achieved (each command is one event).
    pub command_rate: f64,
    /// Clients.
    pub clients: usize,
    /// Reads answered 202 (the wait for the version ran out) and asked again.
    pub stale_answers: usize,
    /// Commands or reads that failed.
    pub errors: usize,
    /// Duration of one PostgreSQL look of the checker, ms.
    pub pg_look: Percentiles,
    /// Duration of one Redis look of the checker, ms.
    pub redis_look: Percentiles,
    /// A plain read through the query API (no version to wait for), ms: the read's own cost.
    pub plain_read: Percentiles,
    /// Each process's CPU over the run, in cores busy (CPU seconds per second): where the
    /// machine's time went while the latencies were measured.
    pub cores: Vec<(&'static str, f64)>,
    /// PostgreSQL's execution time by statement over the run (empty when the server does not
    /// track statements): what a batch costs the database at this rate, against the
    /// throughput run's full batches.
    pub statements: Vec<crate::statements::KindTime>,
}

/// Where an aggregate type's events become visible.
#[derive(Clone)]
struct Target {
    /// `SELECT <key>, prism_version FROM <view> WHERE <key> = ANY($1)`.
    sql: String,
    /// Redis key prefix of its entries, when cached.
    cache_prefix: Option<String>,
}

/// Most aggregates one PostgreSQL look asks about per read model: the oldest pending ones.
const LOOK_AT_MOST: usize = 512;

/// One event waiting to be seen.
struct Pending {
    /// Its place in the order the checker learned of events.
    seq: u64,
    version: i64,
    sent: Instant,
    pg: Option<Instant>,
}

/// What the producer tells the checker about each event it handed to the client.
struct Sent {
    target: usize,
    aggregate: Uuid,
    version: i64,
    at: Instant,
}

/// Runs the latency measurement with the projector and both services running.
pub async fn run(
    env: &TestEnv,
    binaries: &Binaries,
    services: &Services,
    work: &Path,
    settings: &Settings,
) -> anyhow::Result<Outcome> {
    println!(
        "latency: {:.0} events/s for {} s, {} command-then-read clients ...",
        settings.rate, settings.seconds, settings.clients
    );
    let overrides = crate::binaries::projector_overrides()?;
    let overrides: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let projector = Service::start(
        &binaries.projector,
        env,
        "PRISM__PROJECTOR__LISTEN",
        &overrides,
        work.join("latency-projector.log"),
    )
    .await
    .context("starting shop-projector")?;
    let commands = Service::start(
        &binaries.commands,
        env,
        "PRISM__COMMANDS__LISTEN",
        &[],
        work.join("latency-commands.log"),
    )
    .await
    .context("starting shop-commands")?;
    let query =
        Service::start(&binaries.query, env, "PRISM__QUERY__LISTEN", &[], work.join("latency-query.log"))
            .await
            .context("starting shop-query")?;
    let processes = [
        ("the broker", services.broker),
        ("PostgreSQL", services.postgres),
        ("Redis", services.redis),
        ("shop-projector", projector.pid()),
        ("shop-commands (and its relay)", commands.pid()),
        ("shop-query", query.pid()),
        ("the benchmark (producer, checker, clients)", Some(std::process::id())),
    ];
    let outcome = measure(env, &commands.base, &query.base, settings, (&processes, services)).await;
    // The batches the projector made under this load: what its latency is made of.
    let metrics = reqwest::get(format!("{}/metrics", projector.base)).await?.text().await?;
    std::fs::write(work.join("latency-projector-metrics.txt"), &metrics)?;
    if settings.show_batches {
        for line in
            metrics.lines().filter(|l| l.contains("batch") && !l.contains("_bucket") && !l.starts_with('#'))
        {
            println!("  {line}");
        }
    }
    query.stop().await;
    commands.stop().await;
    projector.stop().await;
    outcome
}

/// CPU seconds so far of each of `processes` (PostgreSQL with its backends, see [`procs`]).
fn cpu_of(processes: &[(&'static str, Option<u32>)], services: &Services) -> Vec<Option<f64>> {
    let sample = services.sample(None);
    processes
        .iter()
        .map(|(_, pid)| match *pid {
            pid if pid == services.postgres => sample.postgres,
            Some(pid) => procs::cpu_seconds(pid),
            None => None,
        })
        .collect()
}

/// The processes whose CPU the run measures, and the services they are among.
type Measured<'a> = (&'a [(&'static str, Option<u32>)], &'a Services);

async fn measure(
    env: &TestEnv,
    commands: &str,
    query: &str,
    settings: &Settings,
    (processes, services): Measured<'_>,
) -> anyhow::Result<Outcome> {
    // Where each aggregate type's events show: the read model its fold feeds.
    let instances = env.active_instances().await?;
    let mut targets: Vec<Target> = Vec::new();
    let mut target_of: HashMap<&'static str, usize> = HashMap::new();
    for model in env.app.read_models() {
        for feed in model.feeds() {
            if !matches!(feed.kind, FeedKind::Fold(_)) || target_of.contains_key(feed.source.as_str()) {
                continue;
            }
            let instance =
                instances.iter().find(|i| i.projection == model.name()).context("no active generation")?;
            let key = model.key_columns()[0];
            target_of.insert(feed.source.as_str(), targets.len());
            targets.push(Target {
                sql: format!("SELECT {key}, prism_version FROM {} WHERE {key} = ANY($1)", model.name()),
                cache_prefix: model
                    .cache_kind()
                    .map(|k| instance.cache_prefix(k, &env.config.redis.key_prefix)),
            });
        }
    }
    let count = (settings.rate * settings.seconds as f64).ceil() as usize;
    let events = shop::testing::workload::Workload::generate(20_261_203, count);
    for event in &events {
        anyhow::ensure!(
            target_of.contains_key(event.meta.aggregate_type.as_str()),
            "no read model folds {} events",
            event.meta.aggregate_type
        );
    }

    let pg = env.pg().await?;
    // The looks are prepared once and soon run a cached generic plan; chosen while the tables
    // were small, it would scan every row of a table growing by thousands a second, making the
    // measurement a load on the database it measures. Priced out, as the engine's sessions do.
    pg.batch_execute("SET enable_seqscan = off").await?;
    let mut statements = Vec::new();
    for target in &targets {
        statements.push(pg.prepare(&target.sql).await?);
    }
    let redis = prism_testkit::services::redis_connection(&env.config.redis.url).await?;
    let (listener, notifications) = listen(env).await?;

    let (sent_tx, sent_rx) = tokio::sync::mpsc::unbounded_channel::<Sent>();
    // CPU over the producer's run, which is what the latencies are measured under (not over the
    // workload's generation before it, nor the checker's wait for the last events after it).
    let tracked = crate::statements::reset(&env.pg().await?).await;
    let cpu_before = cpu_of(processes, services);
    let t0 = Instant::now();
    let checker = tokio::spawn(check(pg, statements, targets.clone(), redis, notifications, sent_rx, t0));
    let clients =
        tokio::spawn(clients(commands.to_owned(), query.to_owned(), settings.clients, settings.seconds, t0));
    let produced = produce(env, &events, &target_of, settings, sent_tx, t0).await?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu_after = cpu_of(processes, services);
    let statements = if tracked { crate::statements::read(&env.pg().await?).await? } else { Vec::new() };
    let cores: Vec<(&'static str, f64)> = processes
        .iter()
        .zip(cpu_before.iter().zip(&cpu_after))
        .filter_map(|((name, _), (before, after))| Some((*name, procs::delta(*before, *after)? / seconds)))
        .collect();
    let (produce_pg, produce_redis, not_visible, pg_look, redis_look) = checker.await??;
    drop(listener);
    let mut outcome = clients.await??;
    outcome.target_rate = settings.rate;
    outcome.produced = produced;
    outcome.produced_rate = produced as f64 / seconds;
    outcome.seconds = seconds;
    outcome.sample_every = settings.sample_every.max(1);
    outcome.produce_pg = produce_pg;
    outcome.produce_redis = produce_redis;
    outcome.not_visible = not_visible;
    outcome.pg_look = pg_look;
    outcome.redis_look = redis_look;
    outcome.plain_read = plain_reads(commands, query).await?;
    outcome.cores = cores;
    outcome.statements = statements;
    Ok(outcome)
}

/// A connection that LISTENs on the projector's "batch committed" channel (each
/// notification arrives as a `()`); keep the client as long as notifications are wanted.
async fn listen(
    env: &TestEnv,
) -> anyhow::Result<(tokio_postgres::Client, tokio::sync::mpsc::UnboundedReceiver<()>)> {
    let url =
        format!("{}?options=-csearch_path%3D{}", env.services.database_url(), env.config.postgres.schema);
    let (client, mut connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                let _ = tx.send(());
            }
        }
    });
    let channel = prism_read_store::read_models::applied_channel(&env.config.postgres.schema);
    client.batch_execute(&format!("LISTEN \"{channel}\"")).await?;
    Ok((client, rx))
}

/// Publishes `events` at `rate`, each stamped as it is handed to the producer client.
async fn produce(
    env: &TestEnv,
    events: &[Event],
    target_of: &HashMap<&'static str, usize>,
    settings: &Settings,
    sent: tokio::sync::mpsc::UnboundedSender<Sent>,
    t0: Instant,
) -> anyhow::Result<usize> {
    let producer: FutureProducer =
        prism_kafka::base_client_config(&env.config.kafka, "bench-latency-producer")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()?;
    let (delivery_tx, mut delivery_rx) = tokio::sync::mpsc::unbounded_channel();
    let deliveries = tokio::spawn(async move {
        let mut failed = 0usize;
        while let Some(delivery) = delivery_rx.recv().await {
            let delivery: rdkafka::producer::DeliveryFuture = delivery;
            if !matches!(delivery.await, Ok(Ok(_))) {
                failed += 1;
            }
        }
        failed
    });
    let sample_every = settings.sample_every.max(1);
    for (i, event) in events.iter().enumerate() {
        // Sleeping per event would wake the producer tens of thousands of times a second on a
        // machine it shares with everything measured: it sleeps once it is a millisecond ahead.
        let due = t0 + Duration::from_secs_f64(i as f64 / settings.rate);
        if due > Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(due.into()).await;
        }
        let topic = event.meta.aggregate_type.topic(env.topic_prefix());
        let key = event.meta.aggregate_id.to_string();
        let value = event.to_json_bytes();
        let headers = prism_testkit::kafka::event_headers(event);
        let record = FutureRecord::to(&topic).key(&key).payload(&value).headers(headers);
        let at = Instant::now();
        let delivery = producer
            .send_result(record)
            .map_err(|(err, _)| anyhow::anyhow!("producing to {topic}: {err}"))?;
        let _ = delivery_tx.send(delivery);
        if i % sample_every != 0 {
            continue;
        }
        let _ = sent.send(Sent {
            target: target_of[event.meta.aggregate_type.as_str()],
            aggregate: event.meta.aggregate_id,
            version: i64::try_from(event.meta.aggregate_version)?,
            at,
        });
    }
    drop(delivery_tx);
    let failed = deliveries.await?;
    if failed > 0 {
        bail!("{failed} of {} latency events were not delivered", events.len());
    }
    Ok(events.len())
}

type CheckOutcome = (Series, Series, usize, Percentiles, Percentiles);

/// Follows every produced event until it is visible in PostgreSQL and in Redis.
async fn check(
    pg: tokio_postgres::Client,
    statements: Vec<tokio_postgres::Statement>,
    targets: Vec<Target>,
    mut redis: redis::aio::MultiplexedConnection,
    mut notifications: tokio::sync::mpsc::UnboundedReceiver<()>,
    mut sent_rx: tokio::sync::mpsc::UnboundedReceiver<Sent>,
    t0: Instant,
) -> anyhow::Result<CheckOutcome> {
    // Per target and aggregate: its events not yet seen in both stores, in version order.
    let mut pending: Vec<HashMap<Uuid, VecDeque<Pending>>> = targets.iter().map(|_| HashMap::new()).collect();
    // Per target: (seq, aggregate) of the events not yet seen in PostgreSQL, oldest first.
    let mut unseen_order: Vec<VecDeque<(u64, Uuid)>> = targets.iter().map(|_| VecDeque::new()).collect();
    let mut next_seq = 0u64;
    let mut waiting = 0usize;
    let (mut to_pg, mut to_redis) = (Series::default(), Series::default());
    let (mut pg_looks, mut redis_looks) = (Vec::new(), Vec::new());
    let mut producing = true;
    let mut pg_due = false;
    let mut last_pg = Instant::now();
    let mut last_redis = Instant::now();
    let mut drain_deadline: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            sent = sent_rx.recv(), if producing => match sent {
                Some(s) => {
                    next_seq += 1;
                    pending[s.target].entry(s.aggregate).or_default().push_back(Pending { seq: next_seq, version: s.version, sent: s.at, pg: None });
                    unseen_order[s.target].push_back((next_seq, s.aggregate));
                    waiting += 1;
                }
                None => {
                    producing = false;
                    drain_deadline = Some(Instant::now() + Duration::from_secs(30));
                }
            },
            Some(()) = notifications.recv() => pg_due = true,
            _ = tick.tick() => {}
        }
        if !producing && waiting == 0 {
            break;
        }
        if drain_deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        // PostgreSQL: after a notification (at most every 5 ms), or every 20 ms regardless.
        let since = last_pg.elapsed();
        if (pg_due && since >= Duration::from_millis(5)) || since >= Duration::from_millis(20) {
            pg_due = false;
            last_pg = Instant::now();
            let look = Instant::now();
            let mut queries = Vec::new();
            for (index, by_aggregate) in pending.iter().enumerate() {
                let unseen = |(seq, id): &(u64, Uuid)| {
                    by_aggregate
                        .get(id)
                        .is_some_and(|events| events.iter().any(|e| e.seq == *seq && e.pg.is_none()))
                };
                let order = &mut unseen_order[index];
                while order.front().is_some_and(|entry| !unseen(entry)) {
                    order.pop_front();
                }
                let mut ids: Vec<Uuid> = Vec::new();
                let mut asked_for = std::collections::HashSet::new();
                for (_, id) in order.iter().filter(|entry| unseen(entry)) {
                    if ids.len() == LOOK_AT_MOST {
                        break;
                    }
                    if asked_for.insert(*id) {
                        ids.push(*id);
                    }
                }
                if !ids.is_empty() {
                    let statement = &statements[index];
                    let pg = &pg;
                    queries.push(async move { (index, pg.query(statement, &[&ids]).await) });
                }
            }
            let asked = !queries.is_empty();
            for (index, rows) in futures::future::join_all(queries).await {
                for row in rows? {
                    let (id, version): (Uuid, i64) = (row.get(0), row.get(1));
                    if let Some(events) = pending[index].get_mut(&id) {
                        for event in events.iter_mut().filter(|e| e.pg.is_none() && e.version <= version) {
                            event.pg = Some(look);
                        }
                    }
                }
            }
            if asked {
                pg_looks.push(look.elapsed().as_secs_f64() * 1e3);
            }
        }
        // Redis, every 2 ms: the entries of events PostgreSQL already shows.
        if last_redis.elapsed() < Duration::from_millis(2) {
            continue;
        }
        last_redis = Instant::now();
        let look = Instant::now();
        let mut keys: Vec<(usize, Uuid, String)> = Vec::new();
        for (index, by_aggregate) in pending.iter_mut().enumerate() {
            let Some(prefix) = &targets[index].cache_prefix else {
                // Not cached: visible once PostgreSQL shows it.
                for events in by_aggregate.values_mut() {
                    while events.front().is_some_and(|e| e.pg.is_some()) {
                        if let Some(e) = events.pop_front() {
                            let seen = e.pg.unwrap_or(look);
                            to_pg.samples.push((e.sent.duration_since(t0).as_secs_f64(), ms(seen - e.sent)));
                            waiting -= 1;
                        }
                    }
                }
                continue;
            };
            for (id, events) in by_aggregate.iter() {
                if events.front().is_some_and(|e| e.pg.is_some()) {
                    keys.push((index, *id, format!("{prefix}{id}")));
                }
            }
        }
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for (_, _, key) in &keys {
                pipe.cmd("HGET").arg(key).arg("ver");
            }
            let versions: Vec<Option<i64>> = pipe.query_async(&mut redis).await?;
            for ((index, id, _), cached) in keys.iter().zip(versions) {
                let Some(cached) = cached else { continue };
                if let Some(events) = pending[*index].get_mut(id) {
                    while events.front().is_some_and(|e| e.pg.is_some() && e.version <= cached) {
                        if let Some(e) = events.pop_front() {
                            let at = e.sent.duration_since(t0).as_secs_f64();
                            to_pg.samples.push((at, ms(e.pg.unwrap_or(look) - e.sent)));
                            to_redis.samples.push((at, ms(look - e.sent)));
                            waiting -= 1;
                        }
                    }
                }
            }
            redis_looks.push(look.elapsed().as_secs_f64() * 1e3);
        }
        for by_aggregate in &mut pending {
            by_aggregate.retain(|_, events| !events.is_empty());
        }
    }
    Ok((to_pg, to_redis, waiting, percentiles(pg_looks), percentiles(redis_looks)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The clients' figures, before the producer's are added.
async fn clients(
    commands: String,
    query: String,
    n: usize,
    seconds: u64,
    t0: Instant,
) -> anyhow::Result<Outcome> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(4 * n).build()?;
    let deadline = t0 + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for client in 0..n {
        let (http, commands, query) = (http.clone(), commands.clone(), query.clone());
        tasks.push(tokio::spawn(
            async move { one_client(http, &commands, &query, client, t0, deadline).await },
        ));
    }
    let mut outcome = Outcome { clients: n, ..Outcome::default() };
    let mut cycles = 0usize;
    for task in tasks {
        let client = task.await??;
        cycles += client.cycles;
        outcome.command_visible.samples.extend(client.visible);
        outcome.command_answer.samples.extend(client.answer);
        outcome.stale_answers += client.stale;
        outcome.errors += client.errors;
    }
    outcome.command_rate = cycles as f64 / t0.elapsed().as_secs_f64().min(seconds as f64).max(1e-9);
    Ok(outcome)
}

#[derive(Default)]
struct ClientFigures {
    cycles: usize,
    visible: Vec<(f64, f64)>,
    answer: Vec<(f64, f64)>,
    stale: usize,
    errors: usize,
}

/// Posts `body` (or patches, for `patch`) and returns the version the command service answers.
async fn command(
    http: &reqwest::Client,
    url: &str,
    body: Value,
    patch: bool,
) -> anyhow::Result<(String, i64)> {
    let request = if patch { http.patch(url) } else { http.post(url) };
    let answer = request.json(&body).send().await?;
    let status = answer.status();
    let reply: Value = answer.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url} answered {status}: {reply}");
    }
    let id = reply["aggregate_id"].as_str().context("no aggregate_id in the reply")?.to_owned();
    let version = reply["version"].as_i64().with_context(|| format!("no version in the reply {reply}"))?;
    Ok((id, version))
}

async fn one_client(
    http: reqwest::Client,
    commands: &str,
    query: &str,
    client: usize,
    t0: Instant,
    deadline: Instant,
) -> anyhow::Result<ClientFigures> {
    let tag = Uuid::new_v4().simple().to_string();
    let (user, _) = command(
        &http,
        &format!("{commands}/users"),
        json!({"email": format!("bench-{client}-{tag}@example.com"), "display_name": format!("Bench {client}")}),
        false,
    )
    .await
    .context("registering a client's user")?;
    let (product, _) = command(
        &http,
        &format!("{commands}/products"),
        json!({"sku": format!("BENCH-{client}-{}", &tag[..8]), "name": format!("Bench product {client}"), "price_cents": 1000, "stock": 100}),
        false,
    )
    .await
    .context("listing a client's product")?;
    let mut figures = ClientFigures::default();
    let mut n = 0u64;
    while Instant::now() < deadline {
        n += 1;
        let (url, body, patch, read) = if n % 2 == 0 {
            (
                format!("{commands}/users/{user}"),
                json!({"display_name": format!("Bench {client} {n}")}),
                true,
                format!("{query}/users/{user}"),
            )
        } else {
            (
                format!("{commands}/products/{product}/price"),
                json!({"price_cents": 1000 + n}),
                false,
                format!("{query}/products/{product}"),
            )
        };
        let sent = Instant::now();
        let version = match command(&http, &url, body, patch).await {
            Ok((_, version)) => version,
            Err(err) => {
                figures.errors += 1;
                if figures.errors == 1 {
                    eprintln!("client {client}: {err:#}");
                }
                continue;
            }
        };
        let answered = Instant::now();
        loop {
            let answer = http.get(format!("{read}?min_version={version}")).send().await?;
            match answer.status().as_u16() {
                200 => {
                    let served: i64 = answer
                        .headers()
                        .get("x-prism-version")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if served < version {
                        bail!("{read} served version {served} for min_version {version}");
                    }
                    break;
                }
                202 => figures.stale += 1,
                other => bail!("{read}?min_version={version} answered {other}"),
            }
        }
        let visible = Instant::now();
        let at = answered.duration_since(t0).as_secs_f64();
        figures.visible.push((at, ms(visible - answered)));
        figures.answer.push((sent.duration_since(t0).as_secs_f64(), ms(answered - sent)));
        figures.cycles += 1;
    }
    Ok(figures)
}

/// 200 sequential reads of one entity without a version to wait for: what a read costs.
async fn plain_reads(commands: &str, query: &str) -> anyhow::Result<Percentiles> {
    let http = reqwest::Client::new();
    let (user, version) = command(
        &http,
        &format!("{commands}/users"),
        json!({"email": format!("bench-plain-{}@example.com", Uuid::new_v4().simple()), "display_name": "Plain"}),
        false,
    )
    .await?;
    // Wait until it is visible, then time reads that have nothing to wait for.
    let _ = http.get(format!("{query}/users/{user}?min_version={version}")).send().await?;
    let mut times = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let answer = http.get(format!("{query}/users/{user}")).send().await?;
        anyhow::ensure!(answer.status().is_success(), "a plain read answered {}", answer.status());
        let _ = answer.bytes().await?;
        times.push(ms(started.elapsed()));
    }
    Ok(percentiles(times))
}

/// The per-second series of the three latencies, as CSV.
pub fn series_csv(outcome: &Outcome) -> String {
    let mut out = String::from("series,second,count,p50_ms,p99_ms,max_ms\n");
    for (name, series) in [
        ("produce_to_postgres", &outcome.produce_pg),
        ("produce_to_redis", &outcome.produce_redis),
        ("command_to_query", &outcome.command_visible),
    ] {
        for (second, p) in series.per_second() {
            out.push_str(&format!("{name},{second},{},{:.3},{:.3},{:.3}\n", p.count, p.p50, p.p99, p.max));
        }
    }
    out
}

/// Every sample, as CSV (for a closer look; not kept in the repository).
pub fn samples_csv(outcome: &Outcome) -> String {
    let mut out = String::from("series,at_s,latency_ms\n");
    for (name, series) in [
        ("produce_to_postgres", &outcome.produce_pg),
        ("produce_to_redis", &outcome.produce_redis),
        ("command_to_query", &outcome.command_visible),
        ("command_answer", &outcome.command_answer),
    ] {
        for (at, latency) in &series.samples {
            out.push_str(&format!("{name},{at:.4},{latency:.3}\n"));
        }
    }
    out
}
