//! Schema migrations: numbered `.sql` files in `migrations/`, compiled in, applied in order
//! in one transaction under an advisory lock, each recorded with a checksum so an edited
//! migration is caught instead of silently diverging.
//!
//! Why not a migration crate: Prism needs the schema created and locked per target schema
//! (tests run many schemas side by side), and read-model tables per projection generation
//! (created from the applications' definitions, see `prism-read-store`); the runner is the
//! forty lines below.

use tokio_postgres::Client;

use crate::error::StoreError;

/// One migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Applied in ascending order; never reused.
    pub version: i32,
    /// Short name, as in the file name.
    pub name: &'static str,
    /// The statements.
    pub sql: &'static str,
}

/// Every migration this build knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "event_store", sql: include_str!("../migrations/0001_event_store.sql") },
    Migration {
        version: 2,
        name: "projection_state",
        sql: include_str!("../migrations/0002_projection_state.sql"),
    },
    Migration {
        version: 3,
        name: "read_model_registry",
        sql: include_str!("../migrations/0003_read_model_registry.sql"),
    },
    Migration {
        version: 4,
        name: "gate_event_ids",
        sql: include_str!("../migrations/0004_gate_event_ids.sql"),
    },
    Migration {
        version: 5,
        name: "gate_fillfactor",
        sql: include_str!("../migrations/0005_gate_fillfactor.sql"),
    },
    Migration {
        version: 6,
        name: "projection_replays",
        sql: include_str!("../migrations/0006_projection_replays.sql"),
    },
];

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this run.
    pub applied: Vec<i32>,
    /// Versions that were already there.
    pub already_applied: Vec<i32>,
}

/// Creates `schema` if needed and applies pending migrations to it. Safe to run from many
/// processes at once: the first takes the lock and applies, the others wait and find nothing
/// to do.
pub async fn migrate(client: &mut Client, schema: &str) -> Result<MigrationReport, StoreError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('prism.migrate.' || $1))", &[&schema]).await?;
    // `schema` passed the identifier check when configuration loaded: it needs no quoting.
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path = {schema};
         CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer     PRIMARY KEY,
             name       text        NOT NULL,
             checksum   text        NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await?;
    let rows =
        tx.query("SELECT version, name, checksum FROM schema_migrations ORDER BY version", &[]).await?;
    let latest = MIGRATIONS.last().map_or(0, |m| m.version);
    let mut report = MigrationReport { applied: Vec::new(), already_applied: Vec::new() };
    for row in &rows {
        let version: i32 = row.get(0);
        let Some(known) = MIGRATIONS.iter().find(|m| m.version == version) else {
            return Err(StoreError::MigrationAhead { version, latest });
        };
        let applied: String = row.get(2);
        let expected = checksum(known.sql);
        if applied != expected {
            return Err(StoreError::MigrationDrift { version, name: known.name.into(), applied, expected });
        }
        report.already_applied.push(version);
    }
    for migration in MIGRATIONS.iter().filter(|m| !report.already_applied.contains(&m.version)) {
        tx.batch_execute(migration.sql).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &checksum(migration.sql)],
        )
        .await?;
        report.applied.push(migration.version);
    }
    tx.commit().await?;
    Ok(report)
}

/// FNV-1a over the migration text: enough to notice an edit, no dependency needed.
fn checksum(sql: &str) -> String {
    let hash = sql.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}
