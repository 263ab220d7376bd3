//! Setting an application's read models up in PostgreSQL ([`migrate`]), and checking at a
//! worker's start that they are set up the way its code defines them.

use std::fmt;

use anyhow::Context;
use prism_config::PrismConfig;
use prism_postgres::Database;
use prism_projections::{Application, ProjectionInstance};
use prism_read_store::registry::{self, RegisteredReadModel};
use tokio_postgres::GenericClient;

/// What [`migrate`] did.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    /// The application.
    pub application: &'static str,
    /// Engine migrations applied now.
    pub applied: Vec<i32>,
    /// Engine migrations already there.
    pub already_applied: Vec<i32>,
    /// The active generation of each read model.
    pub active: Vec<ProjectionInstance>,
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "engine migrations: {} applied now, {} already there",
            self.applied.len(),
            self.already_applied.len()
        )?;
        let active: Vec<String> = self.active.iter().map(ToString::to_string).collect();
        write!(f, "{}: read models registered, active: {}", self.application, active.join(", "))
    }
}

/// Applies the engine's migrations, registers `app`'s read models and aggregate types, and
/// makes sure every read model has an active generation with its table. Idempotent; needs the
/// schema owner's rights.
pub async fn migrate(config: &PrismConfig, app: &Application) -> anyhow::Result<MigrationReport> {
    let db = Database::connect(&config.postgres, &format!("{}-migrate", app.name()))
        .await
        .context("connecting to PostgreSQL")?;
    let mut client = db.client().await?;
    let report =
        prism_postgres::migrate(&mut client, &config.postgres.schema).await.context("engine migrations")?;
    let registered = registry::register(&mut client, app.name(), app.aggregate_types(), app.read_models())
        .await
        .context("registering the read models")?;
    let active = prism_read_store::read_models::ensure_active(&mut client, &registered)
        .await
        .context("creating the read models' tables")?;
    Ok(MigrationReport {
        application: app.name(),
        applied: report.applied,
        already_applied: report.already_applied,
        active,
    })
}

/// Checks that every read model of `app` is registered as its code defines it: a worker must
/// not write rows into a table shaped for another definition.
pub async fn check_registered(client: &impl GenericClient, app: &Application) -> anyhow::Result<()> {
    let stored = registry::read_models(client).await.with_context(|| {
        format!("reading the read-model registry (run `{}-projector migrate` first)", app.name())
    })?;
    for model in app.read_models() {
        let expected = RegisteredReadModel::of(app.name(), model);
        match stored.iter().find(|m| m.name == model.name()) {
            None => anyhow::bail!(
                "read model {} is not registered in schema {}: run `{}-projector migrate` (with the schema owner's role) first",
                model.name(),
                "the configured schema",
                app.name()
            ),
            Some(found) if found != &expected => anyhow::bail!(
                "read model {} is registered with another definition (by {}, sources {:?}, key {:?}): run `{}-projector migrate` \
                 to register this build's, and rebuild the read model if its table changed",
                model.name(),
                found.application,
                found.sources,
                found.key_columns,
                app.name()
            ),
            Some(_) => {}
        }
    }
    Ok(())
}
