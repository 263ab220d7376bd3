//! Where groups stand on partitions: watermarks, committed offsets, the message at an offset,
//! offsets by time.

use std::time::Duration;

use prism_config::PrismConfig;

use super::{blocking, outside_consumer, settled, topic_partitions};
use crate::client::base_client_config;
use crate::error::KafkaError;

/// The consumer group of the projector workers: `projector.group` under `topics.prefix`
/// (the same name `prism_projector::group_id` gives the workers, and builders of blue/green
/// generations, whose `projector.group` is their build group).
///
/// A `projector.group` that already starts with the prefix is taken as is: operators often
/// write the full group name (`prism.projector` with prefix `prism.`), and prefixing it again
/// (`prism.prism.projector`) would silently start a new group with no committed offsets.
pub fn projector_group_id(config: &PrismConfig) -> String {
    let (prefix, group) = (config.topics.prefix.as_str(), config.projector.group.as_str());
    if group.starts_with(prefix) {
        group.to_owned()
    } else {
        format!("{prefix}{group}")
    }
}

/// Where one group stands on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Low watermark: the first offset still in the log.
    pub low: i64,
    /// High watermark: the offset the next message will get.
    pub high: i64,
    /// The group's committed offset (the next message it will read); `None` when the group
    /// never committed on this partition.
    pub committed: Option<i64>,
}

/// Low and high watermarks and the committed offset of `group`, for every partition of
/// `topics`, in topic then partition order. A topic the cluster does not know is an error.
pub async fn group_offsets(
    kafka: &prism_config::KafkaConfig,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<PartitionOffsets>, KafkaError> {
    use rdkafka::consumer::Consumer;
    let consumer = outside_consumer(kafka, "offsets", Some(group))?;
    let topics = topics.to_vec();
    let bootstrap = kafka.bootstrap_servers.clone();
    blocking(kafka, move || {
        let unreachable = |e: rdkafka::error::KafkaError| KafkaError::Unreachable {
            bootstrap: bootstrap.clone(),
            detail: e.to_string(),
        };
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut out = Vec::new();
        for topic in &topics {
            let partitions = topic_partitions(&consumer, topic, timeout).map_err(unreachable)?;
            if partitions.is_empty() {
                return Err(KafkaError::Topic {
                    topic: topic.clone(),
                    detail: "does not exist (create it with `prismctl topics ensure`)".into(),
                });
            }
            for partition in partitions {
                let (low, high) = settled(timeout, || consumer.fetch_watermarks(topic, partition, timeout))
                    .map_err(unreachable)?;
                tpl.add_partition(topic, partition);
                out.push(PartitionOffsets { topic: topic.clone(), partition, low, high, committed: None });
            }
        }
        let committed = consumer.committed_offsets(tpl, timeout)?;
        for element in committed.elements() {
            if let rdkafka::Offset::Offset(offset) = element.offset() {
                if let Some(entry) =
                    out.iter_mut().find(|p| p.topic == element.topic() && p.partition == element.partition())
                {
                    entry.committed = Some(offset);
                }
            }
        }
        out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        Ok(out)
    })
    .await
}

/// The message found at an offset (for the age of the oldest unconsumed event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageAt {
    /// Its offset (the first one at or after the requested offset still in the log).
    pub offset: i64,
    /// The broker's timestamp (create or log-append time), in ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Its value, for callers that read the event's own time from it.
    pub payload: Option<Vec<u8>>,
}

/// Reads the message at (or first after) each `(topic, partition, offset)`, without any
/// group (nothing is committed, no group is joined). Partitions with nothing there within
/// `timeout` are left out.
pub async fn messages_at(
    kafka: &prism_config::KafkaConfig,
    positions: &[(String, i32, i64)],
    timeout: Duration,
) -> Result<std::collections::BTreeMap<(String, i32), MessageAt>, KafkaError> {
    use rdkafka::consumer::Consumer;
    use rdkafka::Message;
    let mut out = std::collections::BTreeMap::new();
    if positions.is_empty() {
        return Ok(out);
    }
    let mut config = base_client_config(kafka, "peek");
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // librdkafka wants a group id for a consumer; this one is never joined or committed.
        .set("group.id", "prismctl-peek")
        .set("fetch.wait.max.ms", "100");
    let consumer: rdkafka::consumer::BaseConsumer = config.create()?;
    let positions = positions.to_vec();
    blocking(kafka, move || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (topic, partition, offset) in &positions {
            tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*offset))?;
        }
        consumer.assign(&tpl)?;
        let deadline = std::time::Instant::now() + timeout;
        while out.len() < positions.len() && std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(message)) => {
                    let key = (message.topic().to_owned(), message.partition());
                    out.entry(key).or_insert_with(|| MessageAt {
                        offset: message.offset(),
                        timestamp_ms: message.timestamp().to_millis(),
                        payload: message.payload().map(<[u8]>::to_vec),
                    });
                }
                Some(Err(err)) => tracing::debug!(error = %err, "peek poll"),
                None => {}
            }
        }
        Ok(out)
    })
    .await
}

/// For each `(topic, partition)`, the offset of the first message with a timestamp at or
/// after `timestamp_ms`; `None` when there is none (the caller uses the high watermark).
pub async fn offsets_for_timestamp(
    kafka: &prism_config::KafkaConfig,
    partitions: &[(String, i32)],
    timestamp_ms: i64,
    timeout: Duration,
) -> Result<std::collections::BTreeMap<(String, i32), Option<i64>>, KafkaError> {
    use rdkafka::consumer::Consumer;
    let consumer = outside_consumer(kafka, "offsets-for-times", None)?;
    let partitions = partitions.to_vec();
    blocking(kafka, move || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (topic, partition) in &partitions {
            tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(timestamp_ms))?;
        }
        let found = consumer.offsets_for_times(tpl, timeout)?;
        Ok(found
            .elements()
            .iter()
            .map(|e| {
                let offset = match e.offset() {
                    rdkafka::Offset::Offset(o) if o >= 0 => Some(o),
                    _ => None,
                };
                ((e.topic().to_owned(), e.partition()), offset)
            })
            .collect())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(prefix: &str, group: &str) -> PrismConfig {
        let env = vec![
            ("PRISM__TOPICS__PREFIX".to_owned(), prefix.to_owned()),
            ("PRISM__PROJECTOR__GROUP".to_owned(), group.to_owned()),
        ];
        PrismConfig::load(&prism_config::ConfigSources { env, ..Default::default() }).expect("configuration")
    }

    #[test]
    fn the_projector_group_carries_the_prefix_once() {
        assert_eq!(projector_group_id(&config("prism.", "projector")), "prism.projector");
        assert_eq!(
            projector_group_id(&config("prism.", "prism.projector")),
            "prism.projector",
            "not doubled"
        );
        assert_eq!(projector_group_id(&config("", "projector")), "projector");
        assert_eq!(projector_group_id(&config("shop.", "prism.projector")), "shop.prism.projector");
    }
}
