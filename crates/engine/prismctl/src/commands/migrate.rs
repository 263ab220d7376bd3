//! `prismctl migrate`: create the database and schema if missing, apply the engine's
//! migrations, and make sure every registered read model has an active generation with its
//! table (applications register their read models with their own `migrate`).

use anyhow::Context;
use prism_config::PrismConfig;
use prism_postgres::pool::client_config;
use prism_postgres::MIGRATIONS;
use tokio_postgres::error::SqlState;

use super::POSTGRES_HINT;

pub async fn run(config: &PrismConfig) -> anyhow::Result<()> {
    let pg = client_config(&config.postgres, "prismctl-migrate")?;
    let mut client = match connect(config, &pg).await {
        Err(err) if err.sql_state() == Some(&SqlState::INVALID_CATALOG_NAME) => {
            create_database(config, &pg).await?;
            connect(config, &pg).await?
        }
        other => other.with_context(|| format!("cannot connect to PostgreSQL ({POSTGRES_HINT})"))?,
    };
    let report = prism_postgres::migrate(&mut client, &config.postgres.schema)
        .await
        .context("migration failed; nothing was changed")?;
    client.batch_execute(&format!("SET search_path = {}", config.postgres.schema)).await?;
    let registered = prism_read_store::registry::read_models(&client).await?;
    let instances = prism_read_store::read_models::ensure_active(&mut client, &registered)
        .await
        .context("creating the read-model tables of the active generations")?;
    for version in &report.applied {
        let name = MIGRATIONS.iter().find(|m| m.version == *version).map_or("?", |m| m.name);
        println!("applied  {version:04} {name}");
    }
    println!(
        "schema {} is at migration {:04} ({} applied now, {} already there)",
        config.postgres.schema,
        MIGRATIONS.last().map_or(0, |m| m.version),
        report.applied.len(),
        report.already_applied.len()
    );
    if instances.is_empty() {
        println!(
            "no read model registered yet: applications register theirs with their own `migrate` \
             (e.g. `shop-projector migrate`)"
        );
    } else {
        let names: Vec<String> = instances.iter().map(|i| i.id()).collect();
        println!("read models active: {}", names.join(", "));
    }
    Ok(())
}

/// One connection with the configured TLS (the migration needs a client of its own).
async fn connect(
    config: &PrismConfig,
    pg: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, prism_postgres::StoreError> {
    let (client, connection) = prism_postgres::pool::connect_with(&config.postgres, pg).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "postgres connection ended");
        }
    });
    Ok(client)
}

/// Creates the configured database from the server's maintenance database, so a fresh
/// server needs no manual step.
async fn create_database(config: &PrismConfig, pg: &tokio_postgres::Config) -> anyhow::Result<()> {
    let name = pg.get_dbname().context("postgres.url names no database")?.to_owned();
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        anyhow::bail!(
            "database `{name}` does not exist and its name is not a plain identifier; create it by hand"
        );
    }
    let mut maintenance = pg.clone();
    maintenance.dbname("postgres");
    let client = connect(config, &maintenance).await.with_context(|| {
        format!("database `{name}` does not exist and the maintenance database is unreachable")
    })?;
    match client.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await {
        Ok(()) => println!("created  database {name}"),
        // Created concurrently by another migrate: fine.
        Err(err) if err.code() == Some(&SqlState::DUPLICATE_DATABASE) => {}
        Err(err) => return Err(err).with_context(|| format!("cannot create database `{name}`")),
    }
    Ok(())
}
