//! `ops/postgres/roles.sql` against the real PostgreSQL: the roles it creates can do their job
//! and nothing more.
//!
//! Why a test: least privilege is only worth something if it is enforced by the server, and
//! grants drift silently (a new table without grants works for the superuser in development
//! and fails in production; an over-broad grant is never noticed). Each check below runs as the
//! role itself (`SET ROLE`, which drops the superuser's bypass) on a migrated schema of a
//! private [`TestEnv`], and asserts PostgreSQL's own verdict: `42501 insufficient_privilege`
//! or success.
//!
//! Roles are cluster-global and shared by concurrent test processes; the file serialises
//! itself with an advisory lock and is idempotent, which the test exercises by applying it
//! twice at once. Grants are per schema, so each test's schema stays its own.

use prism_projections::ProjectionInstance;
use prism_testkit::TestEnv;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// The file under test, with `{schema}` standing for the schema.
const ROLES_SQL: &str = include_str!("../../../../../ops/postgres/roles.sql");

/// `roles.sql` for `schema`.
fn roles_sql(schema: &str) -> String {
    assert!(ROLES_SQL.contains("{schema}"), "roles.sql must be parametrised by {{schema}}");
    ROLES_SQL.replace("{schema}", schema)
}

/// Runs `sql` as `role` and returns PostgreSQL's verdict; the session is the superuser again
/// afterwards.
async fn run_as(client: &Client, role: &str, sql: &str) -> Result<u64, tokio_postgres::Error> {
    client.batch_execute(&format!("SET ROLE {role}")).await.expect("SET ROLE");
    let result = client.execute(sql, &[]).await;
    client.batch_execute("RESET ROLE").await.expect("RESET ROLE");
    result
}

/// Asserts `sql` succeeds as `role`.
async fn allowed(client: &Client, role: &str, sql: &str) -> u64 {
    match run_as(client, role, sql).await {
        Ok(rows) => rows,
        Err(err) => panic!("{role} must be allowed to run `{sql}`, got: {err}"),
    }
}

/// Asserts `sql` fails as `role` with permission denied (not with any other error, which would
/// prove nothing about privileges).
async fn denied(client: &Client, role: &str, sql: &str) {
    match run_as(client, role, sql).await {
        Ok(_) => panic!("{role} must not be allowed to run `{sql}`, but it succeeded"),
        Err(err) => assert_eq!(
            err.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{role} running `{sql}` must fail with permission denied, got: {err}"
        ),
    }
}

const INSERT_ORDER: &str = "INSERT INTO order_summary_g1
    (order_id, user_id, status, lines, item_count, total_cents, placed_at, updated_at, version)
    VALUES (gen_random_uuid(), gen_random_uuid(), 'placed', '[]', 1, 100, now(), now(), 1)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_grant_each_service_what_it_needs_and_no_ddl() {
    prism_testkit::init_logging();
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let schema = env.config.postgres.schema.clone();
    let sql = roles_sql(&schema);

    // Applied twice at once on two connections: both runs succeed (idempotent, serialised).
    let (a, b) = (env.pg().await.expect("connection a"), env.pg().await.expect("connection b"));
    let (first, second) = tokio::join!(a.batch_execute(&sql), b.batch_execute(&sql));
    first.expect("roles.sql (first concurrent run)");
    second.expect("roles.sql (second concurrent run)");
    // And once more afterwards: a rerun changes nothing that matters below.
    a.batch_execute(&sql).await.expect("roles.sql (rerun)");

    let c = env.pg().await.expect("connection");

    // prism_projector: DML on read tables and bookkeeping; no DDL, no write side.
    assert_eq!(allowed(&c, "prism_projector", INSERT_ORDER).await, 1);
    assert_eq!(allowed(&c, "prism_projector", "UPDATE order_summary_g1 SET version = version + 1").await, 1);
    allowed(
        &c,
        "prism_projector",
        "INSERT INTO projection_gate (projection, aggregate_type, aggregate_id, last_version)
         VALUES ('order_summary_g1', 'order', gen_random_uuid(), 1)",
    )
    .await;
    allowed(&c, "prism_projector", "UPDATE projection_gate SET last_version = last_version + 1").await;
    allowed(
        &c,
        "prism_projector",
        "INSERT INTO dead_letters (projection, source_topic, source_partition, source_offset,
             error_class, error_kind, error_message)
         VALUES ('order_summary_g1', 'order.events', 0, 42, 'permanent', 'unprojectable', 'test')",
    )
    .await;
    allowed(&c, "prism_projector", "SELECT 1 FROM projection_generations").await;
    denied(&c, "prism_projector", &format!("CREATE TABLE {schema}.sneaky (id int)")).await;
    denied(&c, "prism_projector", "CREATE TABLE sneaky (id int)").await;
    denied(&c, "prism_projector", "DROP TABLE order_summary_g1").await;
    denied(&c, "prism_projector", "TRUNCATE order_summary_g1").await;
    denied(&c, "prism_projector", "ALTER TABLE order_summary_g1 ADD COLUMN sneaky int").await;
    denied(&c, "prism_projector", "UPDATE projection_generations SET status = 'retired'").await;
    denied(&c, "prism_projector", "DELETE FROM events").await;
    // The registry is the owner's (`<app>-projector migrate`); workers read it and answer
    // operator requests.
    allowed(&c, "prism_projector", "SELECT 1 FROM read_models").await;
    denied(&c, "prism_projector", "DELETE FROM read_models").await;
    denied(&c, "prism_projector", "UPDATE application_aggregates SET application = 'other'").await;
    allowed(&c, "prism_projector", "UPDATE operator_requests SET status = status").await;

    // prism_query: reads the read models (view and table), writes nothing.
    let seen: i64 = {
        c.batch_execute("SET ROLE prism_query").await.expect("SET ROLE");
        let count = c.query_one("SELECT count(*) FROM order_summary", &[]).await;
        c.batch_execute("RESET ROLE").await.expect("RESET ROLE");
        count.expect("prism_query reads the order_summary view").get(0)
    };
    assert_eq!(seen, 1, "prism_query sees the projector's row through the view");
    allowed(&c, "prism_query", "SELECT 1 FROM order_summary_g1").await;
    denied(&c, "prism_query", INSERT_ORDER).await;
    denied(&c, "prism_query", "UPDATE order_summary_g1 SET version = version + 1").await;
    denied(&c, "prism_query", "DELETE FROM order_summary_g1").await;
    denied(&c, "prism_query", "SELECT 1 FROM events").await;
    denied(&c, "prism_query", "SELECT 1 FROM projection_gate").await;
    denied(&c, "prism_query", &format!("CREATE TABLE {schema}.sneaky (id int)")).await;

    // prism_commands: appends events and outbox rows, deletes published ones; never rewrites
    // history, never touches the read side.
    allowed(
        &c,
        "prism_commands",
        "WITH e AS (
             INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type,
                 schema_version, occurred_at, correlation_id, causation_id, payload)
             VALUES (gen_random_uuid(), 'order', gen_random_uuid(), 1, 'OrderPlaced', 1, now(),
                 gen_random_uuid(), gen_random_uuid(), '{}')
             RETURNING event_id, aggregate_id)
         INSERT INTO outbox (event_id, lane, topic, message_key, message_value)
         SELECT event_id, 0, 'order.events', aggregate_id::text, '\\x00' FROM e",
    )
    .await;
    assert_eq!(allowed(&c, "prism_commands", "DELETE FROM outbox").await, 1);
    denied(&c, "prism_commands", "UPDATE events SET payload = '{}'").await;
    denied(&c, "prism_commands", "DELETE FROM events").await;
    denied(&c, "prism_commands", INSERT_ORDER).await;
    denied(&c, "prism_commands", &format!("CREATE TABLE {schema}.sneaky (id int)")).await;

    // prism_owner: runs the migrations and builds a new read-model generation (what
    // `prismctl migrate` and `prismctl rebuild` do) on the schema roles.sql adopted.
    let mut owner = env.pg().await.expect("owner connection");
    owner.batch_execute("SET ROLE prism_owner").await.expect("SET ROLE prism_owner");
    let report = prism_postgres::migrate(&mut owner, &schema).await.expect("migrate as prism_owner");
    assert!(report.applied.is_empty(), "the schema was already migrated: {report:?}");
    let registered =
        prism_read_store::registry::read_models(&owner).await.expect("the registry, as prism_owner");
    prism_read_store::read_models::ensure_active(&mut owner, &registered)
        .await
        .expect("ensure_active as prism_owner");
    let next = ProjectionInstance::new(shop_model::read_models::ORDER_SUMMARY, 2);
    let order_summary =
        registered.iter().find(|m| m.name == "order_summary").expect("order_summary is registered");
    prism_read_store::read_models::create_tables(&owner, next, &order_summary.table_sql)
        .await
        .expect("prism_owner creates a generation");
    owner.batch_execute("RESET ROLE").await.expect("RESET ROLE");

    // The new generation's grants come from the default privileges, without rerunning roles.sql.
    let insert_next = INSERT_ORDER.replace("order_summary_g1", "order_summary_g2");
    assert_eq!(allowed(&c, "prism_projector", &insert_next).await, 1);
    allowed(&c, "prism_query", "SELECT 1 FROM order_summary_g2").await;
    denied(&c, "prism_query", &insert_next).await;
    denied(&c, "prism_projector", "DROP TABLE order_summary_g2").await;
}

/// The check above could pass by accident if SET ROLE kept the superuser's rights; this proves
/// the harness sees a denial where one is due (a role with no grants at all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_role_drops_superuser_rights() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let c = env.pg().await.expect("connection");
    c.batch_execute(&roles_sql(&env.config.postgres.schema)).await.expect("roles.sql");
    // Grants are per schema: revoke the query role's SELECT here and it must be refused.
    c.batch_execute("REVOKE SELECT ON order_summary_g1 FROM prism_query").await.expect("revoke");
    denied(&c, "prism_query", "SELECT 1 FROM order_summary_g1").await;
}
