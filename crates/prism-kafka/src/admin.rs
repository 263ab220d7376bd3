//! Topic administration: create the event and dead-letter topics with the configured shape,
//! idempotently, and report what exists. Consumer-group administration for `prismctl lag` and
//! `prismctl offsets reset`: watermarks, committed offsets, membership, and offset commits made
//! from outside the group (never joining it, so live members are not rebalanced).

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

/// Every topic Prism needs: one event topic per aggregate type and its dead-letter topic.
pub fn topic_plan(config: &PrismConfig) -> Vec<TopicSpec> {
    let prefix = &config.topics.prefix;
    AggregateType::ALL
        .into_iter()
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
    Created { name: String, partitions: i32 },
    /// Already there with the planned partitions.
    Exists { name: String, partitions: i32 },
    /// Already there with another partition count. Left alone on purpose: adding partitions
    /// moves keys to other partitions and breaks per-aggregate order for events in flight.
    PartitionMismatch { name: String, planned: i32, actual: i32 },
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

/// Metadata can lag creation by a moment; wait until every planned topic shows its
/// partitions, so callers can produce to them right away.
async fn wait_for_topics(
    kafka: &prism_config::KafkaConfig,
    plan: &[TopicSpec],
    timeout: Duration,
) -> Result<Vec<(String, i32)>, KafkaError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let names: Vec<String> = plan.iter().map(|spec| spec.name.clone()).collect();
        let counts = partition_counts(kafka, &names, timeout).await?;
        let missing = plan.iter().find(|spec| !counts.iter().any(|(name, n)| name == &spec.name && *n > 0));
        match missing {
            None => return Ok(counts),
            Some(spec) if tokio::time::Instant::now() >= deadline => {
                return Err(KafkaError::Topic {
                    topic: spec.name.clone(),
                    detail: format!("not visible in the cluster metadata {timeout:?} after creation"),
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
    use rdkafka::consumer::Consumer;
    let client: rdkafka::consumer::BaseConsumer = base_client_config(kafka, "metadata").create()?;
    let bootstrap = kafka.bootstrap_servers.clone();
    let topics = topics.to_vec();
    let unreachable = |detail: String| KafkaError::Unreachable { bootstrap: bootstrap.clone(), detail };
    tokio::task::spawn_blocking(move || {
        let mut counts = Vec::with_capacity(topics.len());
        for topic in &topics {
            let metadata = client.fetch_metadata(Some(topic), timeout)?;
            counts.extend(
                metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| (t.name().to_owned(), t.partitions().len() as i32)),
            );
        }
        Ok::<_, rdkafka::error::KafkaError>(counts)
    })
    .await
    .map_err(|e| unreachable(e.to_string()))?
    .map_err(|e| unreachable(e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// Consumer groups: offsets, watermarks, membership and offset commits from outside the group,
// for `prismctl lag` and `prismctl offsets reset`.
// ---------------------------------------------------------------------------------------------

/// The consumer group of the projector workers: `projector.group` under `topics.prefix`
/// (the same name `prism_projector::group_id` gives the workers).
pub fn projector_group_id(config: &PrismConfig) -> String {
    format!("{}{}", config.topics.prefix, config.projector.group)
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

/// Partitions of `topic` as the cluster reports them; an error naming the topic when it does
/// not exist.
fn topic_partitions(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<i32>, rdkafka::error::KafkaError> {
    use rdkafka::consumer::Consumer;
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
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
                let (low, high) =
                    consumer.fetch_watermarks(topic, partition, timeout).map_err(unreachable)?;
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

/// Whether a consumer group has members, as far as the broker can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupMembership {
    /// The broker described the group: no members (state `Empty`, or `Dead` for a group it
    /// does not know).
    Empty {
        /// The group state the broker reported.
        state: String,
    },
    /// The broker described the group with members.
    Active {
        /// The group state the broker reported (`Stable`, `PreparingRebalance`, …).
        state: String,
        /// `member id (client id @ host)` of each member.
        members: Vec<String>,
    },
    /// The broker could not describe the group (DescribeGroups failed or is unsupported).
    Unknown {
        /// What went wrong.
        detail: String,
    },
}

/// Asks the broker (DescribeGroups) whether `group` has members. Never joins the group.
///
/// Apache Kafka answers this. Tansu 0.6 with `sqlite://` storage fails DescribeGroups (the
/// client sees a transport failure) and librdkafka's mock cluster does not implement it:
/// both give [`GroupMembership::Unknown`], and the caller decides what is safe.
pub async fn group_membership(
    kafka: &prism_config::KafkaConfig,
    group: &str,
    timeout: Duration,
) -> Result<GroupMembership, KafkaError> {
    use rdkafka::consumer::Consumer;
    let consumer = outside_consumer(kafka, "describe-group", None)?;
    let group = group.to_owned();
    blocking(kafka, move || {
        let list = match consumer.fetch_group_list(Some(&group), timeout) {
            Ok(list) => list,
            Err(err) => return Ok(GroupMembership::Unknown { detail: err.to_string() }),
        };
        let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
            return Ok(GroupMembership::Unknown {
                detail: format!("the broker's answer did not include group `{group}`"),
            });
        };
        let state = info.state().to_owned();
        let members: Vec<String> = info
            .members()
            .iter()
            .map(|m| format!("{} ({} @ {})", m.id(), m.client_id(), m.client_host()))
            .collect();
        let idle = matches!(state.as_str(), "Empty" | "Dead");
        Ok(if members.is_empty() && idle {
            GroupMembership::Empty { state }
        } else {
            GroupMembership::Active { state, members }
        })
    })
    .await
}

/// What an offset commit from outside the group came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutsideCommit {
    /// The broker stored the offsets, and reading them back shows them.
    Committed,
    /// The broker refused because the group has live members: a commit from outside the
    /// group (generation -1, no member id) is answered with `UNKNOWN_MEMBER_ID`,
    /// `ILLEGAL_GENERATION` or `REBALANCE_IN_PROGRESS` by Apache Kafka while the group is
    /// not empty. (Tansu 0.6 does not check and stores the offsets.)
    RefusedGroupActive {
        /// The error the broker answered with.
        code: String,
    },
}

/// Commits `offsets` (`(topic, partition, offset)`) for `group` from outside the group:
/// without subscribing, so no live member is rebalanced. Reads them back to verify.
pub async fn commit_offsets_outside_group(
    kafka: &prism_config::KafkaConfig,
    group: &str,
    offsets: &[(String, i32, i64)],
    timeout: Duration,
) -> Result<OutsideCommit, KafkaError> {
    use rdkafka::consumer::{CommitMode, Consumer};
    use rdkafka::types::RDKafkaErrorCode;
    let consumer = outside_consumer(kafka, "offsets-reset", Some(group))?;
    let offsets = offsets.to_vec();
    let group = group.to_owned();
    blocking(kafka, move || {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (topic, partition, offset) in &offsets {
            tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*offset))?;
        }
        if let Err(err) = consumer.commit(&tpl, CommitMode::Sync) {
            return match err.rdkafka_error_code() {
                Some(
                    code @ (RDKafkaErrorCode::UnknownMemberId
                    | RDKafkaErrorCode::IllegalGeneration
                    | RDKafkaErrorCode::RebalanceInProgress
                    | RDKafkaErrorCode::FencedInstanceId),
                ) => Ok(OutsideCommit::RefusedGroupActive { code: format!("{code:?}") }),
                _ => Err(err.into()),
            };
        }
        let mut check = rdkafka::TopicPartitionList::new();
        for (topic, partition, _) in &offsets {
            check.add_partition(topic, *partition);
        }
        let stored = consumer.committed_offsets(check, timeout)?;
        for (topic, partition, offset) in &offsets {
            let found = stored
                .elements()
                .iter()
                .find(|e| e.topic() == topic && e.partition() == *partition)
                .map(|e| e.offset());
            if found != Some(rdkafka::Offset::Offset(*offset)) {
                return Err(KafkaError::Topic {
                    topic: topic.clone(),
                    detail: format!(
                        "partition {partition}: committed {offset} for group {group}, but the broker now reports {found:?}"
                    ),
                });
            }
        }
        Ok(OutsideCommit::Committed)
    })
    .await
}
