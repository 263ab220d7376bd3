//! What applications registered in this schema, for every other command (prismctl runs no
//! application code): `prismctl read-models` lists it.

use anyhow::Context;
use prism_config::PrismConfig;
use prism_postgres::Database;
use prism_read_store::registry::{self, RegisteredReadModel};
use serde::Serialize;

use super::POSTGRES_HINT;
use crate::cli::OutputFormat;

/// Connects to the configured schema.
pub async fn connect(config: &PrismConfig) -> anyhow::Result<Database> {
    Database::connect(&config.postgres, "prismctl")
        .await
        .with_context(|| format!("cannot connect to PostgreSQL ({POSTGRES_HINT})"))
}

/// What to tell an operator whose schema has no registered application.
fn nothing_registered(config: &PrismConfig) -> String {
    format!(
        "no application has registered read models in schema {}: run the application's `migrate` \
         (e.g. `shop-projector migrate`) with the schema owner's role first",
        config.postgres.schema
    )
}

/// Every registered read model; an error when there is none.
pub async fn registered(config: &PrismConfig, db: &Database) -> anyhow::Result<Vec<RegisteredReadModel>> {
    let client = db.client().await?;
    let models = registry::read_models(&**client).await.with_context(|| {
        format!("reading the read-model registry (run `prismctl migrate` first; {POSTGRES_HINT})")
    })?;
    anyhow::ensure!(!models.is_empty(), nothing_registered(config));
    Ok(models)
}

/// The read model called `name` among `models` (what [`registered`] returned), or an error
/// listing them.
pub fn find(models: &[RegisteredReadModel], name: &str) -> anyhow::Result<RegisteredReadModel> {
    let names: Vec<&str> = models.iter().map(|m| m.name).collect();
    models
        .iter()
        .find(|m| m.name == name)
        .cloned()
        .with_context(|| format!("unknown read model `{name}` (registered: {})", names.join(", ")))
}

/// The event topics of every registered aggregate type, sorted.
pub async fn event_topics(config: &PrismConfig, db: &Database) -> anyhow::Result<Vec<String>> {
    let client = db.client().await?;
    let aggregates = registry::aggregate_types(&**client).await?;
    anyhow::ensure!(!aggregates.is_empty(), nothing_registered(config));
    let mut topics: Vec<String> =
        aggregates.iter().map(|(_, t)| format!("{}{t}.events", config.topics.prefix)).collect();
    topics.sort();
    topics.dedup();
    Ok(topics)
}

#[derive(Debug, Serialize)]
struct Listed {
    name: &'static str,
    application: String,
    sources: Vec<String>,
    key_columns: Vec<String>,
    additive_columns: Vec<String>,
    cache_kind: Option<String>,
    generations: Vec<Generation>,
}

#[derive(Debug, Serialize)]
struct Generation {
    generation: i32,
    status: String,
}

/// `prismctl read-models`.
pub async fn list(config: &PrismConfig, output: OutputFormat) -> anyhow::Result<()> {
    let db = connect(config).await?;
    let models = registered(config, &db).await?;
    let client = db.client().await?;
    let mut listed = Vec::with_capacity(models.len());
    for model in models {
        let rows = client
            .query(
                "SELECT generation, status FROM projection_generations WHERE projection = $1 ORDER BY generation",
                &[&model.name],
            )
            .await?;
        listed.push(Listed {
            name: model.name,
            application: model.application,
            sources: model.sources,
            key_columns: model.key_columns,
            additive_columns: model.additive_columns,
            cache_kind: model.cache_kind,
            generations: rows.iter().map(|r| Generation { generation: r.get(0), status: r.get(1) }).collect(),
        });
    }
    match output {
        OutputFormat::Json => {
            println!("{}", serde_json::to_string(&serde_json::json!({ "read_models": listed }))?)
        }
        OutputFormat::Text => {
            println!(
                "{:<24} {:<12} {:<20} {:<24} {:<10} GENERATIONS",
                "READ MODEL", "APPLICATION", "SOURCES", "KEY", "CACHE"
            );
            for m in &listed {
                let generations: Vec<String> =
                    m.generations.iter().map(|g| format!("g{} {}", g.generation, g.status)).collect();
                println!(
                    "{:<24} {:<12} {:<20} {:<24} {:<10} {}",
                    m.name,
                    m.application,
                    m.sources.join(","),
                    m.key_columns.join(","),
                    m.cache_kind.as_deref().unwrap_or("-"),
                    generations.join(", ")
                );
            }
        }
    }
    Ok(())
}
