//! The producer Prism publishes with (outbox relay, dead letters): idempotent, `acks=all`,
//! ordered per partition, and patient: a message waits for the broker rather than failing
//! while the broker is away, because failing one message and sending the next would put an
//! aggregate's events out of order.

use std::time::Duration;

use prism_config::KafkaConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::client::base_client_config;
use crate::error::KafkaError;

/// Where a message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The partition the key hashed to.
    pub partition: i32,
    /// The offset the broker assigned.
    pub offset: i64,
}

/// An idempotent, ordered producer.
#[derive(Clone)]
pub struct EventProducer {
    inner: FutureProducer,
}

impl std::fmt::Debug for EventProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventProducer").finish_non_exhaustive()
    }
}

impl EventProducer {
    /// Creates the producer. `max_message_bytes` should match the topics' limit.
    pub fn new(kafka: &KafkaConfig, role: &str, max_message_bytes: usize) -> Result<Self, KafkaError> {
        let inner: FutureProducer = base_client_config(kafka, role)
            // Idempotence gives exactly-once, in-order writes per partition across retries.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // 0 = no local timeout: a message is retried until the broker takes it. A message
            // given up on while later ones succeed would reorder an aggregate's stream.
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set("message.max.bytes", max_message_bytes.to_string())
            .create()?;
        Ok(Self { inner })
    }

    /// Queues one message and waits for the broker's acknowledgement. Messages queued in
    /// sequence for one partition are written in that sequence.
    pub async fn send(
        &self,
        topic: &str,
        key: &[u8],
        value: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<Delivered, KafkaError> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header { key: name, value: Some(*value) });
        }
        let record = FutureRecord::to(topic).key(key).payload(value).headers(owned);
        // Queue::Never: when the local queue is full, wait for room rather than fail.
        let (partition, offset) = self
            .inner
            .send(record, Timeout::Never)
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(err, _)| KafkaError::Client(err))?;
        Ok(Delivered { partition, offset })
    }

    /// Waits until every queued message is acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout).map_err(KafkaError::Client)
    }
}
