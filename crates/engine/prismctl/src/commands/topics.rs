//! `prismctl topics ensure`: create the event and dead-letter topics of every registered
//! aggregate type that are missing, report existing ones.

use anyhow::Context;
use prism_config::PrismConfig;
use prism_kafka::{ensure_topics, topic_plan, TopicOutcome};

use super::KAFKA_HINT;

pub async fn ensure(config: &PrismConfig) -> anyhow::Result<()> {
    let db = super::read_models::connect(config).await?;
    let client = db.client().await?;
    let aggregates = prism_read_store::registry::aggregate_types(&**client).await?;
    anyhow::ensure!(
        !aggregates.is_empty(),
        "no application has registered its aggregate types in schema {}: run the application's `migrate` \
         (e.g. `shop-projector migrate`) first",
        config.postgres.schema
    );
    let types: Vec<prism_events::AggregateType> = aggregates
        .iter()
        .map(|(_, name)| prism_events::AggregateType::new(prism_projections::intern(name)))
        .collect();
    let plan = topic_plan(config, &types);
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
