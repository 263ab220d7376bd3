//! `prismctl topics ensure`: create missing topics, report existing ones.

use anyhow::Context;
use prism_config::PrismConfig;
use prism_kafka::{ensure_topics, topic_plan, TopicOutcome};

use super::KAFKA_HINT;

pub async fn ensure(config: &PrismConfig) -> anyhow::Result<()> {
    let plan = topic_plan(config);
    let outcomes =
        ensure_topics(config, &plan).await.with_context(|| format!("cannot ensure topics ({KAFKA_HINT})"))?;
    for outcome in &outcomes {
        println!("{outcome}");
    }
    let mismatches = outcomes.iter().filter(|o| matches!(o, TopicOutcome::PartitionMismatch { .. })).count();
    if mismatches > 0 {
        anyhow::bail!("{mismatches} topic(s) differ from the configuration (see above)");
    }
    Ok(())
}
