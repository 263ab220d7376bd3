//! What belongs to this deployment on a shared cluster: names under `topics.prefix` (topics
//! and consumer groups alike), and the consumer groups the broker knows under it — to tell an
//! operator who mistyped a group name which ones exist.

use std::time::Duration;

use anyhow::Context;
use prism_config::PrismConfig;

use super::KAFKA_HINT;

/// Whether `name` (a topic or group) is under this deployment's prefix. Everything is when the
/// prefix is empty.
pub fn in_deployment(config: &PrismConfig, name: &str) -> bool {
    name.starts_with(config.topics.prefix.as_str())
}

/// The consumer groups the broker lists under this deployment's prefix, sorted. ListGroups
/// reports groups of both protocols, with or without members (a group with committed offsets
/// and no member is listed as `Empty`).
pub async fn known_groups(config: &PrismConfig) -> anyhow::Result<Vec<String>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    let consumer: BaseConsumer = prism_kafka::base_client_config(&config.kafka, "prismctl-groups")
        .create()
        .context("a Kafka client")?;
    let prefix = config.topics.prefix.clone();
    let mut groups = tokio::task::spawn_blocking(move || {
        consumer.fetch_group_list(None, timeout).map(|list| {
            list.groups()
                .iter()
                .map(|g| g.name().to_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect::<Vec<String>>()
        })
    })
    .await
    .context("listing consumer groups")?
    .with_context(|| format!("listing the consumer groups ({KAFKA_HINT})"))?;
    groups.sort();
    Ok(groups)
}

/// `a, b, c`, at most `max` of them, then how many more; `none` when empty.
pub fn listed(names: &[String], max: usize) -> String {
    if names.is_empty() {
        return "none".to_owned();
    }
    let shown: Vec<&str> = names.iter().take(max).map(String::as_str).collect();
    if names.len() > max {
        format!("{} and {} more", shown.join(", "), names.len() - max)
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_bounded() {
        let names: Vec<String> = (1..=4).map(|i| format!("g{i}")).collect();
        assert_eq!(listed(&names, 10), "g1, g2, g3, g4");
        assert_eq!(listed(&names, 2), "g1, g2 and 2 more");
        assert_eq!(listed(&[], 2), "none");
    }
}
