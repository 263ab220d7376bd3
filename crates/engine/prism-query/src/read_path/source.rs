//! Where rows are read from: the one seam between the read path and PostgreSQL.
//!
//! Today every read goes to the primary ([`RowSource::primary`]). Each read says how fresh its
//! answer must be ([`Freshness`]), which the primary always satisfies. With read replicas
//! (`query.replica_urls`, issue 12) this type grows a set of replica pools and the choice
//! moves here, and nowhere else:
//!
//! - [`Freshness::Any`] (lists, ranges, plain entity reads) may be answered by any replica
//!   that answers, the primary as a fallback;
//! - [`Freshness::AtLeast`] (read-your-writes) is answered by a replica only when the row it
//!   returns carries at least that version in [`VERSION_COLUMN`](prism_projections::VERSION_COLUMN)
//!   — the rows say which version they reflect, so no replay position is needed — and by the
//!   primary otherwise, within the caller's same deadline. No answer is ever older than asked.
//!
//! Waiters are woken by the primary's `NOTIFY` (standbys do not deliver notifications), which
//! is why the listener (`crate::notify`) keeps its own connection to the primary.

use prism_postgres::{Database, StoreError};
use serde_json::Value;
use tokio_postgres::types::ToSql;

/// How fresh a read's answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Whatever a source has now.
    Any,
    /// A row reflecting at least this version of its aggregate (read-your-writes).
    AtLeast(i64),
}

/// The PostgreSQL side of the read path.
#[derive(Debug, Clone)]
pub(crate) struct RowSource {
    /// The primary: every read today, the fallback with replicas, and where the generations
    /// are read.
    primary: Database,
}

impl RowSource {
    /// Reads from `primary`.
    pub(crate) fn new(primary: Database) -> Self {
        Self { primary }
    }

    /// The primary.
    pub(crate) fn primary(&self) -> &Database {
        &self.primary
    }

    /// The first column of the rows `sql` selects (a jsonb value per row), with `params`.
    pub(crate) async fn rows(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        freshness: Freshness,
    ) -> Result<Vec<Value>, StoreError> {
        // One source today; `freshness` is what a replica-aware choice will look at.
        let _ = freshness;
        let client = self.primary.client().await?;
        let statement = client.prepare_cached(sql).await?;
        let rows = client.query(&statement, params).await?;
        rows.iter().map(|row| row.try_get::<_, Value>(0).map_err(StoreError::from)).collect()
    }

    /// Whether the sources answer (readiness).
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.primary.ping().await
    }
}
