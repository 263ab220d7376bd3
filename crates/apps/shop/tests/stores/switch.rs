//! A blue/green switch's two steps against the real PostgreSQL
//! (`prism_read_store::rebuild::{verify, switch}`): the verification compares both
//! generations in a snapshot while a batch is in flight, without waiting for it; the switch
//! waits for batches, compares the generations' versions again under its lock, changes
//! nothing while they are apart, and makes the new generation the one the view reads once
//! they meet; a generation whose rows differ is not verified unless changes are allowed.

use std::collections::HashSet;
use std::time::Duration;

use prism_projections::{GapPolicy, ProjectionInstance};
use prism_read_store::projection::{apply_batch, SourceMessage, Target};
use prism_read_store::rebuild::{self, Apart, SwitchOutcome, Verification, Verified};
use prism_testkit::{oracle, TestEnv};
use shop::testing::workload::Workload;
use shop_model::aggregates::ORDER;
use shop_model::read_models::ORDER_SUMMARY;

use crate::support::{create_table_like, order_batch, order_messages};

/// The serving generation and the one rebuilt beside it.
const OLD: ProjectionInstance = ProjectionInstance::new(ORDER_SUMMARY, 1);
const NEW: ProjectionInstance = ProjectionInstance::new(ORDER_SUMMARY, 2);

/// Registers [`NEW`] as building, with a table like [`OLD`]'s.
async fn register_new_generation(env: &TestEnv) {
    create_table_like(env, OLD, NEW).await;
    env.pg()
        .await
        .expect("pg")
        .execute(
            "INSERT INTO projection_generations (projection, generation, status) VALUES ($1, 2, 'building')",
            &[&ORDER_SUMMARY],
        )
        .await
        .expect("the new generation registered as building");
}

/// Lands `messages` in `instance` as one batch.
async fn land(env: &TestEnv, instance: ProjectionInstance, messages: &[SourceMessage]) {
    let app = shop_model::application();
    let target = Target { instance, model: app.read_model(ORDER_SUMMARY).expect("a shop read model") };
    apply_batch(&env.db, &[target], GapPolicy::DeadLetter, order_batch(messages))
        .await
        .expect("the batch lands");
}

/// The verification of [`OLD`] against [`NEW`], which must find them at a common position.
async fn verified(env: &TestEnv, allow_changes: bool) -> Verified {
    let mut client = env.pg().await.expect("pg");
    match rebuild::verify(&mut client, OLD, NEW, allow_changes).await.expect("the verification") {
        Verification::Verified(verified) => verified,
        other => panic!("{OLD} and {NEW} at a common position, rows as expected: {other:?}"),
    }
}

/// The active generation of the order summaries.
async fn active(env: &TestEnv) -> Vec<ProjectionInstance> {
    let client = env.pg().await.expect("pg");
    rebuild::active_generations(&client, &[ORDER_SUMMARY]).await.expect("the active generation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verification_holds_no_batch_and_the_switch_meets_the_versions_again() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let events = Workload::generate(91, 1_200);
    let orders = order_messages(&events);
    let (first, rest) = orders.split_at(orders.len() / 2);
    register_new_generation(&env).await;
    land(&env, OLD, first).await;
    land(&env, NEW, first).await;

    // A batch in flight: the gate table's write lock, as every batch takes first, uncommitted.
    let mut in_flight = env.pg().await.expect("pg");
    let in_flight = in_flight.transaction().await.expect("transaction");
    in_flight
        .batch_execute("LOCK TABLE projection_gate IN ROW EXCLUSIVE MODE")
        .await
        .expect("the batch's lock on the gate table");
    let verification = tokio::time::timeout(Duration::from_secs(20), verified(&env, false))
        .await
        .expect("the verification waited for a batch in flight");
    assert_eq!(verification.old_sum, verification.new_sum, "the same rows in both generations");
    let first_orders: HashSet<_> = first.iter().filter_map(SourceMessage::aggregate).collect();
    assert_eq!(verification.old_sum.rows, first_orders.len() as i64, "a row per order of the first batch");

    // The switch waits for that batch (here, until its lock timeout) and changes nothing.
    let mut client = env.pg().await.expect("pg");
    let busy = rebuild::switch(&mut client, env.db.schema(), &verification, Duration::from_millis(300)).await;
    assert_eq!(
        busy.expect_err("the switch went ahead while a batch held the gate table").sql_state(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE)
    );
    in_flight.rollback().await.expect("the batch in flight gives up");
    assert_eq!(active(&env).await, vec![OLD]);

    // The old generation moves on alone: the switch finds them apart and changes nothing.
    land(&env, OLD, rest).await;
    let apart = rebuild::switch(&mut client, env.db.schema(), &verification, Duration::from_secs(5))
        .await
        .expect("a switch attempt");
    match apart {
        SwitchOutcome::NotAtCommonPosition(Apart { new_behind, new_ahead }) => {
            assert!(new_behind > 0, "{NEW} is behind on the orders of the second batch: {apart:?}");
            assert_eq!(new_ahead, 0, "{apart:?}");
        }
        SwitchOutcome::Switched => panic!("switched to {NEW} while it was behind {OLD}"),
    }
    assert_eq!(active(&env).await, vec![OLD], "a switch that found the generations apart changed nothing");

    // Once the new generation has caught up, the verification of before is switched on.
    land(&env, NEW, rest).await;
    let switched = rebuild::switch(&mut client, env.db.schema(), &verification, Duration::from_secs(5))
        .await
        .expect("the switch");
    assert_eq!(switched, SwitchOutcome::Switched);
    assert_eq!(active(&env).await, vec![NEW]);
    let order_events: Vec<_> = events.iter().filter(|e| e.meta.aggregate_type == ORDER).cloned().collect();
    let expected = shop::testing::oracle::fold(&order_events);
    let app = shop_model::application();
    let model = app.read_model(ORDER_SUMMARY).expect("a shop read model");
    let got = oracle::stored_rows(&client, NEW, model).await.expect("rows");
    assert_eq!(got.len(), expected.rows[ORDER_SUMMARY].len(), "every order has its row in {NEW}");
    for (key, row) in &expected.rows[ORDER_SUMMARY] {
        assert_eq!(oracle::normalize(&got[key]), oracle::normalize(row), "{key}");
    }
    let through_view: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {ORDER_SUMMARY} v JOIN {} n USING (order_id)", NEW.id()),
            &[],
        )
        .await
        .expect("the view's rows")
        .get(0);
    assert_eq!(through_view as usize, got.len(), "the view reads {NEW}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_whose_rows_differ_is_verified_only_when_changes_are_allowed() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let orders = order_messages(&Workload::generate(92, 400));
    register_new_generation(&env).await;
    land(&env, OLD, &orders).await;
    land(&env, NEW, &orders).await;
    let client = env.pg().await.expect("pg");
    let changed = client
        .execute(
            &format!(
                "UPDATE {} SET status = 'tampered' WHERE order_id = (SELECT order_id FROM {0} ORDER BY order_id LIMIT 1)",
                NEW.id()
            ),
            &[],
        )
        .await
        .expect("one row changed");
    assert_eq!(changed, 1);

    let mut verifier = env.pg().await.expect("pg");
    match rebuild::verify(&mut verifier, OLD, NEW, false).await.expect("the verification") {
        Verification::Mismatch { old, new } => {
            assert_eq!(old.rows, new.rows, "the same orders");
            assert_ne!(old.md5, new.md5, "one order's status differs");
        }
        other => panic!("a changed row went unnoticed: {other:?}"),
    }
    let allowed = verified(&env, true).await;
    assert_ne!(allowed.old_sum, allowed.new_sum, "verified with the difference it found");
    assert_eq!(active(&env).await, vec![OLD], "a verification changes nothing");
}
