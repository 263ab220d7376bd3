//! Statements run through each pooled connection's statement cache.
//!
//! A statement sent as text is parsed, analysed and planned by PostgreSQL on every call, and
//! costs an extra round trip to describe it. The projector runs the same dozen statements for
//! every batch, so its hot path prepares each once per connection (deadpool's
//! `prepare_cached`) and from then on only binds and executes it.

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::StoreError;

/// A transaction on a pooled connection: its statements can use the connection's cache.
pub type Transaction<'a> = deadpool_postgres::Transaction<'a>;

/// A pooled connection ([`crate::Database::client`]), with its statement cache.
pub type PooledClient = deadpool_postgres::Object;

/// Runs `sql` (prepared once per connection) and returns its rows.
pub async fn query(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, StoreError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.query(&statement, params).await?)
}

/// Runs `sql` (prepared once per connection) and returns the number of rows it changed.
pub async fn execute(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, StoreError> {
    let statement = tx.prepare_cached(sql).await?;
    Ok(tx.execute(&statement, params).await?)
}
