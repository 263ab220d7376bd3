//! The version gate's per-batch statements touch only the batch's own gate rows, however the
//! table grew since PostgreSQL cached their plan.
//!
//! Statements are prepared once per connection and, after a few executions, run a cached
//! generic plan, replanned only when an ANALYZE invalidates it. A plan cached while the gate
//! table was small (a new deployment, a new generation) and later run against a large one must
//! still look each key up, not read every row of the instance: as joins, the lock and the
//! advance read all of them per batch, 20 ms a batch at 150 000 rows instead of 1. The advance
//! goes to the rows where the lock found them (their `ctid`), without a lookup of its own.

use prism_testkit::TestEnv;
use serde_json::Value;
use uuid::Uuid;

const LOCK_SQL: &str = include_str!("../sql/projection/gate_lock.sql");
const ADVANCE_SQL: &str = include_str!("../sql/projection/gate_advance.sql");
const INSTANCE: &str = "plan_probe_g1";
/// Gate rows of the instance when the plans are cached, and after the table has grown.
const SMALL: i64 = 40;
const LARGE: i64 = 60_000;
/// Keys per batch.
const KEYS: usize = 20;

/// Rows every scan of `relation` in the plan tree `node` produced, summed over its loops.
fn rows_scanned(node: &Value, relation: &str) -> f64 {
    let own = if node["Relation Name"] == relation {
        node["Actual Rows"].as_f64().unwrap_or(0.0) * node["Actual Loops"].as_f64().unwrap_or(1.0)
    } else {
        0.0
    };
    let below: f64 =
        node["Plans"].as_array().map_or(0.0, |plans| plans.iter().map(|p| rows_scanned(p, relation)).sum());
    own + below
}

/// `KEYS` of the instance's aggregates, sorted (as the engine sends a batch's keys).
async fn sample_keys(client: &impl tokio_postgres::GenericClient) -> Vec<Uuid> {
    let sql = format!(
        "SELECT array_agg(aggregate_id ORDER BY aggregate_id) FROM \
         (SELECT aggregate_id FROM projection_gate WHERE projection = '{INSTANCE}' ORDER BY random() LIMIT {KEYS}) k"
    );
    client.query_one(&sql, &[]).await.expect("keys").get(0)
}

/// `ids` as a `uuid[]` literal.
fn uuids(ids: &[Uuid]) -> String {
    let each: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    format!("'{{{}}}'::uuid[]", each.join(","))
}

/// As many `probe` aggregate types as `ids`, as a `text[]` literal.
fn types(ids: &[Uuid]) -> String {
    format!("'{{{}}}'::text[]", vec!["probe"; ids.len()].join(","))
}

#[tokio::test]
async fn lock_and_advance_look_up_the_batch_keys_whatever_the_table_grew_to() {
    let env = TestEnv::new(&prism_testkit::probe::application()).await.expect("test environment");
    // A connection of the engine's pool: its session settings are the projector's.
    let mut client = env.db.client().await.expect("PostgreSQL");
    // No ANALYZE may replan the statements during the test: that would hide a bad plan.
    client
        .batch_execute("ALTER TABLE projection_gate SET (autovacuum_enabled = false)")
        .await
        .expect("setting");
    let grow = |count: i64| {
        format!(
            "INSERT INTO projection_gate (projection, aggregate_type, aggregate_id, last_version) \
             SELECT '{INSTANCE}', 'probe', gen_random_uuid(), 1 FROM generate_series(1, {count})"
        )
    };
    client.batch_execute(&grow(SMALL)).await.expect("the small gate");
    client
        .batch_execute(&format!(
            "PREPARE gate_lock (text, text[], uuid[]) AS {LOCK_SQL};
             PREPARE gate_advance (text[], bigint[], uuid[]) AS {ADVANCE_SQL}"
        ))
        .await
        .expect("the gate statements prepare");

    // EXECUTE takes literals, not bind parameters.
    let lock = |ids: &[Uuid]| format!("EXECUTE gate_lock ('{INSTANCE}', {}, {})", types(ids), uuids(ids));
    // The advance goes to the rows where the lock found them.
    let advance = |locked: &[tokio_postgres::Row]| {
        let row_ids: Vec<String> =
            locked.iter().map(|row| format!("\"{}\"", row.get::<_, String>(5))).collect();
        format!(
            "EXECUTE gate_advance ('{{{}}}'::text[], array_fill(2::bigint, ARRAY[{n}]), array_fill(NULL::uuid, ARRAY[{n}]))",
            row_ids.join(","),
            n = locked.len()
        )
    };

    // Enough executions on the small table for PostgreSQL to settle on a generic plan.
    for _ in 0..8 {
        let tx = client.transaction().await.expect("transaction");
        let ids = sample_keys(&*tx).await;
        let locked = tx.query(&lock(&ids), &[]).await.expect("lock");
        assert_eq!(locked.len(), KEYS, "every key's row is locked");
        let advanced = tx.execute(&advance(&locked), &[]).await.expect("advance");
        assert_eq!(advanced, KEYS as u64, "every key's row is advanced");
        tx.rollback().await.expect("rollback");
    }
    let generic: Vec<(String, i64)> = client
        .query("SELECT name, generic_plans FROM pg_prepared_statements WHERE name LIKE 'gate_%'", &[])
        .await
        .expect("plan counts")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert!(
        generic.len() == 2 && generic.iter().all(|(_, plans)| *plans > 0),
        "the statements run their cached generic plan (else this test proves nothing): {generic:?}"
    );

    client.batch_execute(&grow(LARGE)).await.expect("the gate grows");
    let tx = client.transaction().await.expect("transaction");
    let ids = sample_keys(&*tx).await;
    let explain = |statement: &str| format!("EXPLAIN (ANALYZE, FORMAT JSON) {statement}");
    let lock_plan: Value = tx.query_one(&explain(&lock(&ids)), &[]).await.expect("the lock's plan").get(0);
    let locked = tx.query(&lock(&ids), &[]).await.expect("lock");
    let advance_plan: Value =
        tx.query_one(&explain(&advance(&locked)), &[]).await.expect("the advance's plan").get(0);
    let advanced: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM projection_gate WHERE projection = '{INSTANCE}' AND last_version = 2"
            ),
            &[],
        )
        .await
        .expect("advanced rows")
        .get(0);
    assert_eq!(advanced, KEYS as i64, "the advance wrote exactly the locked rows");
    tx.rollback().await.expect("rollback");

    for (statement, plan) in [("lock", &lock_plan), ("advance", &advance_plan)] {
        let scanned = rows_scanned(&plan[0]["Plan"], "projection_gate");
        assert!(
            scanned <= 2.0 * KEYS as f64,
            "the gate {statement} read {scanned} gate rows for {KEYS} keys in a table of {} rows: {plan:#}",
            SMALL + LARGE
        );
    }
}
