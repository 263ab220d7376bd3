//! What the tests that compare a batch's cache documents with the stored rows share: both
//! sides read as (key, JSON document), sorted by key.

use prism_read_store::projection::BatchOutcome;
use prism_testkit::TestEnv;
use serde_json::Value;

/// The rows of `table` as `to_jsonb` reads them, without the engine's bookkeeping, by `key`'s
/// text (an SQL expression), sorted by it as Rust sorts strings.
pub async fn stored(env: &TestEnv, table: &str, key: &str) -> Vec<(String, Value)> {
    let client = env.db.client().await.expect("client");
    let rows = client
        .query(&format!("SELECT {key}, to_jsonb(t) - 'prism_version' - 'prism_revision' FROM {table} t"), &[])
        .await
        .expect("the stored rows");
    let mut rows: Vec<(String, Value)> = rows.iter().map(|row| (row.get(0), row.get(1))).collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// The cache entries of `outcome` as (key, document), sorted by key.
pub fn documents(outcome: &BatchOutcome) -> Vec<(String, Value)> {
    let mut documents: Vec<(String, Value)> = outcome
        .cache_entries
        .iter()
        .map(|e| (e.id.clone(), serde_json::from_str(&e.document).expect("a JSON document")))
        .collect();
    documents.sort_by(|a, b| a.0.cmp(&b.0));
    documents
}
