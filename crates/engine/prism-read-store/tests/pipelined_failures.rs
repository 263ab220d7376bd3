//! Statements pipelined in one transaction: once one fails, PostgreSQL refuses every later one
//! with `25P02`, and a caller waiting on them all must be told the cause, not a refusal. A
//! batch's writes go out this way, and what it does next depends on the cause: a gate row
//! another batch inserted first (a unique violation) is retried, a row the table refuses is
//! isolated and dead-lettered.

use futures::FutureExt;
use prism_postgres::{all_or_cause, StoreError};
use prism_testkit::TestEnv;

#[tokio::test]
async fn the_cause_is_reported_whichever_statement_is_awaited_first() {
    let env = TestEnv::new(&prism_testkit::probe::application()).await.expect("test environment");
    let mut client = env.pg().await.expect("PostgreSQL");
    let tx = client.transaction().await.expect("a transaction");
    tx.batch_execute(
        "CREATE TEMP TABLE pipelined (id integer PRIMARY KEY); INSERT INTO pipelined VALUES (1)",
    )
    .await
    .expect("the table");

    // Prepared first, as a batch's statements are, so that each goes out whole on its first
    // poll. The failing insert is sent first, the later statement after it; they are awaited
    // the other way round, as a join over a batch's instances may.
    let insert = tx.prepare("INSERT INTO pipelined VALUES (1)").await.expect("prepared");
    let select = tx.prepare("SELECT 1").await.expect("prepared");
    let mut failing = Box::pin(tx.execute(&insert, &[]).map(|r| r.map_err(StoreError::from)));
    assert!(futures::poll!(&mut failing).is_pending(), "the insert waits for its answer");
    let later = tx.execute(&select, &[]).map(|r| r.map_err(StoreError::from));
    let (later, failing) = futures::join!(later, failing);

    let refusal = later.as_ref().expect_err("the later statement is refused");
    assert!(refusal.is_after_failure(), "refused for the earlier failure: {refusal}");
    assert!(failing.as_ref().is_err_and(StoreError::is_unique_violation), "{failing:?}");

    let cause = all_or_cause([later, failing]).expect_err("a failure");
    assert!(cause.is_unique_violation(), "the cause, not the refusal: {cause}");
}

#[tokio::test]
async fn results_come_back_in_order_when_nothing_failed() {
    let env = TestEnv::new(&prism_testkit::probe::application()).await.expect("test environment");
    let client = env.pg().await.expect("PostgreSQL");
    let results = futures::future::join_all((1..=3_i32).map(|n| {
        let client = &client;
        async move {
            client
                .query_one("SELECT $1::int", &[&n])
                .await
                .map(|row| row.get::<_, i32>(0))
                .map_err(StoreError::from)
        }
    }))
    .await;
    assert_eq!(all_or_cause(results).expect("no failure"), vec![1, 2, 3]);
}
