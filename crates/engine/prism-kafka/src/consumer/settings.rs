//! [`ConsumerSettings`]: one consumer group member's shape.

use std::time::Duration;

use prism_config::KafkaConfig;

/// How one consumer behaves.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Brokers and security.
    pub kafka: KafkaConfig,
    /// Client id suffix (e.g. `projector-order_summary_g1`).
    pub role: String,
    /// The consumer group.
    pub group_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Static membership id (`group.instance.id`), so a restarted member gets its partitions
    /// back without a rebalance.
    pub group_instance_id: Option<String>,
    /// Most messages per batch.
    pub batch_max_messages: usize,
    /// Most bytes per batch (of its messages' keys, values and headers): a batch closes before
    /// the message that would take it past this, unless that message is its first.
    pub batch_max_bytes: usize,
    /// Longest wait for a batch to fill once its first message arrived.
    pub batch_max_wait: Duration,
    /// How often librdkafka commits the stored offsets.
    pub commit_interval: Duration,
    /// Whether to commit at once when every worker has landed all it received.
    pub commit_when_caught_up: bool,
    /// Group session timeout under the classic protocol (under KIP-848 the broker's).
    pub session_timeout: Duration,
    /// How long an in-flight batch may run on after revocation or shutdown before it is
    /// aborted.
    pub shutdown_deadline: Duration,
    /// First retry delay after a transient failure.
    pub retry_initial_backoff: Duration,
    /// Longest retry delay.
    pub retry_max_backoff: Duration,
    /// Messages buffered for one partition above which it is paused.
    pub max_buffered_per_partition: usize,
    /// Bytes buffered for one partition above which it is paused, whatever the message count:
    /// with large messages this bound is reached first.
    pub max_buffered_bytes_per_partition: usize,
    /// Batches handled at once over all partitions of this member; a filled batch waits for
    /// its turn still counted in its partition's buffer.
    pub max_concurrent_batches: usize,
    /// Messages in the batches handled at once over all partitions of this member: a batch
    /// holds as many of them as it may grow to while it runs. Small batches (moderate traffic)
    /// use every turn; full ones (a backlog) only as many as this allows, which bounds the
    /// member's memory. At least `batch_max_messages`.
    pub max_messages_in_flight: usize,
    /// Bytes in the batches handled at once, as `max_messages_in_flight` counts messages: a
    /// batch holds room for the bytes it may grow to while it runs. At least `batch_max_bytes`;
    /// a single message larger than the whole budget runs with all of it.
    pub max_bytes_in_flight: usize,
}
