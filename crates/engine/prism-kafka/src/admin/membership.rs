//! Whether a group has live members, and offset commits made from outside a group.

use std::time::Duration;

use super::{blocking, outside_consumer};
use crate::error::KafkaError;

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
    /// The broker could not describe the group (the request failed, or was refused, e.g. by
    /// an ACL).
    Unknown {
        /// What went wrong.
        detail: String,
    },
}

/// Asks the broker whether `group` has members, for groups of either protocol (see
/// `super::describe_groups`). Never joins the group.
pub async fn group_membership(
    kafka: &prism_config::KafkaConfig,
    group: &str,
    timeout: Duration,
) -> Result<GroupMembership, KafkaError> {
    let description = match super::describe_group(kafka, group, timeout).await {
        Ok(description) => description,
        Err(err) => return Ok(GroupMembership::Unknown { detail: err.to_string() }),
    };
    let members: Vec<String> = description
        .members
        .iter()
        .map(|m| match &m.instance_id {
            Some(instance) => format!("{} ({} @ {}, instance {instance})", m.member_id, m.client_id, m.host),
            None => format!("{} ({} @ {})", m.member_id, m.client_id, m.host),
        })
        .collect();
    let idle = matches!(description.state.as_str(), "Empty" | "Dead");
    Ok(if members.is_empty() && idle {
        GroupMembership::Empty { state: description.state }
    } else {
        GroupMembership::Active { state: description.state, members }
    })
}

/// What an offset commit from outside the group came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutsideCommit {
    /// The broker stored the offsets, and reading them back shows them.
    Committed,
    /// The broker refused because the group has live members: a commit from outside the
    /// group (generation -1, no member id) is answered with `UNKNOWN_MEMBER_ID`,
    /// `ILLEGAL_GENERATION` or `REBALANCE_IN_PROGRESS` by Apache Kafka while a classic group
    /// is not empty, and with `UNKNOWN_MEMBER_ID` while a KIP-848 group is not.
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

/// Deletes a consumer group that has no members, with its committed offsets (what
/// `kafka-consumer-groups --delete` does). A group that does not exist is not an error.
pub async fn delete_group(
    kafka: &prism_config::KafkaConfig,
    group: &str,
    timeout: Duration,
) -> Result<(), KafkaError> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> =
        crate::client::base_client_config(kafka, "delete-group").create()?;
    let options = AdminOptions::new().request_timeout(Some(timeout));
    for result in admin.delete_groups(&[group], &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
            Err((name, code)) => {
                return Err(KafkaError::Group { group: name, detail: format!("deleting it failed: {code}") })
            }
        }
    }
    Ok(())
}
