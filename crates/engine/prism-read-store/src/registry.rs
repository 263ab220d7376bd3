//! The read-model registry: what applications run on this schema, in PostgreSQL, so operators'
//! tools (`prismctl`) work without any application code, and so a worker can tell at start
//! that its read models are set up the way its code defines them.
//!
//! An application registers with [`register`] (its `migrate` command, with the owner role):
//! one row per read model in `read_models` (name, sources, key, additive columns, cache kind,
//! table SQL) and its aggregate types in `application_aggregates` (one topic each). A name
//! another application registered is refused.

use prism_events::AggregateType;
use prism_postgres::StoreError;
use prism_projections::{intern, ReadModel};
use tokio_postgres::GenericClient;

/// A read model as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegisteredReadModel {
    /// Its name.
    pub name: &'static str,
    /// The application that registered it.
    pub application: String,
    /// The aggregate types (topics) that feed it.
    pub sources: Vec<String>,
    /// Its key columns.
    pub key_columns: Vec<String>,
    /// Its additive columns.
    pub additive_columns: Vec<String>,
    /// Its Redis key kind, when cached.
    pub cache_kind: Option<String>,
    /// Its table SQL, with `{table}`.
    pub table_sql: String,
}

impl RegisteredReadModel {
    /// The registry's form of an application's definition.
    pub fn of(application: &str, model: &ReadModel) -> Self {
        Self {
            name: model.name(),
            application: application.to_owned(),
            sources: model.sources().iter().map(|s| s.as_str().to_owned()).collect(),
            key_columns: model.key_columns().iter().map(|c| (*c).to_owned()).collect(),
            additive_columns: model.additive_columns().iter().map(|c| (*c).to_owned()).collect(),
            cache_kind: model.cache_kind().map(str::to_owned),
            table_sql: model.table_sql().to_owned(),
        }
    }
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Another application owns the name.
    #[error("read model {name} is registered by application {owner}, not {application}: read-model names are unique per schema")]
    NameTaken {
        /// The read model.
        name: String,
        /// Its registered owner.
        owner: String,
        /// Who tried.
        application: String,
    },
    /// PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<tokio_postgres::Error> for RegistryError {
    fn from(err: tokio_postgres::Error) -> Self {
        Self::Store(err.into())
    }
}

/// Registers (or updates) `application`'s read models and aggregate types.
pub async fn register(
    client: &mut tokio_postgres::Client,
    application: &str,
    aggregate_types: &[AggregateType],
    models: &[ReadModel],
) -> Result<Vec<RegisteredReadModel>, RegistryError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('prism.read_models'))", &[]).await?;
    let mut registered = Vec::with_capacity(models.len());
    for model in models {
        let entry = RegisteredReadModel::of(application, model);
        let owner: Option<String> = tx
            .query_opt("SELECT application FROM read_models WHERE name = $1", &[&entry.name])
            .await?
            .map(|r| r.get(0));
        if let Some(owner) = owner.filter(|o| o != application) {
            return Err(RegistryError::NameTaken {
                name: entry.name.to_owned(),
                owner,
                application: application.to_owned(),
            });
        }
        tx.execute(
            "INSERT INTO read_models (name, application, sources, key_columns, additive_columns, cache_kind, table_sql) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (name) DO UPDATE SET sources = EXCLUDED.sources, key_columns = EXCLUDED.key_columns, \
                 additive_columns = EXCLUDED.additive_columns, cache_kind = EXCLUDED.cache_kind, \
                 table_sql = EXCLUDED.table_sql, updated_at = now() \
             WHERE (read_models.sources, read_models.key_columns, read_models.additive_columns, read_models.cache_kind, read_models.table_sql) \
                IS DISTINCT FROM (EXCLUDED.sources, EXCLUDED.key_columns, EXCLUDED.additive_columns, EXCLUDED.cache_kind, EXCLUDED.table_sql)",
            &[
                &entry.name,
                &application,
                &entry.sources,
                &entry.key_columns,
                &entry.additive_columns,
                &entry.cache_kind,
                &entry.table_sql,
            ],
        )
        .await?;
        registered.push(entry);
    }
    for aggregate in aggregate_types {
        tx.execute(
            "INSERT INTO application_aggregates (application, aggregate_type) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&application, &aggregate.as_str()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(registered)
}

/// Every registered read model, by name.
pub async fn read_models(client: &impl GenericClient) -> Result<Vec<RegisteredReadModel>, StoreError> {
    let rows = client
        .query(
            "SELECT name, application, sources, key_columns, additive_columns, cache_kind, table_sql \
             FROM read_models ORDER BY name",
            &[],
        )
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| RegisteredReadModel {
            name: intern(row.get::<_, &str>(0)),
            application: row.get(1),
            sources: row.get(2),
            key_columns: row.get(3),
            additive_columns: row.get(4),
            cache_kind: row.get(5),
            table_sql: row.get(6),
        })
        .collect())
}

/// The registered read model called `name`.
pub async fn read_model(
    client: &impl GenericClient,
    name: &str,
) -> Result<Option<RegisteredReadModel>, StoreError> {
    Ok(read_models(client).await?.into_iter().find(|m| m.name == name))
}

/// Every registered aggregate type (one event topic each), with its application.
pub async fn aggregate_types(client: &impl GenericClient) -> Result<Vec<(String, String)>, StoreError> {
    let rows = client
        .query("SELECT application, aggregate_type FROM application_aggregates ORDER BY aggregate_type", &[])
        .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}
