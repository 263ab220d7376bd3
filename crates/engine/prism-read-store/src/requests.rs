//! Operator requests that need an application's folds: `prismctl` (which has none) records one,
//! a worker of the application that maintains the read model claims it, does it, and records
//! the result; `prismctl` waits for that and prints it.
//!
//! Today there is one kind, `redrive`. Claims use `FOR UPDATE SKIP LOCKED`, so with many workers
//! exactly one takes each request; a request whose worker died while running it is taken again
//! after [`STALE_AFTER`] (a redrive is idempotent: the gate skips what was applied).

use std::time::Duration;

use prism_postgres::{Database, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::projection::redrive::RedriveTarget;

/// A running request not finished after this long is taken to be abandoned by a worker that
/// died, and may be claimed again.
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// What a redrive request asks for, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum RedriveRequest {
    /// One dead letter, with its aggregate's chain.
    One {
        /// The dead letter's id.
        id: i64,
    },
    /// Every open dead letter of one aggregate.
    Aggregate {
        /// Its aggregate type.
        aggregate_type: String,
        /// Its id.
        aggregate_id: uuid::Uuid,
    },
    /// Every open dead letter.
    All,
}

impl RedriveRequest {
    /// The redrive target (aggregate type names interned).
    pub fn target(&self) -> RedriveTarget {
        match self {
            Self::One { id } => RedriveTarget::One(*id),
            Self::Aggregate { aggregate_type, aggregate_id } => RedriveTarget::Aggregate((
                prism_events::AggregateType::new(prism_projections::intern(aggregate_type)),
                *aggregate_id,
            )),
            Self::All => RedriveTarget::All,
        }
    }
}

/// A request as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorRequest {
    /// Its id.
    pub id: i64,
    /// `redrive`.
    pub kind: String,
    /// The projection instance it concerns (`order_summary_g1`).
    pub projection: String,
    /// What it asks for.
    pub arguments: Value,
    /// `pending`, `running`, `done` or `failed`.
    pub status: String,
    /// The worker that took it.
    pub claimed_by: Option<String>,
    /// What the worker reported.
    pub result: Option<Value>,
}

fn from_row(row: &tokio_postgres::Row) -> OperatorRequest {
    OperatorRequest {
        id: row.get(0),
        kind: row.get(1),
        projection: row.get(2),
        arguments: row.get(3),
        status: row.get(4),
        claimed_by: row.get(5),
        result: row.get(6),
    }
}

const COLUMNS: &str = "id, kind, projection, arguments, status, claimed_by, result";

/// Records a redrive request for `projection` (an instance id); returns its id.
pub async fn request_redrive(
    db: &Database,
    projection: &str,
    request: &RedriveRequest,
) -> Result<i64, StoreError> {
    let arguments = serde_json::to_value(request)
        .map_err(|e| StoreError::Corrupt { what: "operator request", detail: e.to_string() })?;
    let client = db.client().await?;
    let row = client
        .query_one(
            "INSERT INTO operator_requests (kind, projection, arguments) VALUES ('redrive', $1, $2) RETURNING id",
            &[&projection, &arguments],
        )
        .await?;
    Ok(row.get(0))
}

/// One request by id.
pub async fn get(db: &Database, id: i64) -> Result<Option<OperatorRequest>, StoreError> {
    let client = db.client().await?;
    let row =
        client.query_opt(&format!("SELECT {COLUMNS} FROM operator_requests WHERE id = $1"), &[&id]).await?;
    Ok(row.as_ref().map(from_row))
}

/// Claims the oldest pending (or abandoned) request of one of `projections` for `worker`.
pub async fn claim_next(
    db: &Database,
    projections: &[String],
    worker: &str,
) -> Result<Option<OperatorRequest>, StoreError> {
    if projections.is_empty() {
        return Ok(None);
    }
    let client = db.client().await?;
    let stale = STALE_AFTER.as_secs_f64();
    let row = client
        .query_opt(
            &format!(
                "UPDATE operator_requests SET status = 'running', claimed_by = $2, claimed_at = now() \
                 WHERE id = (SELECT id FROM operator_requests \
                             WHERE projection = ANY($1) \
                               AND (status = 'pending' OR (status = 'running' AND claimed_at < now() - make_interval(secs => $3))) \
                             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}"
            ),
            &[&projections, &worker, &stale],
        )
        .await?;
    Ok(row.as_ref().map(from_row))
}

/// Records the outcome of a claimed request.
pub async fn finish(db: &Database, id: i64, succeeded: bool, result: &Value) -> Result<(), StoreError> {
    let client = db.client().await?;
    let status = if succeeded { "done" } else { "failed" };
    client
        .execute(
            "UPDATE operator_requests SET status = $2, result = $3, finished_at = now() WHERE id = $1",
            &[&id, &status, result],
        )
        .await?;
    Ok(())
}
