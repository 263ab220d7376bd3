//! Kafka administration, without ever joining a consumer group:
//!
//! - `topics`: create the event and dead-letter topics with the configured shape,
//!   idempotently, and report what exists (`prismctl topics ensure`).
//! - `offsets`: watermarks, committed offsets, messages at an offset and offsets by time, for
//!   `prismctl lag` and `prismctl offsets reset`.
//! - `membership`: whether a group has live members, and offset commits made from outside the
//!   group (a live group's members are never rebalanced by them).
//! - `describe_groups`: librdkafka's DescribeConsumerGroups, the one call that describes
//!   groups of both protocols (the classic DescribeGroups reports a KIP-848 group as `Dead`).

mod describe_groups;
mod membership;
mod offsets;
mod topics;

use std::time::Duration;

pub use describe_groups::{describe_group, GroupDescription, GroupMember};
pub use membership::{
    commit_offsets_outside_group, delete_group, group_membership, GroupMembership, OutsideCommit,
};
pub use offsets::{
    group_offsets, messages_at, offsets_for_timestamp, projector_group_id, MessageAt, PartitionOffsets,
};
pub use topics::{ensure_topics, partition_counts, topic_plan, TopicOutcome, TopicSpec};

use crate::client::base_client_config;
use crate::error::KafkaError;

/// A consumer that only reads metadata, watermarks and committed offsets of `group` (or
/// commits for it): it never subscribes, so it never joins the group or moves its members.
fn outside_consumer(
    kafka: &prism_config::KafkaConfig,
    role: &str,
    group: Option<&str>,
) -> Result<rdkafka::consumer::BaseConsumer, KafkaError> {
    let mut config = base_client_config(kafka, role);
    config.set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
    if let Some(group) = group {
        config.set("group.id", group);
    }
    Ok(config.create()?)
}

/// Partitions of `topic` as the cluster reports them; empty when it does not exist.
fn topic_partitions(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    let metadata = settled(timeout, || consumer.fetch_metadata(Some(topic), timeout))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Runs a blocking request again while its answer only says the cluster is moving (a leader
/// being elected, a broker restarting), until `timeout`.
fn settled<T>(
    timeout: Duration,
    mut request: impl FnMut() -> Result<T, rdkafka::error::KafkaError>,
) -> Result<T, rdkafka::error::KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match request() {
            Err(err)
                if crate::error::is_transient_code(err.rdkafka_error_code())
                    && std::time::Instant::now() < deadline =>
            {
                tracing::debug!(error = %err, "the cluster is moving; asking again");
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

/// Runs blocking rdkafka calls off the async runtime, mapping failures to [`KafkaError`].
async fn blocking<T, F>(kafka: &prism_config::KafkaConfig, work: F) -> Result<T, KafkaError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, KafkaError> + Send + 'static,
{
    let bootstrap = kafka.bootstrap_servers.clone();
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| KafkaError::Unreachable { bootstrap, detail: format!("worker thread failed: {e}") })?
}
