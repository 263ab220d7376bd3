//! The contenders the benchmark implements itself. Each runs as a child process of the
//! benchmark binary (started with `PRISM_BENCH_ROLE` set), so its CPU time and memory are its
//! own, exactly as for the real binaries it is compared with. A child consumes until it is
//! stopped; the parent decides when it is done from the group's committed offsets.
//!
//! - `consume`: reads every message and commits its position (asynchronously, every 100 ms),
//!   nothing else — the ceiling the broker and the client library set.
//! - `sink`: the in-repo per-record upsert sink: what a JDBC sink in upsert mode does with
//!   `pk.mode=record_key`. Every record's value is upserted into a table per topic keyed by the
//!   record key, one statement per record (pipelined on one connection, as a JDBC batch is),
//!   one transaction per polled batch of up to 500, offsets committed after the transaction.
//!   It keeps the *last document* per key; no fold, no version check, no cache.
//! - `ceiling`: the set-write ceiling (see [`crate::ceiling`]).
//!
//! Settings come from the environment: the `PRISM__*` variables of the benchmark's
//! environment (broker, schema), `PRISM_BENCH_GROUP`, `PRISM_BENCH_TOPICS` (comma-separated),
//! `PRISM_BENCH_PG_URL` (a connection string whose search path is the benchmark's schema).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use prism_config::{ConfigSources, PrismConfig};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

/// The variable that makes the benchmark binary run one contender.
pub const ROLE: &str = "PRISM_BENCH_ROLE";
/// Records per sink transaction: the consumer's default `max.poll.records` (500), which bounds
/// a JDBC sink's batch.
pub const SINK_BATCH: usize = 500;

/// What every child reads from its environment.
pub struct ChildSettings {
    /// Configuration from the `PRISM__*` variables.
    pub config: PrismConfig,
    /// The consumer group.
    pub group: String,
    /// The topics.
    pub topics: Vec<String>,
    /// A connection string to the benchmark's schema.
    pub pg_url: String,
}

fn var(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set (the benchmark sets it for its children)"))
}

impl ChildSettings {
    fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            config: PrismConfig::load(&ConfigSources::from_process(Vec::new()))?,
            group: var("PRISM_BENCH_GROUP")?,
            topics: var("PRISM_BENCH_TOPICS")?.split(',').map(str::to_owned).collect(),
            pg_url: var("PRISM_BENCH_PG_URL").unwrap_or_default(),
        })
    }

    /// A subscribed consumer of the group, starting at the earliest offsets.
    pub fn consumer(&self) -> anyhow::Result<BaseConsumer> {
        let consumer = prism_testkit::kafka::consumer(&self.config, &self.group, &[])?;
        let names: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        Ok(consumer)
    }
}

/// Runs the child `role` until it is killed.
pub fn run(role: &str) -> anyhow::Result<()> {
    let settings = ChildSettings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match role {
        "consume" => consume(&settings),
        "sink" => runtime.block_on(sink(&settings)),
        "ceiling" => runtime.block_on(crate::ceiling::run(&settings)),
        other => anyhow::bail!("{ROLE}={other}: expected consume, sink or ceiling"),
    }
}

/// Positions to commit: next offset per (topic index, partition).
#[derive(Default)]
pub struct Positions(BTreeMap<(usize, i32), i64>);

impl Positions {
    /// Records that everything before `offset + 1` of the partition is done.
    pub fn done(&mut self, topic: usize, partition: i32, offset: i64) {
        let next = self.0.entry((topic, partition)).or_insert(0);
        *next = (*next).max(offset + 1);
    }

    /// The positions as a commit request.
    pub fn list(&self, topics: &[String]) -> anyhow::Result<TopicPartitionList> {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.0 {
            tpl.add_partition_offset(&topics[*topic], *partition, Offset::Offset(*next))?;
        }
        Ok(tpl)
    }
}

/// The index of `topic` in `topics`.
pub fn topic_index(topics: &[String], topic: &str) -> anyhow::Result<usize> {
    topics.iter().position(|t| t == topic).with_context(|| format!("a message from unexpected topic {topic}"))
}

/// Consume only.
fn consume(settings: &ChildSettings) -> anyhow::Result<()> {
    let consumer = settings.consumer()?;
    let mut positions = Positions::default();
    let mut dirty = false;
    let mut last_commit = Instant::now();
    let mut bytes = 0usize;
    loop {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            // Touch the value, as any consumer that does something with it would.
            bytes = bytes.wrapping_add(message.payload().map_or(0, <[u8]>::len));
            positions.done(
                topic_index(&settings.topics, message.topic())?,
                message.partition(),
                message.offset(),
            );
            dirty = true;
        }
        if dirty && last_commit.elapsed() >= Duration::from_millis(100) {
            consumer.commit(&positions.list(&settings.topics)?, CommitMode::Async)?;
            dirty = false;
            last_commit = Instant::now();
        }
        std::hint::black_box(bytes);
    }
}

/// One consumed record: topic index, partition, offset, key, value.
type Record = (usize, i32, i64, String, Vec<u8>);

/// The per-record upsert sink's table for a topic.
pub fn sink_table(topic: &str) -> String {
    format!("sink_{}", topic.replace(['.', '-'], "_"))
}

/// The per-record upsert sink.
async fn sink(settings: &ChildSettings) -> anyhow::Result<()> {
    let client = prism_testkit::services::connect_pg(&settings.pg_url).await?;
    let mut statements = Vec::new();
    for topic in &settings.topics {
        let sql = format!(
            "INSERT INTO {} (key, value, kafka_offset) VALUES ($1, $2::text::jsonb, $3) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, kafka_offset = EXCLUDED.kafka_offset",
            sink_table(topic)
        );
        statements.push(client.prepare(&sql).await?);
    }
    let consumer = settings.consumer()?;
    let mut positions = Positions::default();
    loop {
        let batch = poll_batch(&consumer, &settings.topics)?;
        if batch.is_empty() {
            continue;
        }
        client.batch_execute("BEGIN").await?;
        let writes = batch.iter().map(|(topic, _, offset, key, value)| {
            let statement = &statements[*topic];
            let value = String::from_utf8_lossy(value);
            let client = &client;
            async move { client.execute(statement, &[key, &value.as_ref(), offset]).await }
        });
        for result in futures::future::join_all(writes).await {
            result?;
        }
        client.batch_execute("COMMIT").await?;
        for (topic, partition, offset, ..) in &batch {
            positions.done(*topic, *partition, *offset);
        }
        consumer.commit(&positions.list(&settings.topics)?, CommitMode::Sync)?;
    }
}

/// Up to [`SINK_BATCH`] records, waiting at most 100 ms for the first.
fn poll_batch(consumer: &BaseConsumer, topics: &[String]) -> anyhow::Result<Vec<Record>> {
    let mut batch = Vec::new();
    let mut wait = Duration::from_millis(100);
    while batch.len() < SINK_BATCH {
        match consumer.poll(wait) {
            Some(message) => {
                let message = message?;
                batch.push((
                    topic_index(topics, message.topic())?,
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
