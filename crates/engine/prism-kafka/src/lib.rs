//! Kafka adapter of Prism, over rdkafka (librdkafka).
//!
//! - [`client`]: the librdkafka configuration every client starts from (brokers, security,
//!   pass-through properties).
//! - [`producer`]: [`EventProducer`], idempotent and ordered, for the relay and dead letters.
//! - [`consumer`]: the consumer runtime — partitions processed concurrently, each in order, in
//!   bounded batches, offsets stored only after a batch landed, clean handover on rebalance.
//! - [`partition_reader`]: one partition read in chunks outside any group, for bulk replays.
//! - [`message`]: [`ConsumedMessage`], a message as both hold it: its bytes in one allocation.
//! - [`admin`]: topic creation (`prismctl topics ensure`) and broker reachability.
//! - [`error`]: [`KafkaError`] and its transient/permanent class.
//!
//! Prism never relies on broker-side topic auto-creation: topics are created explicitly with
//! the configured partition count, because the count decides which partition (and so which
//! worker, in which order) sees each aggregate.

#![deny(missing_docs)]

pub mod admin;
pub mod client;
pub mod consumer;
pub mod error;
pub mod message;
pub mod partition_reader;
pub mod producer;

pub use admin::{ensure_topics, topic_plan, TopicOutcome, TopicSpec};
pub use client::base_client_config;
pub use error::KafkaError;
pub use message::ConsumedMessage;
pub use producer::{Delivered, EventProducer};
