//! Read-model tables and their generations.
//!
//! Each read model's rows live in `<name>_g<generation>`, created from the application's
//! table SQL (with `{table}` standing for that name) plus the engine's bookkeeping columns. A
//! view named after the read model (`order_summary`, …) selects from the active generation:
//! queries and operators read the view, and a blue/green switch replaces it in one
//! transaction. `projection_generations` records which generations exist and which one is
//! active.
//!
//! Table names are built from [`ProjectionInstance`] (a checked identifier and a number),
//! never from event data.

use prism_postgres::StoreError;
use prism_projections::{ProjectionInstance, REVISION_COLUMN, VERSION_COLUMN};
use tokio_postgres::GenericClient;

use crate::registry::RegisteredReadModel;

/// The `NOTIFY` channel that says a projection instance committed a batch (payload:
/// [`applied_payload`]). Queries waiting for a version (read-your-writes) listen on it instead
/// of polling. One per schema.
pub fn applied_channel(schema: &str) -> String {
    format!("prism_applied_{schema}")
}

/// The most bytes of key text an applied notification lists. A batch whose rows take more names
/// its instance alone, which wakes every waiter of the read model (PostgreSQL caps a payload at
/// 8 000 bytes; a batch under a backlog writes thousands of rows, and there the waiters are
/// better woken once than told them all).
pub const APPLIED_KEYS_MAX_BYTES: usize = 2_000;

/// What an applied notification says about the rows of its instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppliedRows {
    /// Any row may have moved to a newer aggregate version.
    Any,
    /// Only the rows under these keys (each as `prism_projections::key_value_text` names it):
    /// the rows the batch's folds wrote, duplicates' included. Sums never move a row's
    /// aggregate version, so the rows only a sum changed are not listed.
    Keys(Vec<String>),
}

impl AppliedRows {
    /// Whether the row under `key` may have moved (`None`: a waiter that knows no row, which
    /// any batch concerns).
    pub fn concern(&self, key: Option<&str>) -> bool {
        match (self, key) {
            (Self::Keys(keys), Some(key)) => keys.iter().any(|listed| listed == key),
            _ => true,
        }
    }
}

/// The payload of an applied notification: the instance id alone (`order_summary_g1`: any row
/// may have moved), or the id, a space and a JSON array of the keys of the rows whose version
/// may have moved (`order_summary_g1 ["…","…"]`), so that a query waiting for another row's
/// version need not look again. Keys past [`APPLIED_KEYS_MAX_BYTES`] make it the id alone.
pub fn applied_payload<'a>(instance: &str, keys: Option<impl IntoIterator<Item = &'a str>>) -> String {
    let Some(keys) = keys else { return instance.to_owned() };
    // Written key by key, and given up at the bound: a batch under a backlog has thousands.
    let mut payload = format!("{instance} [");
    let listed_from = payload.len() - 1;
    for (n, key) in keys.into_iter().enumerate() {
        if n > 0 {
            payload.push(',');
        }
        match serde_json::to_string(key) {
            Ok(quoted) => payload.push_str(&quoted),
            Err(_) => return instance.to_owned(),
        }
        if payload.len() - listed_from >= APPLIED_KEYS_MAX_BYTES {
            return instance.to_owned();
        }
    }
    payload.push(']');
    payload
}

/// Reads an [`applied_payload`]: the instance id as written, and which rows it names. A key
/// list that does not read as one names any row: a look too many is cheap, a missed one costs a
/// waiter its wait.
pub fn parse_applied_payload(payload: &str) -> (&str, AppliedRows) {
    match payload.split_once(' ') {
        None => (payload, AppliedRows::Any),
        Some((instance, keys)) => match serde_json::from_str::<Vec<String>>(keys) {
            Ok(keys) => (instance, AppliedRows::Keys(keys)),
            Err(_) => (instance, AppliedRows::Any),
        },
    }
}

/// The `NOTIFY` channel that says which generation of a read model is active changed, or that
/// a generation started building (payload: the read model's name). One per schema.
pub fn generations_channel(schema: &str) -> String {
    format!("prism_generations_{schema}")
}

/// A statement template with `{table}` replaced by the instance's table.
pub fn for_instance(template: &str, instance: ProjectionInstance) -> String {
    template.replace("{table}", &instance.id())
}

/// Creates the instance's table and indexes if they do not exist, with the engine's
/// bookkeeping columns.
pub async fn create_tables(
    client: &impl GenericClient,
    instance: ProjectionInstance,
    table_sql: &str,
) -> Result<(), StoreError> {
    client.batch_execute(&for_instance(table_sql, instance)).await?;
    client
        .batch_execute(&format!(
            "ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {VERSION_COLUMN} bigint NOT NULL DEFAULT 0, \
             ADD COLUMN IF NOT EXISTS {REVISION_COLUMN} bigint NOT NULL DEFAULT 0",
            table = instance.id()
        ))
        .await?;
    Ok(())
}

/// Refuses a table that cannot hold the read model: a key or additive column it lacks, or an
/// additive column that is not an exact number. (Floating-point sums depend on the order
/// events are added in, and batches make that order vary: a rebuild would not reproduce them,
/// and its verification would fail.)
pub async fn check_columns(
    client: &impl GenericClient,
    instance: ProjectionInstance,
    model: &RegisteredReadModel,
) -> Result<(), StoreError> {
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1",
            &[&instance.id()],
        )
        .await?;
    let type_of =
        |column: &str| rows.iter().find(|r| r.get::<_, &str>(0) == column).map(|r| r.get::<_, String>(1));
    for column in &model.key_columns {
        if type_of(column).is_none() {
            return Err(StoreError::Corrupt {
                what: "read-model table",
                detail: format!(
                    "{} has no key column `{column}` that read model {} names",
                    instance.id(),
                    model.name
                ),
            });
        }
    }
    for column in &model.additive_columns {
        match type_of(column).as_deref() {
            None => {
                return Err(StoreError::Corrupt {
                    what: "read-model table",
                    detail: format!(
                        "{} has no additive column `{column}` that read model {} names",
                        instance.id(),
                        model.name
                    ),
                })
            }
            Some("smallint" | "integer" | "bigint" | "numeric") => {}
            Some(other) => {
                return Err(StoreError::Corrupt {
                    what: "read-model table",
                    detail: format!(
                        "additive column `{column}` of {} is {other}: sums must be exact (smallint, integer, \
                         bigint or numeric), since a floating-point sum depends on the order of its terms \
                         and a rebuild would not reproduce it",
                        instance.id()
                    ),
                })
            }
        }
    }
    Ok(())
}

/// Points the read model's view at `instance`'s table.
pub async fn point_view(client: &impl GenericClient, instance: ProjectionInstance) -> Result<(), StoreError> {
    // Dropping first lets a new generation's table differ in columns from the old one.
    client
        .batch_execute(&format!(
            "DROP VIEW IF EXISTS {view}; CREATE VIEW {view} AS SELECT * FROM {table};",
            view = instance.projection,
            table = instance.id()
        ))
        .await?;
    Ok(())
}

/// The generation the query side reads, if the read model has one.
pub async fn active_generation(
    client: &impl GenericClient,
    read_model: &str,
) -> Result<Option<u32>, StoreError> {
    let row = client
        .query_opt(
            "SELECT generation FROM projection_generations WHERE projection = $1 AND status = 'active'",
            &[&read_model],
        )
        .await?;
    Ok(row.map(|r| r.get::<_, i32>(0).unsigned_abs()))
}

/// Makes sure every one of `read_models` has an active generation with its table and view: a
/// new read model gets generation 1. Idempotent; run by the application's `migrate` and by
/// `prismctl migrate` (with the owner role: the projectors themselves never run DDL). Returns
/// the active instances.
pub async fn ensure_active(
    client: &mut tokio_postgres::Client,
    read_models: &[RegisteredReadModel],
) -> Result<Vec<ProjectionInstance>, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('prism.read_models'))", &[]).await?;
    let mut active = Vec::new();
    for model in read_models {
        let generation = match active_generation(&tx, model.name).await? {
            Some(generation) => generation,
            None => {
                tx.execute(
                    "INSERT INTO projection_generations (projection, generation, status, activated_at)
                     VALUES ($1, 1, 'active', now())",
                    &[&model.name],
                )
                .await?;
                1
            }
        };
        let instance = ProjectionInstance::new(model.name, generation);
        create_tables(&tx, instance, &model.table_sql).await?;
        check_columns(&tx, instance, model).await?;
        point_view(&tx, instance).await?;
        active.push(instance);
    }
    tx.commit().await?;
    Ok(active)
}

/// Whether the table of `instance` exists.
pub async fn table_exists(
    client: &impl GenericClient,
    instance: ProjectionInstance,
) -> Result<bool, StoreError> {
    Ok(client.query_one("SELECT to_regclass($1) IS NOT NULL", &[&instance.id()]).await?.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_applied_payload_names_its_rows_until_they_take_too_much_room() {
        let keys = ["a", "quote \" and space", "b"];
        let payload = applied_payload("cart_view_g2", Some(keys));
        assert_eq!(payload, r#"cart_view_g2 ["a","quote \" and space","b"]"#);
        assert_eq!(
            parse_applied_payload(&payload),
            ("cart_view_g2", AppliedRows::Keys(keys.iter().map(|k| k.to_string()).collect()))
        );
        assert_eq!(applied_payload("cart_view_g2", Some([])), "cart_view_g2 []");
        assert_eq!(parse_applied_payload("cart_view_g2 []"), ("cart_view_g2", AppliedRows::Keys(Vec::new())));
        // No list, or one too long: the instance alone, any row.
        assert_eq!(applied_payload("cart_view_g2", None::<[&str; 0]>), "cart_view_g2");
        let many: Vec<String> = (0..100).map(|i| format!("{i:036}")).collect();
        assert_eq!(applied_payload("cart_view_g2", Some(many.iter().map(String::as_str))), "cart_view_g2");
        assert_eq!(parse_applied_payload("cart_view_g2"), ("cart_view_g2", AppliedRows::Any));
        // A list that does not read: any row.
        assert_eq!(parse_applied_payload("cart_view_g2 [\"a\""), ("cart_view_g2", AppliedRows::Any));
    }
}
