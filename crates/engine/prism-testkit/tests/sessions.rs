//! Every pooled PostgreSQL connection starts with the session Prism's SQL relies on: the
//! configured schema as search path, UTC, floats printed in full (their shortest text that
//! reads back exactly) whatever a database or role sets, and plans that stay on the indexes.
//! Prepared
//! statements (the projector prepares its statements once per connection) settle on a generic
//! plan after a few executions; one chosen while a table was small (a new deployment, a new
//! generation) would be a sequential scan, kept as the table grows. With sequential scans
//! priced out, the generic plan of a key lookup is an index scan whatever the table's size.

use prism_testkit::{probe, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_use_the_schema_utc_shortest_floats_and_index_plans() {
    let env = TestEnv::new(&probe::application()).await.expect("test environment (PostgreSQL, Kafka, Redis)");
    let client = env.db.client().await.expect("pooled connection");
    let setting = |name: &'static str| {
        let client = &client;
        async move {
            let row = client.query_one(&format!("SHOW {name}"), &[]).await.expect("SHOW");
            row.get::<_, String>(0)
        }
    };
    assert_eq!(setting("TimeZone").await, "UTC");
    assert_eq!(setting("search_path").await, env.config.postgres.schema);
    // Set by the connection itself (its startup options: source "client"), so a database's or
    // role's own default cannot change it; 1 is also PostgreSQL's default.
    let (value, source): (String, String) = {
        let row = client
            .query_one("SELECT setting, source FROM pg_settings WHERE name = 'extra_float_digits'", &[])
            .await
            .expect("extra_float_digits");
        (row.get(0), row.get(1))
    };
    assert_eq!((value.as_str(), source.as_str()), ("1", "client"), "extra_float_digits and where it was set");

    // A key lookup prepared while its table holds one analysed row, executed until
    // PostgreSQL settles on a generic plan; then the table grows (no ANALYZE, as between two
    // autovacuum runs) and the plan it keeps is read.
    client
        .batch_execute(
            "CREATE TABLE plan_probe (id bigint PRIMARY KEY, body text NOT NULL);
             INSERT INTO plan_probe VALUES (1, 'one');
             ANALYZE plan_probe;
             PREPARE plan_probe_lookup(bigint[]) AS SELECT body FROM plan_probe WHERE id = ANY($1);",
        )
        .await
        .expect("create and prepare the probe");
    for _ in 0..10 {
        client.batch_execute("EXECUTE plan_probe_lookup(ARRAY[1, 2, 3])").await.expect("execute");
    }
    client
        .batch_execute("INSERT INTO plan_probe SELECT i, 'row ' || i FROM generate_series(2, 200000) AS i")
        .await
        .expect("grow the probe table");
    let plan: Vec<String> = client
        .query("EXPLAIN EXECUTE plan_probe_lookup(ARRAY[1, 2, 3])", &[])
        .await
        .expect("explain")
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect();
    client.batch_execute("DEALLOCATE plan_probe_lookup; DROP TABLE plan_probe").await.expect("clean up");
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index") && !plan.contains("Seq Scan"),
        "a key lookup prepared on a small table kept a sequential scan after it grew:\n{plan}"
    );
}
