//! Where a consumer group stands: its committed offsets against the topics' end offsets, read
//! from the broker (OffsetFetch) by one client that is reused for every look, so watching a
//! contender costs the broker one small request per look and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use prism_config::PrismConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// End offset of every partition, by (topic, partition).
pub type Ends = BTreeMap<(String, i32), i64>;

/// What a contender's progress is read from.
pub enum Watch {
    /// A consumer group's committed offsets.
    Group(GroupWatch),
    /// The bulk replay of one projection instance (an in-place rebuild: the group's offsets
    /// do not move).
    Replay(ReplayWatch),
    /// A bulk replay, then groups from where it ends (blue/green builds, one group each):
    /// progress is the replay's, done when the replay and every group are.
    ReplayThenGroups(ReplayWatch, Vec<GroupWatch>),
}

impl Watch {
    /// Progress now.
    pub async fn progress(&self) -> anyhow::Result<Progress> {
        match self {
            Self::Group(group) => group.progress().await,
            Self::Replay(replay) => replay.progress().await,
            Self::ReplayThenGroups(replay, groups) => {
                let replayed = replay.progress().await?;
                let mut done = replayed.done;
                for group in groups {
                    if !done {
                        break;
                    }
                    done = group.progress().await?.done;
                }
                Ok(Progress { committed: replayed.committed, done })
            }
        }
    }

    /// What is watched, for messages.
    pub fn name(&self) -> String {
        match self {
            Self::Group(group) => format!("group {}", group.group),
            Self::Replay(replay) => format!("the replay of {}", replay.instances.join(", ")),
            Self::ReplayThenGroups(replay, groups) => {
                let groups: Vec<&str> = groups.iter().map(|g| g.group.as_str()).collect();
                format!("the replay of {} and group(s) {}", replay.instances.join(", "), groups.join(", "))
            }
        }
    }
}

/// Watches the replay ranges of one instance in PostgreSQL (`projection_replays`).
pub struct ReplayWatch {
    /// The instances, e.g. `order_summary_g1`.
    pub instances: Vec<String>,
    client: tokio_postgres::Client,
}

impl ReplayWatch {
    /// A watch of `instances`' ranges over `client` (on the deployment's schema).
    pub fn new(client: tokio_postgres::Client, instances: Vec<String>) -> Self {
        Self { instances, client }
    }

    /// Messages in the ranges, summed.
    pub async fn total(&self) -> anyhow::Result<i64> {
        let ranges = prism_read_store::projection::replay::ranges(&self.client, &self.instances).await?;
        Ok(ranges.iter().map(|r| r.end - r.start).sum())
    }

    /// Messages landed, and whether every range has.
    pub async fn progress(&self) -> anyhow::Result<Progress> {
        let ranges = prism_read_store::projection::replay::ranges(&self.client, &self.instances).await?;
        Ok(Progress {
            committed: ranges.iter().map(|r| r.settled_to - r.start).sum(),
            done: ranges.iter().all(|r| r.is_settled()),
        })
    }
}

/// Watches one group's committed offsets on a fixed set of partitions.
pub struct GroupWatch {
    /// The group.
    pub group: String,
    /// A client carrying the group's id; it never subscribes, so it never joins the group.
    client: Arc<BaseConsumer>,
    /// The partitions and the offsets that mean "done".
    ends: Ends,
}

/// How far a group got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Messages committed, summed over the partitions (each capped at its end).
    pub committed: i64,
    /// Whether every partition's committed offset reached its end.
    pub done: bool,
}

impl GroupWatch {
    /// A watch of `group` until it has committed `ends`.
    pub fn new(config: &PrismConfig, group: &str, ends: &Ends) -> anyhow::Result<Self> {
        let client: BaseConsumer = prism_kafka::base_client_config(&config.kafka, "bench-watch")
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .context("creating the offset-watching client")?;
        Ok(Self { group: group.to_owned(), client: Arc::new(client), ends: ends.clone() })
    }

    /// The group's committed offsets now.
    pub async fn progress(&self) -> anyhow::Result<Progress> {
        let client = self.client.clone();
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in self.ends.keys() {
            tpl.add_partition(topic, *partition);
        }
        let committed =
            tokio::task::spawn_blocking(move || client.committed_offsets(tpl, Duration::from_secs(10)))
                .await?
                .with_context(|| format!("reading the committed offsets of {}", self.group))?;
        let mut total = 0;
        let mut done = true;
        for element in committed.elements() {
            let end = self.ends.get(&(element.topic().to_owned(), element.partition())).copied().unwrap_or(0);
            let at = match element.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            total += at.min(end);
            done &= at >= end;
        }
        Ok(Progress { committed: total, done })
    }
}

/// The end offset of every partition of `topics`.
pub async fn end_offsets(config: &PrismConfig, topics: &[String]) -> anyhow::Result<Ends> {
    prism_testkit::kafka::end_offsets(config, topics).await
}

/// Messages in `ends`, summed.
pub fn total(ends: &Ends) -> i64 {
    ends.values().sum()
}
