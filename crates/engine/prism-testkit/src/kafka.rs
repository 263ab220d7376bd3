//! Raw Kafka access for tests: producing bytes (including hostile ones) straight into a
//! topic, consuming with plain rdkafka consumers, removing a test's topics.

use std::time::Duration;

use prism_config::PrismConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// An idempotent producer for tests (acks=all, ordered per partition).
pub fn producer(config: &PrismConfig) -> anyhow::Result<FutureProducer> {
    Ok(prism_kafka::base_client_config(&config.kafka, "test-producer")
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.max.bytes", config.topics.max_message_bytes.to_string())
        .create()?)
}

/// Produces one message and waits for the broker's acknowledgement; returns
/// (partition, offset).
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) -> anyhow::Result<(i32, i64)> {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(rdkafka::message::Header { key: name, value: Some(*value) });
    }
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(owned);
    if let Some(key) = key {
        record = record.key(key);
    }
    if let Some(value) = value {
        record = record.payload(value);
    }
    let delivery = producer
        .send(record, Duration::from_secs(30))
        .await
        .map_err(|(err, _)| anyhow::anyhow!("producing to {topic}: {err}"))?;
    Ok((delivery.partition, delivery.offset))
}

/// The headers the engine's producers put on an event's message: its type and schema version.
pub fn event_headers(event: &prism_events::Event) -> OwnedHeaders {
    let version = event.meta.schema_version.to_string();
    OwnedHeaders::new()
        .insert(rdkafka::message::Header {
            key: prism_events::HEADER_EVENT_TYPE,
            value: Some(event.event_type()),
        })
        .insert(rdkafka::message::Header { key: prism_events::HEADER_SCHEMA_VERSION, value: Some(&version) })
}

/// Publishes events as the outbox relay does (key = aggregate id, value = envelope JSON,
/// `event_type`/`schema_version` headers), in order, and waits for every acknowledgement.
/// Returns (partition, offset) per event.
pub async fn publish_events(
    producer: &FutureProducer,
    topic_prefix: &str,
    events: &[prism_events::Event],
) -> anyhow::Result<Vec<(i32, i64)>> {
    let mut deliveries = Vec::with_capacity(events.len());
    for event in events {
        let topic = event.meta.aggregate_type.topic(topic_prefix);
        let key = event.meta.aggregate_id.to_string();
        let value = event.to_json_bytes();
        let headers = event_headers(event);
        let mut record = FutureRecord::to(&topic).key(&key).payload(&value).headers(headers);
        // Enqueue synchronously, in order: per-partition order is the enqueue order.
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
                Err((err, _)) => anyhow::bail!("producing to {topic}: {err}"),
            }
        }
    }
    let mut positions = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let delivered = delivery.await.map_err(|_| anyhow::anyhow!("producer dropped a message"))?;
        let delivered = delivered.map_err(|(err, _)| anyhow::anyhow!("delivery failed: {err}"))?;
        positions.push((delivered.partition, delivered.offset));
    }
    Ok(positions)
}

/// A consumer in `group` with manual commits, starting at the earliest offset, speaking the
/// configured group protocol (`kafka.group_protocol`).
pub fn consumer(config: &PrismConfig, group: &str, extra: &[(&str, &str)]) -> anyhow::Result<BaseConsumer> {
    let mut client: ClientConfig = prism_kafka::base_client_config(&config.kafka, "test-consumer");
    client
        .set("group.id", group)
        .set("group.protocol", config.kafka.group_protocol.as_librdkafka())
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    if config.kafka.group_protocol == prism_config::GroupProtocol::Classic {
        client.set("session.timeout.ms", "10000").set("heartbeat.interval.ms", "1000");
    }
    for (key, value) in extra {
        client.set(*key, *value);
    }
    Ok(client.create()?)
}

/// Topic-partition assignment of a consumer, as (topic, partition) pairs, sorted.
pub fn assignment(consumer: &BaseConsumer) -> Vec<(String, i32)> {
    let mut pairs: Vec<(String, i32)> = consumer
        .assignment()
        .map(|tpl| tpl.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect())
        .unwrap_or_default();
    pairs.sort();
    pairs
}

/// The committed offset of `group` for every partition of `topics` (absent when nothing was
/// committed), read from the broker.
pub async fn committed_offsets(
    config: &PrismConfig,
    group: &str,
    topics: &[String],
) -> anyhow::Result<std::collections::BTreeMap<(String, i32), i64>> {
    let consumer = consumer(config, group, &[])?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for topic in &topics {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    tpl.add_partition(topic, p.id());
                }
            }
        }
        let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
                _ => None,
            })
            .collect())
    })
    .await?
}

/// The high watermark (end offset) of every partition of `topics`.
pub async fn end_offsets(
    config: &PrismConfig,
    topics: &[String],
) -> anyhow::Result<std::collections::BTreeMap<(String, i32), i64>> {
    let consumer = consumer(config, "prism-test-watermarks", &[])?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut out = std::collections::BTreeMap::new();
        for topic in &topics {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                    out.insert((topic.clone(), p.id()), high);
                }
            }
        }
        anyhow::Ok(out)
    })
    .await?
}

/// The node leading every partition of `topics` (`-1` while it has none), and the partition's
/// high watermark: what a fault test needs to pick the busiest broker.
pub async fn leaders(
    config: &PrismConfig,
    topics: &[String],
) -> anyhow::Result<std::collections::BTreeMap<(String, i32), (i32, i64)>> {
    let consumer = consumer(config, "prism-test-leaders", &[])?;
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut out = std::collections::BTreeMap::new();
        for topic in &topics {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    let (_, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                    out.insert((topic.clone(), p.id()), (p.leader(), high));
                }
            }
        }
        anyhow::Ok(out)
    })
    .await?
}
