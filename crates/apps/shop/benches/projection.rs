//! Projection throughput, side by side, in one run on one machine and one set of topics:
//!
//! 1. **consume only**: a consumer group reads every event and does nothing else — the
//!    ceiling the broker sets;
//! 2. **per-record upsert sink**: what the Kafka Connect JDBC sink does in upsert mode
//!    (`insert.mode=upsert`, `pk.mode=record_key`): every record's value is upserted into a
//!    table per topic keyed by the record key, one statement per record, one transaction per
//!    polled batch, offsets committed after the transaction. It keeps the *last document*
//!    per key; it does not fold, check versions, or write a cache;
//! 3. **Prism**: the projector, maintaining all five read models (with their version gates)
//!    in PostgreSQL and the hot ones in Redis, committing offsets after landing.
//!
//! Each starts from the beginning of the same topics under its own consumer group and is
//! timed until its group has committed every partition to the end. The results, with the
//! ratios and the command that reproduces them, replace the marked section of
//! `BENCHMARKS.md`.
//!
//! `cargo bench -p shop --bench projection` (needs the dev stack: `ops/dev-stack up`).
//! `PRISM_BENCH_EVENTS=N` changes the number of events (default 200 000);
//! `PRISM_BENCH_SHOW_BATCHES=1` also prints the projector's batch count, sizes and durations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use prism_testkit::kafka::{committed_offsets, consumer, end_offsets, producer, publish_events};
use shop::testing::workload::Workload;
use prism_testkit::TestEnv;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

const DEFAULT_EVENTS: usize = 200_000;
/// Records per sink transaction: the consumer's default `max.poll.records` (500), which
/// bounds a JDBC sink's batch.
const SINK_BATCH: usize = 500;
const MARK_BEGIN: &str = "<!-- projection-benchmark:begin -->";
const MARK_END: &str = "<!-- projection-benchmark:end -->";

/// One contender's result.
struct Run {
    name: &'static str,
    what: &'static str,
    elapsed: Duration,
    events: usize,
}

impl Run {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

fn main() -> anyhow::Result<()> {
    let events_wanted = std::env::var("PRISM_BENCH_EVENTS")
        .ok()
        .map(|v| v.parse::<usize>().context("PRISM_BENCH_EVENTS must be a number"))
        .transpose()?
        .unwrap_or(DEFAULT_EVENTS);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(events_wanted))
}

async fn bench(events_wanted: usize) -> anyhow::Result<()> {
    // Four partitions per topic as in the tests; Prism's default of 12 changes little here.
    let app = shop_model::application();
    let env = TestEnv::with_overrides(&app, &[("PRISM__TOPICS__PARTITIONS", "4"), ("PRISM__LOG__FILTER", "warn")])
        .await?;
    let topics = env.event_topics();
    let events = Workload::generate(7, events_wanted);
    println!("publishing {} events to {} topics ...", events.len(), topics.len());
    let producer = producer(&env.config)?;
    publish_events(&producer, env.topic_prefix(), &events).await?;
    let ends = end_offsets(&env.config, &topics).await?;
    let total: i64 = ends.values().sum();
    anyhow::ensure!(
        total as usize == events.len(),
        "topics hold {total} messages, {} were published",
        events.len()
    );

    let mut runs = Vec::new();

    println!("consume only ...");
    let group = env.group("bench-consume");
    let elapsed = timed_consumer(&env, &group, &topics, &ends, None).await?;
    runs.push(Run {
        name: "consume only",
        what: "read every event, nothing else (broker ceiling)",
        elapsed,
        events: events.len(),
    });

    println!("per-record upsert sink ...");
    let pg = env.pg().await?;
    for topic in &topics {
        pg.batch_execute(&format!(
            "CREATE TABLE {} (key text PRIMARY KEY, value jsonb NOT NULL, kafka_offset bigint NOT NULL)",
            sink_table(topic)
        ))
        .await?;
    }
    let group = env.group("bench-sink");
    let elapsed = timed_consumer(&env, &group, &topics, &ends, Some(&env)).await?;
    let sink_rows: i64 = {
        let mut n = 0;
        for topic in &topics {
            n += pg
                .query_one(&format!("SELECT count(*) FROM {}", sink_table(topic)), &[])
                .await?
                .get::<_, i64>(0);
        }
        n
    };
    runs.push(Run {
        name: "per-record upsert sink",
        what: "JDBC-sink style: last document per key, 1 statement per record, 1 txn per 500",
        elapsed,
        events: events.len(),
    });

    println!("Prism projector ...");
    let started = Instant::now();
    let projector = prism_projector::Embedded::start(env.config.clone(), app.clone());
    let group = prism_projector::group_id(&env.config);
    wait_until_committed(&env, &group, &topics, &ends).await?;
    let elapsed = started.elapsed();
    projector.stop(Duration::from_secs(60)).await?;
    if std::env::var("PRISM_BENCH_SHOW_BATCHES").is_ok_and(|v| v == "1") {
        // The projector's batch metrics, for looking into where its time goes.
        let rendered = prism_runtime::telemetry::install().render();
        for line in rendered.lines().filter(|l| l.contains("batch_") && !l.contains("_bucket")) {
            println!("{line}");
        }
    }
    let summary = env
        .wait_for_oracle(
            &shop::testing::oracle::fold(&events),
            prism_testkit::oracle::CacheCheck::Complete, Duration::from_secs(60))
        .await
        .context("the benchmarked projection must also be right")?;
    runs.push(Run {
        name: "Prism projector",
        what: "5 read models + version gates in PostgreSQL, hot ones in Redis, commit after landing",
        elapsed,
        events: events.len(),
    });

    let sink = &runs[1];
    let prism = &runs[2];
    let mut table = String::new();
    table.push_str("| contender | does | events | seconds | events/s | vs upsert sink |\n|---|---|---:|---:|---:|---:|\n");
    for run in &runs {
        table.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.0} | {:.2}× |\n",
            run.name,
            run.what,
            run.events,
            run.elapsed.as_secs_f64(),
            run.rate(),
            run.rate() / sink.rate()
        ));
    }
    let details = format!(
        "Upsert sink: {sink_rows} rows (one per key). Prism: {} PostgreSQL rows and {} Redis entries, equal to the \
         oracle's fold of the events.\n\nPrism / upsert sink throughput: **{:.2}×**; Prism / consume-only: {:.2}×.",
        summary.rows,
        summary.cache_entries,
        prism.rate() / sink.rate(),
        prism.rate() / runs[0].rate()
    );
    println!("\n{table}\n{details}");
    write_results(&table, &details, events.len())?;
    Ok(())
}

fn sink_table(topic: &str) -> String {
    format!("sink_{}", topic.replace(['.', '-'], "_"))
}

/// Reads every topic from the start under `group` until the group committed the end of
/// every partition. With `sink`, upserts each polled batch in one transaction first.
async fn timed_consumer(
    env: &TestEnv,
    group: &str,
    topics: &[String],
    ends: &BTreeMap<(String, i32), i64>,
    sink: Option<&TestEnv>,
) -> anyhow::Result<Duration> {
    let client = match sink {
        Some(env) => Some(env.pg().await?),
        None => None,
    };
    let consumer = consumer(&env.config, group, &[])?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let started = Instant::now();
    let mut position: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let deadline = started + Duration::from_secs(600);
    loop {
        let batch = poll_batch(&consumer)?;
        if let (Some(client), false) = (&client, batch.is_empty()) {
            upsert(client, &batch).await?;
        }
        if !batch.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (topic, partition, offset, _, _) in &batch {
                position.insert((topic.clone(), *partition), offset + 1);
            }
            for ((topic, partition), next) in &position {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            }
            consumer.commit(&tpl, CommitMode::Sync)?;
        }
        let done = ends.iter().all(|(tp, end)| *end == 0 || position.get(tp) == Some(end));
        if done {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(Instant::now() < deadline, "{group} did not reach the end within 10 minutes");
    }
}

type Record = (String, i32, i64, String, Vec<u8>);

/// Up to [`SINK_BATCH`] records, waiting at most 100 ms for the first.
fn poll_batch(consumer: &BaseConsumer) -> anyhow::Result<Vec<Record>> {
    let mut batch = Vec::new();
    let mut wait = Duration::from_millis(100);
    while batch.len() < SINK_BATCH {
        match consumer.poll(wait) {
            Some(message) => {
                let message = message?;
                batch.push((
                    message.topic().to_owned(),
                    message.partition(),
                    message.offset(),
                    String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    message.payload().unwrap_or_default().to_vec(),
                ));
                wait = Duration::ZERO;
            }
            None => break,
        }
    }
    Ok(batch)
}

/// One transaction, one upsert statement per record (pipelined, as a JDBC batch is).
async fn upsert(client: &tokio_postgres::Client, batch: &[Record]) -> anyhow::Result<()> {
    client.batch_execute("BEGIN").await?;
    let mut statements = BTreeMap::new();
    for (topic, ..) in batch {
        if !statements.contains_key(topic) {
            let sql = format!(
                "INSERT INTO {} (key, value, kafka_offset) VALUES ($1, $2::text::jsonb, $3) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, kafka_offset = EXCLUDED.kafka_offset",
                sink_table(topic)
            );
            statements.insert(topic.clone(), client.prepare(&sql).await?);
        }
    }
    let writes = batch.iter().map(|(topic, _, offset, key, value)| {
        let statement = &statements[topic];
        let value = String::from_utf8_lossy(value).into_owned();
        async move { client.execute(statement, &[key, &value, offset]).await }
    });
    for result in futures::future::join_all(writes).await {
        result?;
    }
    client.batch_execute("COMMIT").await?;
    Ok(())
}

async fn wait_until_committed(
    env: &TestEnv,
    group: &str,
    topics: &[String],
    ends: &BTreeMap<(String, i32), i64>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let committed = committed_offsets(&env.config, group, topics).await?;
        if ends.iter().all(|(tp, end)| *end == 0 || committed.get(tp) == Some(end)) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{group} did not commit the end within 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replaces the marked section of BENCHMARKS.md with this run's figures.
fn write_results(table: &str, details: &str, events: usize) -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let (Some(begin), Some(end)) = (text.find(MARK_BEGIN), text.find(MARK_END)) else {
        anyhow::bail!("{} lacks the {MARK_BEGIN} … {MARK_END} markers", path.display());
    };
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::env::consts::ARCH
    );
    let section = format!(
        "{MARK_BEGIN}\nMeasured {} UTC on {machine}, {events} events, one run, one machine (broker: the dev stack's Apache Kafka 4.4; \
         PostgreSQL and Redis local):\n\n{table}\n{details}\n\nReproduce: `ops/dev-stack up && cargo bench -p prism-bench --bench projection` \
         (`PRISM_BENCH_EVENTS=N` to change the size).\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M")
    );
    let updated = format!("{}{section}{}", &text[..begin], &text[end..]);
    std::fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))?;
    println!("results written to {}", path.display());
    Ok(())
}
