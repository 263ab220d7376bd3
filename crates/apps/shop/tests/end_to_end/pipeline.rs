//! The README's main job at a small size, through the HTTP APIs only: the shop's command
//! service (with its outbox relay), two projector workers sharing the partitions and the query
//! service run against the real broker, PostgreSQL and Redis; the load generator drives a shop
//! workload through the command API; `verify` waits until the pipeline drained and finds every
//! read-model row and cache entry equal to the fold of the event store; a command's version
//! read back through the query API is never older than the command's. Then one corrupted row
//! makes `verify` fail, naming it.

use std::time::Duration;

use serde_json::{json, Value};
use shop::load::{self, LoadConfig};
use shop::verify::{self, VerifyConfig};

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_main_job_converges_to_the_fold_of_the_event_store() {
    prism_testkit::init_logging();
    let env = support::environment(&[("PRISM__PROJECTOR__SESSION_TIMEOUT_MS", "8000")]).await;
    let commands = support::commands(env.config.clone()).await;
    let projectors = support::projectors(&env.config, 2);
    let query = support::query(env.config.clone()).await;

    let report = load::run(&LoadConfig {
        target: commands.base.clone(),
        commands: Some(1_500),
        duration: Some(Duration::from_secs(120)),
        concurrency: 8,
        seed: 5,
        invalid_share: 0.03,
    })
    .await
    .expect("load run");
    assert_eq!(report.unexpected, 0, "valid commands failed: {:?}", report.unexpected_examples);
    assert_eq!(report.transport_errors, 0);
    assert_eq!(report.commands, 1_500, "the run stopped early: {report}");

    let settings = VerifyConfig { wait: Duration::from_secs(120), progress: false };
    let verified = verify::run(&env.config, &settings).await.expect("the read models converge to the fold");
    assert_eq!(
        verified.events as u64,
        report.events_reported(),
        "every event the API reported is in the store"
    );
    assert_eq!((verified.position.outbox_backlog, verified.position.lag_messages), (0, 0));
    assert_eq!(verified.position.topic_messages, verified.events as i64, "each event published exactly once");
    assert_eq!(verified.instances.len(), shop_model::read_models::all().len(), "every read model compared");
    assert!(verified.rows > 0 && verified.cache_entries > 0, "{verified}");

    // Read-your-writes through the query API.
    let http = reqwest::Client::new();
    for n in 0..5 {
        let created: Value = http
            .post(format!("{}/users", commands.base))
            .json(&json!({"email": format!("reader-{n}@example.com"), "display_name": "Reader"}))
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("json");
        let (id, version) =
            (created["aggregate_id"].as_str().expect("id"), created["version"].as_u64().expect("v"));
        let answer =
            http.get(format!("{}/users/{id}?min_version={version}", query.base)).send().await.expect("query");
        assert_eq!(answer.status(), 200, "the write is visible within the wait");
        let served: u64 =
            answer.headers()["x-prism-version"].to_str().expect("header").parse().expect("number");
        assert!(served >= version, "served version {served} older than the command's {version}");
    }

    // Everything landed and committed while both workers run: a worker stopped while the group
    // rebalances may have its last commit refused (its successor re-reads those events as
    // duplicates), and with no worker left that would stay as lag for the check below.
    verify::run(&env.config, &settings).await.expect("the read-your-writes commands converge too");
    support::stop_projectors(projectors).await;
    query.stop().await;
    commands.stop().await;

    // verify can fail: one changed row is named.
    let pg = env.pg().await.expect("pg");
    let changed = pg
        .execute(
            "UPDATE product_catalog SET name = name || ' (edited by hand)' \
             WHERE product_id IN (SELECT product_id FROM product_catalog LIMIT 1)",
            &[],
        )
        .await
        .expect("corrupt one row");
    assert_eq!(changed, 1);
    let quick = VerifyConfig { wait: Duration::from_secs(2), progress: false };
    let error = verify::run(&env.config, &quick).await.expect_err("a changed row is found").to_string();
    assert!(error.contains("product_catalog") && error.contains("name"), "{error}");
}
