//! Read-model tables and their generations.
//!
//! Each projection's rows live in `<projection>_g<generation>` (DDL in
//! `sql/read_models/<projection>.sql`, with `{table}` standing for that name). A view named
//! after the projection (`order_summary`, …) selects from the active generation: queries and
//! operators read the view, and a blue/green switch replaces it in one transaction.
//! `projection_generations` records which generations exist and which one is active.
//!
//! Table names are built from [`ProjectionInstance`] (a code constant and a number), never
//! from configuration text or event data.

use prism_projections::{ProjectionInstance, ProjectionName};
use tokio_postgres::GenericClient;

use crate::error::StoreError;

/// The `NOTIFY` channel that says a projection instance committed a batch (payload: the
/// instance id, e.g. `order_summary_g1`). Queries waiting for a version (read-your-writes)
/// listen on it instead of polling. One per schema.
pub fn applied_channel(schema: &str) -> String {
    format!("prism_applied_{schema}")
}

/// The `NOTIFY` channel that says which generation of a projection is active changed
/// (payload: the projection name). One per schema.
pub fn generations_channel(schema: &str) -> String {
    format!("prism_generations_{schema}")
}

/// The table DDL of a projection, with `{table}` for the instance's table name.
fn ddl_template(projection: ProjectionName) -> &'static str {
    match projection {
        ProjectionName::OrderSummary => include_str!("../sql/read_models/order_summary.sql"),
        ProjectionName::ProductCatalog => include_str!("../sql/read_models/product_catalog.sql"),
        ProjectionName::CartView => include_str!("../sql/read_models/cart_view.sql"),
        ProjectionName::UserProfile => include_str!("../sql/read_models/user_profile.sql"),
        ProjectionName::ProductSalesDaily => include_str!("../sql/read_models/product_sales_daily.sql"),
    }
}

/// A statement template with `{table}` replaced by the instance's table.
pub(crate) fn for_instance(template: &str, instance: ProjectionInstance) -> String {
    template.replace("{table}", &instance.id())
}

/// Creates the instance's tables and indexes if they do not exist.
pub async fn create_tables(
    client: &impl GenericClient,
    instance: ProjectionInstance,
) -> Result<(), StoreError> {
    client.batch_execute(&for_instance(ddl_template(instance.projection), instance)).await?;
    Ok(())
}

/// Points the projection's view at `instance`'s table.
pub async fn point_view(client: &impl GenericClient, instance: ProjectionInstance) -> Result<(), StoreError> {
    // Dropping first lets a new generation's table differ in columns from the old one.
    client
        .batch_execute(&format!(
            "DROP VIEW IF EXISTS {view}; CREATE VIEW {view} AS SELECT * FROM {table};",
            view = instance.projection.as_str(),
            table = instance.id()
        ))
        .await?;
    Ok(())
}

/// The generation the query side reads, if the projection has one.
pub async fn active_generation(
    client: &impl GenericClient,
    projection: ProjectionName,
) -> Result<Option<u32>, StoreError> {
    let row = client
        .query_opt(
            "SELECT generation FROM projection_generations WHERE projection = $1 AND status = 'active'",
            &[&projection.as_str()],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, i32>(0).unsigned_abs()))
}

/// Makes sure every projection has an active generation with its tables and view: a new
/// deployment gets generation 1. Idempotent; run by `prismctl migrate` (the projectors
/// themselves never run DDL). Returns the active instances.
pub async fn ensure_active(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<ProjectionInstance>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('prism.read_models'))", &[]).await?;
    let mut active = Vec::new();
    for projection in ProjectionName::ALL {
        let generation = match active_generation(&tx, projection).await? {
            Some(generation) => generation,
            None => {
                tx.execute(
                    "INSERT INTO projection_generations (projection, generation, status, activated_at)
                     VALUES ($1, 1, 'active', now())",
                    &[&projection.as_str()],
                )
                .await?;
                1
            }
        };
        let instance = ProjectionInstance::new(projection, generation);
        create_tables(&tx, instance).await?;
        point_view(&tx, instance).await?;
        active.push(instance);
    }
    tx.commit().await?;
    Ok(active)
}
