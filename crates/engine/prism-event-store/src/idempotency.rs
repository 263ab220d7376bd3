//! Command idempotency records: the first successful response to a request sent with an
//! `Idempotency-Key` header, kept for a retention period so a retry gets the same answer
//! without appending anything again.
//!
//! A record is written by [`crate::EventStore::append`] in the same transaction as the
//! command's events, so "events appended" and "response recorded" are one fact. Records older
//! than the retention are ignored by [`lookup`] and replaced by a new request with the same
//! key; [`purge_expired`] removes them for good.

use std::time::Duration;

use crate::event_store::ttl_seconds;
use prism_postgres::Database;
use prism_postgres::StoreError;

const INSERT: &str = include_str!("../sql/event_store/insert_idempotency.sql");
const LOOKUP: &str = include_str!("../sql/event_store/lookup_idempotency.sql");

/// The response to record for an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotencyRecord {
    /// The client's key.
    pub key: String,
    /// Method, path and body digest of the request, so reuse of the key for another request
    /// is recognised.
    pub fingerprint: String,
    /// The HTTP status of the response.
    pub status: u16,
    /// The JSON body of the response.
    pub body: serde_json::Value,
    /// How long the record stays valid.
    pub ttl: Duration,
}

/// A recorded response.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    /// The fingerprint of the request that produced it.
    pub fingerprint: String,
    /// Its HTTP status.
    pub status: u16,
    /// Its JSON body.
    pub body: serde_json::Value,
}

/// The unexpired response recorded for `key`, if any.
pub async fn lookup(db: &Database, key: &str, ttl: Duration) -> Result<Option<StoredResponse>, StoreError> {
    let client = db.client().await?;
    let statement = client.prepare_cached(LOOKUP).await?;
    let Some(row) = client.query_opt(&statement, &[&key, &ttl_seconds(ttl)]).await? else {
        return Ok(None);
    };
    let status: i16 = row.try_get("response_status")?;
    Ok(Some(StoredResponse {
        fingerprint: row.try_get("request_fingerprint")?,
        status: u16::try_from(status).map_err(|_| StoreError::Corrupt {
            what: "command_idempotency",
            detail: format!("response status {status}"),
        })?,
        body: row.try_get("response_body")?,
    }))
}

/// Records `record` inside `tx`. Returns false when an unexpired record of the key exists
/// (another request got there first); waits for a concurrent uncommitted one to decide.
pub(crate) async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    record: &IdempotencyRecord,
) -> Result<bool, StoreError> {
    let statement = tx.prepare_cached(INSERT).await?;
    let status = i16::try_from(record.status).map_err(|_| StoreError::Corrupt {
        what: "command_idempotency",
        detail: format!("response status {}", record.status),
    })?;
    let rows = tx
        .query(
            &statement,
            &[&record.key, &record.fingerprint, &status, &record.body, &ttl_seconds(record.ttl)],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// Removes records older than `ttl`; returns how many.
pub async fn purge_expired(db: &Database, ttl: Duration) -> Result<u64, StoreError> {
    let client = db.client().await?;
    let removed = client
        .execute(
            "DELETE FROM command_idempotency WHERE created_at < now() - make_interval(secs => $1)",
            &[&ttl_seconds(ttl)],
        )
        .await?;
    Ok(removed)
}
