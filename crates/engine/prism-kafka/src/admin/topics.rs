//! The topics Prism needs, created idempotently with the configured shape.

use std::time::Duration;

use prism_config::PrismConfig;
use prism_events::AggregateType;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::client::base_client_config;
use crate::error::KafkaError;

/// A topic Prism needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full topic name, prefix included.
    pub name: String,
    /// Partitions to create it with.
    pub partitions: i32,
}

/// Every topic of `aggregate_types`: one event topic per aggregate type and its dead-letter
/// topic.
pub fn topic_plan(config: &PrismConfig, aggregate_types: &[AggregateType]) -> Vec<TopicSpec> {
    let prefix = &config.topics.prefix;
    aggregate_types
        .iter()
        .flat_map(|aggregate| {
            [
                TopicSpec { name: aggregate.topic(prefix), partitions: config.topics.partitions },
                TopicSpec {
                    name: aggregate.dead_letter_topic(prefix),
                    partitions: config.topics.dead_letter_partitions,
                },
            ]
        })
        .collect()
}

/// What `ensure_topics` found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// Created now with the planned partitions.
    Created {
        /// The topic.
        name: String,
        /// Its partitions.
        partitions: i32,
    },
    /// Already there with the planned partitions.
    Exists {
        /// The topic.
        name: String,
        /// Its partitions.
        partitions: i32,
    },
    /// Already there with another partition count. Left alone on purpose: adding partitions
    /// moves keys to other partitions and breaks per-aggregate order for events in flight.
    PartitionMismatch {
        /// The topic.
        name: String,
        /// The partitions configured (`topics.partitions`).
        planned: i32,
        /// The partitions it has.
        actual: i32,
    },
}

impl std::fmt::Display for TopicOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Created { name, partitions } => write!(f, "created  {name} ({partitions} partitions)"),
            Self::Exists { name, partitions } => write!(f, "exists   {name} ({partitions} partitions)"),
            Self::PartitionMismatch { name, planned, actual } => write!(
                f,
                "MISMATCH {name}: {actual} partitions, configuration says {planned}; left unchanged \
                 (changing the count remaps aggregates to partitions; migrate by rebuilding into new topics)"
            ),
        }
    }
}

/// Creates the missing topics and reports every planned one. Idempotent.
pub async fn ensure_topics(
    config: &PrismConfig,
    plan: &[TopicSpec],
) -> Result<Vec<TopicOutcome>, KafkaError> {
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    let admin: AdminClient<DefaultClientContext> = base_client_config(&config.kafka, "admin").create()?;
    let names: Vec<String> = plan.iter().map(|spec| spec.name.clone()).collect();
    let before = partition_counts(&config.kafka, &names, timeout).await?;

    let max_message_bytes = config.topics.max_message_bytes.to_string();
    let missing: Vec<NewTopic<'_>> = plan
        .iter()
        .filter(|spec| !before.iter().any(|(name, _)| name == &spec.name))
        .map(|spec| {
            NewTopic::new(
                &spec.name,
                spec.partitions,
                TopicReplication::Fixed(config.topics.replication_factor),
            )
            .set("max.message.bytes", &max_message_bytes)
        })
        .collect();
    let mut created = Vec::new();
    if !missing.is_empty() {
        let options = AdminOptions::new().operation_timeout(Some(timeout)).request_timeout(Some(timeout));
        for result in admin.create_topics(missing.iter(), &options).await? {
            match result {
                Ok(name) => created.push(name),
                // Another process created it between our look and our request.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(KafkaError::Topic { topic: name, detail: format!("create failed: {code}") })
                }
            }
        }
    }
    let after = wait_for_topics(&config.kafka, plan, timeout).await?;
    Ok(plan
        .iter()
        .map(|spec| {
            let actual = after.iter().find(|(name, _)| name == &spec.name).map_or(0, |(_, n)| *n);
            if created.contains(&spec.name) {
                TopicOutcome::Created { name: spec.name.clone(), partitions: actual }
            } else if actual == spec.partitions {
                TopicOutcome::Exists { name: spec.name.clone(), partitions: actual }
            } else {
                TopicOutcome::PartitionMismatch { name: spec.name.clone(), planned: spec.partitions, actual }
            }
        })
        .collect())
}

/// Metadata can lag creation by a moment, and a new partition has no leader until the
/// controller elected one: wait until every planned topic shows all its partitions led, so
/// callers can produce to and read from them right away.
async fn wait_for_topics(
    kafka: &prism_config::KafkaConfig,
    plan: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<(String, i32)>, KafkaError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let names: Vec<String> = plan.iter().map(|spec| spec.name.clone()).collect();
        let states = partition_states(kafka, &names, timeout).await?;
        let missing = plan.iter().find(|spec| {
            !states.iter().any(|(name, count, led)| name == &spec.name && *count > 0 && led == count)
        });
        match missing {
            None => return Ok(states.into_iter().map(|(name, count, _)| (name, count)).collect()),
            Some(spec) if tokio::time::Instant::now() >= deadline => {
                return Err(KafkaError::Topic {
                    topic: spec.name.clone(),
                    detail: format!(
                        "not visible with a leader for every partition {timeout:?} after creation"
                    ),
                })
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Partition counts of `topics` as the cluster reports them (topics it does not know are
/// left out). Asks for the named topics only: a metadata request for every topic grows
/// with the cluster. The blocking calls run on a blocking thread with a client of their own,
/// so this works on any tokio runtime.
pub async fn partition_counts(
    kafka: &prism_config::KafkaConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<(String, i32)>, KafkaError> {
    Ok(partition_states(kafka, topics, timeout)
        .await?
        .into_iter()
        .map(|(name, count, _)| (name, count))
        .collect())
}

/// Per known topic: its partition count and how many of its partitions have a leader.
async fn partition_states(
    kafka: &prism_config::KafkaConfig,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<(String, i32, i32)>, KafkaError> {
    use rdkafka::consumer::Consumer;
    let client: rdkafka::consumer::BaseConsumer = base_client_config(kafka, "metadata").create()?;
    let bootstrap = kafka.bootstrap_servers.clone();
    let topics = topics.to_vec();
    let unreachable = |detail: String| KafkaError::Unreachable { bootstrap: bootstrap.clone(), detail };
    tokio::task::spawn_blocking(move || {
        let mut states = Vec::with_capacity(topics.len());
        for topic in &topics {
            let metadata = client.fetch_metadata(Some(topic), timeout)?;
            states.extend(
                metadata.topics().iter().filter(|t| t.error().is_none() && !t.partitions().is_empty()).map(
                    |t| {
                        let led =
                            t.partitions().iter().filter(|p| p.leader() >= 0 && p.error().is_none()).count();
                        (t.name().to_owned(), t.partitions().len() as i32, led as i32)
                    },
                ),
            );
        }
        Ok::<_, rdkafka::error::KafkaError>(states)
    })
    .await
    .map_err(|e| unreachable(e.to_string()))?
    .map_err(|e| unreachable(e.to_string()))
}
