//! [`PartitionReader`]: one partition read from an offset in large chunks, outside any consumer
//! group — what a bulk replay (`prism-projector`'s replays of a rebuilt instance) reads with.
//!
//! Nothing is committed and no group is joined: the replay's progress is kept in PostgreSQL
//! with what it wrote, so the reader only has to deliver the partition's messages in order
//! from where it is told to start. One reader reads one partition at a time and can be
//! pointed at the next ([`PartitionReader::retarget`]).

use std::time::Duration;

use prism_config::KafkaConfig;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::client::base_client_config;
use crate::error::KafkaError;
use crate::message::ConsumedMessage;

/// How long a read waits for the broker before it reports the broker as unreachable.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// librdkafka's prefetch for a reader, set unless `kafka.properties` names them: what it
/// fetches ahead of the chunk being read, while the chunk before it lands.
///
/// - `queued.max.messages.kbytes`, 1 MiB. With librdkafka's default (64 MiB, fetches of up to
///   `max.partition.fetch.bytes`) each reader fetched a whole range ahead, and a queued message
///   keeps the whole fetch response it came in alive: a worker rebuilding every read model of
///   the shop at once, in place, peaked at 191–202 MiB (BENCHMARKS.md, "A rebuild's memory"),
///   with 4 MiB at 150, 2 MiB at 117 and 1 MiB at 108–112, at the same rate within the runs'
///   noise. librdkafka also asks for no more than its queue holds in one fetch.
/// - `fetch.queue.backoff.ms`, 10 ms, as for the group's consumer: how long librdkafka leaves a
///   partition unfetched after finding its queue full (1 s by default).
const REPLAY_PREFETCH: [(&str, &str); 2] =
    [("queued.max.messages.kbytes", "1024"), ("fetch.queue.backoff.ms", "10")];

/// The reader's client context: the end of the partition is how [`PartitionReader::read`]
/// learns a range ends early, not an error worth a log line; everything else is logged as
/// librdkafka's default context would.
struct ReplayContext;

impl ClientContext for ReplayContext {
    fn error(&self, error: RdKafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::trace!(reason, "replay reader reached the end of a partition");
        } else {
            tracing::warn!(error = %error, reason, "replay reader");
        }
    }
}

impl ConsumerContext for ReplayContext {}

/// One partition, read in order from a given offset.
pub struct PartitionReader {
    consumer: StreamConsumer<ReplayContext>,
    bootstrap: String,
    topic: String,
    partition: i32,
}

impl std::fmt::Debug for PartitionReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PartitionReader({}/{})", self.topic, self.partition)
    }
}

/// How large a chunk [`PartitionReader::read`] returns at most: a number of messages, and
/// bytes of their keys, values and headers (the chunk ends with the message that reaches it,
/// so it may pass the byte bound by that message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSize {
    /// Messages.
    pub messages: usize,
    /// Bytes.
    pub bytes: usize,
}

/// A chunk read: its messages and the offset after it.
#[derive(Debug)]
pub struct Chunk {
    /// The messages, in offset order, all before the end asked for.
    pub messages: Vec<ConsumedMessage>,
    /// The offset after the chunk: the last message's offset + 1, or the end asked for when the
    /// partition holds nothing more before it.
    pub next: i64,
}

/// The reader's librdkafka configuration.
fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = base_client_config(kafka, "replay");
    config
        // librdkafka wants a group id for a consumer; this one is never joined or committed.
        .set("group.id", "prism-replay")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        // A replay reads a backlog: no wait at the end of the log, and fetches as large as the
        // prefetch below lets librdkafka ask for.
        .set("max.partition.fetch.bytes", (8 * 1024 * 1024).to_string())
        .set("fetch.wait.max.ms", "10");
    for (property, value) in REPLAY_PREFETCH {
        if !kafka.properties.contains_key(property) {
            config.set(property, value);
        }
    }
    config
}

impl PartitionReader {
    /// A reader of `topic`/`partition` positioned at `from` (or at the earliest offset still in
    /// the log, when `from` is no longer there).
    pub fn open(kafka: &KafkaConfig, topic: &str, partition: i32, from: i64) -> Result<Self, KafkaError> {
        let consumer: StreamConsumer<ReplayContext> =
            client_config(kafka).create_with_context(ReplayContext)?;
        let reader =
            Self { consumer, bootstrap: kafka.bootstrap_servers.clone(), topic: topic.to_owned(), partition };
        reader.seek(from)?;
        Ok(reader)
    }

    /// Points the reader at another partition of the topic it read, from `from`: a replay of
    /// many ranges reuses one client instead of connecting a new one for each (and waiting for
    /// the old one's threads to end). Another topic works too, but first waits for that
    /// topic's metadata (about 0.4 s measured), longer than a new client takes.
    pub fn retarget(&mut self, topic: &str, partition: i32, from: i64) -> Result<(), KafkaError> {
        topic.clone_into(&mut self.topic);
        self.partition = partition;
        self.seek(from)
    }

    /// The partition the reader reads.
    pub fn partition(&self) -> (&str, i32) {
        (&self.topic, self.partition)
    }

    /// Stops fetching until the reader is pointed somewhere again ([`Self::retarget`],
    /// [`Self::seek`]). A client left assigned keeps fetching on its own: at the end of the
    /// log it asks the broker again every `fetch.wait.max.ms`, which cost the broker a quarter
    /// of a core per four idle readers.
    pub fn stop_fetching(&self) -> Result<(), KafkaError> {
        self.consumer.unassign()?;
        Ok(())
    }

    /// Moves the reader to `offset` (another loader moved the replay on meanwhile).
    pub fn seek(&self, offset: i64) -> Result<(), KafkaError> {
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))?;
        self.consumer.assign(&assignment)?;
        Ok(())
    }

    /// Reads the messages before `end`, up to `max` of them: the chunk ends with the message
    /// that reaches either of its bounds.
    pub async fn read(&self, end: i64, max: ChunkSize) -> Result<Chunk, KafkaError> {
        let mut messages = Vec::with_capacity(max.messages.min(65_536));
        let mut bytes = 0;
        loop {
            let received = tokio::time::timeout(READ_TIMEOUT, self.consumer.recv()).await.map_err(|_| {
                KafkaError::Unreachable {
                    bootstrap: self.bootstrap.clone(),
                    detail: format!(
                        "no message or end of {}/{} within {READ_TIMEOUT:?}",
                        self.topic, self.partition
                    ),
                }
            })?;
            match received {
                // A message fetched for the partition read before a retarget.
                Ok(message) if message.partition() != self.partition || message.topic() != self.topic => {}
                Ok(message) => {
                    let offset = message.offset();
                    if offset >= end {
                        return Ok(Chunk { messages, next: end });
                    }
                    let message = ConsumedMessage::from_kafka(&message);
                    bytes += message.size();
                    messages.push(message);
                    if offset + 1 >= end {
                        return Ok(Chunk { messages, next: end });
                    }
                    if messages.len() >= max.messages || bytes >= max.bytes {
                        return Ok(Chunk { messages, next: offset + 1 });
                    }
                }
                // The end of the log, before `end`: the rest of the range is not there (deleted
                // by retention after the range was registered, or the topic was recreated).
                Err(RdKafkaError::PartitionEOF(_)) => return Ok(Chunk { messages, next: end }),
                Err(err) => {
                    let err = KafkaError::from(err);
                    if !err.is_transient() {
                        return Err(err);
                    }
                    tracing::debug!(topic = %self.topic, partition = self.partition, error = %err, "replay read");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prism_config::{ConfigSources, PrismConfig};

    use super::*;

    fn kafka(properties: &[(&str, &str)]) -> KafkaConfig {
        let mut kafka = PrismConfig::load(&ConfigSources::default()).expect("default configuration").kafka;
        kafka.properties.extend(properties.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        kafka
    }

    #[test]
    fn a_readers_prefetch_is_small_unless_the_properties_say_otherwise() {
        let named: &[(&str, &str)] = &[("queued.max.messages.kbytes", "65536")];
        for (properties, queue) in [(&[][..], "1024"), (named, "65536")] {
            let config = client_config(&kafka(properties));
            assert_eq!(config.get("queued.max.messages.kbytes"), Some(queue), "with {properties:?}");
            assert_eq!(config.get("fetch.queue.backoff.ms"), Some("10"), "with {properties:?}");
        }
    }

    #[test]
    fn a_reader_commits_and_stores_no_offsets_whatever_the_properties_say() {
        let config =
            client_config(&kafka(&[("enable.auto.commit", "true"), ("enable.auto.offset.store", "true")]));
        assert_eq!(config.get("enable.auto.commit"), Some("false"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
    }
}
