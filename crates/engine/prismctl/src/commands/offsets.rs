//! `prismctl offsets reset`: move a consumer group's committed offsets.
//!
//! Dry run by default: prints `topic partition current -> target` per partition. With
//! `--execute` the targets are committed for the group from outside it (a consumer that never
//! subscribes, so no live member is rebalanced), after confirmation (`--yes`, or a `y` on the
//! terminal).
//!
//! Only this deployment's event topics and groups are touched: a `--topic` is checked against
//! the event topics of the registered aggregate types (a typo is named as a topic that does
//! not exist, with the known ones), and a topic or group outside `topics.prefix` belongs to
//! another deployment sharing the cluster and is refused.
//!
//! A reset while workers are running would be overwritten by their next commit, so it is
//! refused while the group has live members, with two guards:
//! - the broker is asked first (librdkafka's DescribeConsumerGroups, which describes classic
//!   and KIP-848 groups alike): members → refused, naming them;
//! - the commit itself is the last guard: it carries no member id and generation -1, which
//!   Kafka refuses (`UNKNOWN_MEMBER_ID`, `ILLEGAL_GENERATION`, `REBALANCE_IN_PROGRESS`) while
//!   the group is not empty — a member that joined after the first look still stops it.
//!
//! Replays after a reset never double-apply: the version gate skips versions already applied.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use prism_config::PrismConfig;
use prism_kafka::admin::{
    commit_offsets_outside_group, group_membership, group_offsets, offsets_for_timestamp, partition_counts,
    projector_group_id, GroupMembership, OutsideCommit, PartitionOffsets,
};
use serde::Serialize;

use super::groups::in_deployment;
use super::{confirm, kafka_error};
use crate::cli::{OutputFormat, ResetArgs, ResetTarget, TopicSelection};

/// One partition of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset now; `None` when never committed.
    pub current: Option<i64>,
    /// Offset to commit.
    pub target: i64,
    /// Low watermark.
    pub low: i64,
    /// High watermark.
    pub high: i64,
    /// Whether the requested offset lay outside [low, high] and was brought inside.
    pub clamped: bool,
}

pub async fn reset(config: &PrismConfig, args: &ResetArgs) -> anyhow::Result<()> {
    let group = args.group.clone().unwrap_or_else(|| projector_group_id(config));
    if !in_deployment(config, &group) {
        bail!(
            "group {group} is outside this deployment's prefix \"{}\" (topics.prefix): it belongs to another \
             deployment sharing the cluster, and this configuration must not move its offsets. Nothing was \
             changed; run prismctl with that deployment's configuration instead",
            config.topics.prefix
        );
    }
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    let db = super::read_models::connect(config).await?;
    let event_topics = super::read_models::event_topics(config, &db).await?;
    check_topics(config, &event_topics, &args.topics, timeout).await?;
    let selection: BTreeMap<String, Option<Vec<i32>>> = if args.topics.is_empty() {
        event_topics.iter().map(|t| (t.clone(), None)).collect()
    } else {
        let mut selection: BTreeMap<String, Option<Vec<i32>>> = BTreeMap::new();
        for s in &args.topics {
            let entry = selection.entry(s.topic.clone()).or_insert_with(|| Some(Vec::new()));
            match (entry.as_mut(), &s.partitions) {
                (Some(list), Some(partitions)) => list.extend(partitions),
                _ => *entry = None,
            }
        }
        selection
    };
    let topics: Vec<String> = selection.keys().cloned().collect();
    let offsets = group_offsets(&config.kafka, &group, &topics, timeout)
        .await
        .map_err(|e| kafka_error(e, format!("reading the offsets of group {group}")))?;
    let mut chosen: Vec<PartitionOffsets> = Vec::new();
    for (topic, partitions) in &selection {
        let of_topic: Vec<&PartitionOffsets> = offsets.iter().filter(|p| &p.topic == topic).collect();
        match partitions {
            None => chosen.extend(of_topic.into_iter().cloned()),
            Some(wanted) => {
                for partition in wanted {
                    let Some(found) = of_topic.iter().find(|p| p.partition == *partition) else {
                        bail!("topic {topic} has no partition {partition} (it has {})", of_topic.len())
                    };
                    if !chosen.iter().any(|c| c.topic == *topic && c.partition == *partition) {
                        chosen.push((*found).clone());
                    }
                }
            }
        }
    }
    let target = args.to.target();
    let at_time = match target {
        ResetTarget::Datetime(ms) => {
            let partitions: Vec<(String, i32)> =
                chosen.iter().map(|p| (p.topic.clone(), p.partition)).collect();
            offsets_for_timestamp(&config.kafka, &partitions, ms, timeout)
                .await
                .map_err(|e| kafka_error(e, "looking up offsets by time"))?
        }
        _ => BTreeMap::new(),
    };
    let moves: Vec<Move> = chosen.iter().map(|p| plan(p, target, &at_time)).collect();
    print_plan(&group, &moves, args)?;
    if !args.execute {
        if args.output == OutputFormat::Text {
            println!("dry run: nothing committed. Add --execute to commit these offsets for group {group}.");
        }
        return Ok(());
    }

    match group_membership(&config.kafka, &group, timeout)
        .await
        .map_err(|e| kafka_error(e, format!("asking the broker about group {group}")))?
    {
        GroupMembership::Active { state, members } => bail!(
            "group {group} has {} active member(s) (state {state}): {}. Refusing to reset: a running worker \
             would overwrite the new offsets with its next commit. Stop the projector workers (scale their \
             deployment to 0) and wait until the group is empty (about projector.session_timeout_ms), then \
             run this again.",
            members.len(),
            members.join(", ")
        ),
        GroupMembership::Empty { state } => tracing::info!(group, state, "group has no members"),
        GroupMembership::Unknown { detail } => bail!(
            "cannot tell whether group {group} has active members: the broker did not describe it ({detail}). \
             Nothing was changed. Check that the broker is reachable and that this user may describe the \
             group, then run this again."
        ),
    }
    confirm(&format!("commit {} offset(s) for group {group}?", moves.len()), args.yes)?;
    let commits: Vec<(String, i32, i64)> =
        moves.iter().map(|m| (m.topic.clone(), m.partition, m.target)).collect();
    match commit_offsets_outside_group(&config.kafka, &group, &commits, timeout)
        .await
        .map_err(|e| kafka_error(e, format!("committing the offsets of group {group}")))?
    {
        OutsideCommit::Committed => {
            if args.output == OutputFormat::Text {
                println!("committed {} offset(s) for group {group}", moves.len());
            }
            Ok(())
        }
        OutsideCommit::RefusedGroupActive { code } => bail!(
            "the broker refused the commit ({code}): group {group} has active members. Nothing was changed. \
             Stop the projector workers (scale their deployment to 0), wait until the group is empty, then \
             run this again."
        ),
    }
}

/// Refuses `--topic`s that are not event topics of this deployment, saying which they are:
/// missing from the broker (a typo), another deployment's (outside `topics.prefix`), or some
/// other topic of this one (a dead-letter topic, say). The known event topics are listed.
async fn check_topics(
    config: &PrismConfig,
    event_topics: &[String],
    selection: &[TopicSelection],
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut unknown: Vec<String> =
        selection.iter().map(|s| s.topic.clone()).filter(|t| !event_topics.contains(t)).collect();
    unknown.dedup();
    let Some(first) = unknown.first() else { return Ok(()) };
    let known = event_topics.join(", ");
    let existing = partition_counts(&config.kafka, std::slice::from_ref(first), timeout)
        .await
        .map_err(|e| kafka_error(e, format!("looking up topic {first}")))?;
    if !existing.iter().any(|(name, _)| name == first) {
        bail!("topic {first} does not exist (known event topics: {known})");
    }
    if !in_deployment(config, first) {
        bail!(
            "topic {first} belongs to another deployment: it is outside this deployment's topic prefix \"{}\" \
             (topics.prefix). Refusing to touch it. Nothing was changed. This deployment's event topics: {known}. \
             To act on the other deployment, run prismctl with its configuration",
            config.topics.prefix
        );
    }
    bail!("topic {first} is not an event topic of this deployment (known event topics: {known})")
}

/// The target of one partition.
fn plan(p: &PartitionOffsets, target: ResetTarget, at_time: &BTreeMap<(String, i32), Option<i64>>) -> Move {
    let start = p.committed.unwrap_or(p.low);
    let wanted = match target {
        ResetTarget::Earliest => p.low,
        ResetTarget::Latest => p.high,
        ResetTarget::Datetime(_) => {
            at_time.get(&(p.topic.clone(), p.partition)).copied().flatten().unwrap_or(p.high)
        }
        ResetTarget::ShiftBy(n) => start.saturating_add(n),
        ResetTarget::Offset(n) => n,
    };
    let target = wanted.clamp(p.low, p.high.max(p.low));
    Move {
        topic: p.topic.clone(),
        partition: p.partition,
        current: p.committed,
        target,
        low: p.low,
        high: p.high,
        clamped: target != wanted,
    }
}

fn print_plan(group: &str, moves: &[Move], args: &ResetArgs) -> anyhow::Result<()> {
    match args.output {
        OutputFormat::Json => {
            let document = serde_json::json!({
                "group": group,
                "execute": args.execute,
                "partitions": moves,
            });
            println!("{}", serde_json::to_string(&document)?);
        }
        OutputFormat::Text => {
            println!("group {group}:");
            for m in moves {
                println!(
                    "{} {} {} -> {}{}",
                    m.topic,
                    m.partition,
                    m.current.map_or_else(|| "-".to_owned(), |c| c.to_string()),
                    m.target,
                    if m.clamped {
                        format!("  (kept within [{}, {}])", m.low, m.high)
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(committed: Option<i64>) -> PartitionOffsets {
        PartitionOffsets { topic: "t".into(), partition: 1, low: 10, high: 100, committed }
    }

    #[test]
    fn targets_stay_within_the_partition() {
        let none = BTreeMap::new();
        assert_eq!(plan(&p(Some(50)), ResetTarget::Earliest, &none).target, 10);
        assert_eq!(plan(&p(Some(50)), ResetTarget::Latest, &none).target, 100);
        assert_eq!(plan(&p(Some(50)), ResetTarget::ShiftBy(-5), &none).target, 45);
        let clamped = plan(&p(Some(50)), ResetTarget::ShiftBy(-500), &none);
        assert!(clamped.clamped && clamped.target == 10);
        assert_eq!(
            plan(&p(None), ResetTarget::ShiftBy(3), &none).target,
            13,
            "no commit: from the low watermark"
        );
        assert_eq!(plan(&p(Some(50)), ResetTarget::Offset(1_000), &none).target, 100);
        let at = BTreeMap::from([(("t".to_owned(), 1), Some(70)), (("u".to_owned(), 1), None)]);
        assert_eq!(plan(&p(Some(50)), ResetTarget::Datetime(0), &at).target, 70);
        let mut later = p(Some(50));
        later.topic = "u".into();
        assert_eq!(plan(&later, ResetTarget::Datetime(0), &at).target, 100, "nothing that recent: the end");
    }
}
