//! The peer: the Debezium JDBC sink connector (3.6.0.Final) in a Kafka Connect 4.4 standalone
//! worker, started through `ops/bench/connect/run` (its README says how and why it is set up
//! as it is). It upserts one row per aggregate into PostgreSQL, keyed by the record key.
//!
//! It cannot read Prism's envelopes: the sink needs Connect structs, i.e. JSON with an inline
//! schema. So the benchmark publishes the same events a second time, converted to that form
//! ([`record`]: the envelope's fields flat, the payload as a JSON string, one aggregate type
//! per topic, the aggregate id as the key), to topics of their own (`<prefix>connect.<aggregate
//! type>.events`, as many partitions as the event topics). Both profiles read those topics, each
//! under its own group (`connect-<name>`), into tables of their own in the benchmark's schema
//! (`dbzd_<topic>` with the connector's defaults, `dbzt_<topic>` tuned).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use prism_config::PrismConfig;
use prism_events::Event;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;

/// The key's Connect schema, serialised once (`ops/bench/connect/README.md`, "Record format").
const KEY_PREFIX: &str = r#"{"schema":{"type":"struct","fields":[{"field":"aggregate_id","type":"string","name":"io.debezium.data.Uuid"}]},"payload":"#;
/// The value's Connect schema: every envelope field, the payload a JSON string stored as jsonb.
const VALUE_PREFIX: &str = concat!(
    r#"{"schema":{"type":"struct","fields":["#,
    r#"{"field":"event_id","type":"string","name":"io.debezium.data.Uuid"},"#,
    r#"{"field":"event_type","type":"string"},"#,
    r#"{"field":"schema_version","type":"int32"},"#,
    r#"{"field":"aggregate_type","type":"string"},"#,
    r#"{"field":"aggregate_id","type":"string","name":"io.debezium.data.Uuid"},"#,
    r#"{"field":"aggregate_version","type":"int64"},"#,
    r#"{"field":"occurred_at","type":"string","name":"io.debezium.time.ZonedTimestamp"},"#,
    r#"{"field":"correlation_id","type":"string","name":"io.debezium.data.Uuid","optional":true},"#,
    r#"{"field":"causation_id","type":"string","name":"io.debezium.data.Uuid","optional":true},"#,
    r#"{"field":"payload","type":"string","name":"io.debezium.data.Json","parameters":{"__debezium.source.column.type":"JSONB"}}"#,
    r#"]},"payload":"#
);

/// The Connect topic of an aggregate type.
pub fn topic(prefix: &str, aggregate_type: &str) -> String {
    format!("{prefix}connect.{aggregate_type}.events")
}

/// An event as the Debezium sink reads it: (key, value).
pub fn record(event: &Event) -> (String, String) {
    let m = &event.meta;
    let key = format!("{KEY_PREFIX}{}}}", json!({"aggregate_id": m.aggregate_id}));
    let payload = json!({
        "event_id": m.event_id,
        "event_type": m.event_type,
        "schema_version": m.schema_version,
        "aggregate_type": m.aggregate_type.as_str(),
        "aggregate_id": m.aggregate_id,
        "aggregate_version": m.aggregate_version,
        "occurred_at": m.occurred_at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        "correlation_id": m.correlation_id,
        "causation_id": m.causation_id,
        "payload": event.payload().to_string(),
    });
    (key, format!("{VALUE_PREFIX}{payload}}}"))
}

/// Creates the Connect topics (same partitions as the event topics).
pub async fn create_topics(config: &PrismConfig, topics: &[String], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        prism_kafka::base_client_config(&config.kafka, "bench-admin").create()?;
    let new: Vec<NewTopic<'_>> =
        topics.iter().map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1))).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    for result in admin.create_topics(&new, &options).await? {
        if let Err((topic, err)) = result {
            bail!("creating topic {topic}: {err}");
        }
    }
    Ok(())
}

/// Publishes `events` in their Connect form, in order, and waits for every acknowledgement.
pub async fn publish(producer: &FutureProducer, prefix: &str, events: &[Event]) -> anyhow::Result<()> {
    let mut deliveries = Vec::with_capacity(events.len());
    for event in events {
        let topic = topic(prefix, event.meta.aggregate_type.as_str());
        let (key, value) = record(event);
        let mut record = FutureRecord::to(&topic).key(&key).payload(&value);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((err, returned))
                    if err.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    record = returned;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((err, _)) => bail!("producing to {topic}: {err}"),
            }
        }
    }
    for delivery in deliveries {
        delivery
            .await
            .map_err(|_| anyhow::anyhow!("producer dropped a message"))?
            .map_err(|(err, _)| anyhow::anyhow!("delivery failed: {err}"))?;
    }
    Ok(())
}

/// The run script.
pub fn script(repo: &Path) -> PathBuf {
    repo.join("ops/bench/connect/run")
}

/// Makes sure Java and the jars are there (`run --fetch-only`), before any clock starts.
pub fn prepare(repo: &Path) -> anyhow::Result<()> {
    let status = std::process::Command::new(script(repo))
        .arg("--fetch-only")
        .status()
        .context("running ops/bench/connect/run --fetch-only")?;
    anyhow::ensure!(
        status.success(),
        "ops/bench/connect/run --fetch-only failed ({status}): the Debezium peer needs Java 17+ and Maven (see its message \
         above); PRISM_BENCH_DEBEZIUM=0 leaves the peer out"
    );
    Ok(())
}

/// The JDBC URL of the benchmark's database with its schema as the current one.
pub fn jdbc_url(postgres_url: &str, schema: &str) -> anyhow::Result<(String, String)> {
    let config: tokio_postgres::Config = postgres_url.parse().context("the PostgreSQL URL")?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => bail!("the Debezium peer needs PostgreSQL over TCP, not {postgres_url}"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().context("the PostgreSQL URL names no database")?;
    let user = config.get_user().unwrap_or("postgres").to_owned();
    // sslmode=disable: Prism's own connections do not use TLS here either (the README says why).
    Ok((format!("jdbc:postgresql://{host}:{port}/{database}?sslmode=disable&currentSchema={schema}"), user))
}

/// The command that starts the peer with `profile` (`defaults` or `tuned`).
#[allow(clippy::too_many_arguments)]
pub fn command(
    repo: &Path,
    bootstrap: &str,
    topics: &[String],
    jdbc_url: &str,
    user: &str,
    profile: &str,
    name: &str,
    state: &Path,
) -> tokio::process::Command {
    let table_format = if profile == "tuned" { "dbzt_${topic}" } else { "dbzd_${topic}" };
    let mut command = tokio::process::Command::new(script(repo));
    command
        .arg("--bootstrap")
        .arg(bootstrap)
        .arg("--topics")
        .arg(topics.join(","))
        .arg("--pg-url")
        .arg(jdbc_url)
        .arg("--pg-user")
        .arg(user)
        .arg("--profile")
        .arg(profile)
        .arg("--name")
        .arg(name)
        .arg("--state")
        .arg(state)
        .arg("--table-format")
        .arg(table_format);
    command
}

/// The table the peer writes for `topic` with `profile`.
pub fn table(profile: &str, topic: &str) -> String {
    let prefix = if profile == "tuned" { "dbzt_" } else { "dbzd_" };
    format!("{prefix}{}", topic.replace('.', "_"))
}

/// Deletes the peer's consumer groups (they are not under the benchmark's prefix).
pub async fn delete_groups(config: &PrismConfig, groups: &[String]) -> anyhow::Result<()> {
    if groups.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        prism_kafka::base_client_config(&config.kafka, "bench-admin").create()?;
    let names: Vec<&str> = groups.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    admin.delete_groups(&names, &options).await?;
    Ok(())
}
