//! Every pooled PostgreSQL connection starts with the session Prism's SQL relies on: the
//! configured schema as search path, UTC, and custom plans. Prepared statements (the projector
//! prepares its statements once per connection) would otherwise settle on a generic plan chosen
//! while a table was small and keep it as the table grows.

use prism_testkit::{probe, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_use_the_schema_utc_and_custom_plans() {
    let env = TestEnv::new(&probe::application()).await.expect("test environment (PostgreSQL, Kafka, Redis)");
    let client = env.db.client().await.expect("pooled connection");
    let setting = |name: &'static str| {
        let client = &client;
        async move {
            let row = client.query_one(&format!("SHOW {name}"), &[]).await.expect("SHOW");
            row.get::<_, String>(0)
        }
    };
    assert_eq!(setting("plan_cache_mode").await, "force_custom_plan");
    assert_eq!(setting("TimeZone").await, "UTC");
    assert_eq!(setting("search_path").await, env.config.postgres.schema);
}
