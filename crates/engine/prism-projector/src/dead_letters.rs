//! Copies dead letters to the dead-letter topic (`<topic>.dlq`), keyed like the original so a
//! parked chain stays in order, with the origin and the error in headers. PostgreSQL holds the
//! record of truth (`prismctl dlq`); the topic serves Kafka tooling and alerting.

use futures::future::try_join_all;
use prism_kafka::{EventProducer, KafkaError};
use prism_read_store::projection::DeadLetterRecord;

/// Header names on dead-letter messages.
pub mod headers {
    /// Topic the message came from.
    pub const ORIGIN_TOPIC: &str = "prism.origin.topic";
    /// Partition it came from.
    pub const ORIGIN_PARTITION: &str = "prism.origin.partition";
    /// Offset it came from.
    pub const ORIGIN_OFFSET: &str = "prism.origin.offset";
    /// Projection instance that dead-lettered it.
    pub const PROJECTION: &str = "prism.projection";
    /// `permanent` or `parked`.
    pub const ERROR_CLASS: &str = "prism.error.class";
    /// Bounded error kind.
    pub const ERROR_KIND: &str = "prism.error.kind";
    /// The error, for people.
    pub const ERROR_MESSAGE: &str = "prism.error.message";
    /// Id of the dead-letter record in PostgreSQL.
    pub const DEAD_LETTER_ID: &str = "prism.dead_letter.id";
}

/// Publishes `records` (of one source partition, in offset order) and waits for every
/// acknowledgement.
pub async fn publish(producer: &EventProducer, records: &[DeadLetterRecord]) -> Result<(), KafkaError> {
    let sends = records.iter().map(|record| async move {
        let topic = format!("{}.dlq", record.source_topic);
        let partition = record.source_partition.to_string();
        let offset = record.source_offset.to_string();
        let id = record.id.to_string();
        let headers: [(&str, &[u8]); 8] = [
            (headers::ORIGIN_TOPIC, record.source_topic.as_bytes()),
            (headers::ORIGIN_PARTITION, partition.as_bytes()),
            (headers::ORIGIN_OFFSET, offset.as_bytes()),
            (headers::PROJECTION, record.projection.as_bytes()),
            (headers::ERROR_CLASS, record.error_class.as_bytes()),
            (headers::ERROR_KIND, record.error_kind.as_bytes()),
            (headers::ERROR_MESSAGE, record.error_message.as_bytes()),
            (headers::DEAD_LETTER_ID, id.as_bytes()),
        ];
        producer
            .send(
                &topic,
                record.message_key.as_deref().unwrap_or_default(),
                record.message_value.as_deref().unwrap_or_default(),
                &headers,
            )
            .await
    });
    try_join_all(sends).await.map(|_| ())
}
