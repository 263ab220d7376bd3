//! The version gate is race-free: several writers applying the same batch at the same time
//! (two workers on one partition during a rebalance, a redelivery racing the original) land
//! it exactly once — the totals fed by many aggregates would show a double application. Both
//! ways a batch meets an aggregate are raced: with its gate row there to lock, and new to the
//! instance, where the writers' inserts of the gate row decide. And a batch meeting a switch of
//! generations waits for it before it touches a read-model table, so the two cannot deadlock;
//! one that follows the active generation then lands in the new generation, never the old. A
//! row a batch read that moves before the batch updates it where it read it (a writer that
//! bypassed the gate) makes the batch retry, never land without that row.

use prism_projections::{GapPolicy, ProjectionInstance};
use prism_read_store::projection::{
    apply_batch, apply_batch_while_active, ActiveBatch, MessageContent, SourceMessage, Target,
};
use prism_testkit::oracle;
use prism_testkit::TestEnv;
use shop::testing::workload::Workload;
use shop_model::aggregates::ORDER;
use shop_model::read_models::{ORDER_SUMMARY, PRODUCT_SALES_DAILY, USER_PROFILE};

use crate::support::{order_batch, order_messages};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_of_one_batch_apply_it_once() {
    race(GateRows::Exist).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_batches_of_new_aggregates_apply_them_once() {
    race(GateRows::New).await;
}

/// Whether the aggregates have gate rows when the writers race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GateRows {
    /// Every order's placement is applied first, by one writer.
    Exist,
    /// The writers race from the first event of every order.
    New,
}

async fn race(gate_rows: GateRows) {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let events = Workload::generate(81, 1_500);
    let orders = order_messages(&events);
    // Totals first: no entity row lock earlier in the transaction serialises the writers by
    // accident, so only the gate's locks keep the increments from doubling.
    let app = shop_model::application();
    let instances: Vec<ProjectionInstance> = [USER_PROFILE, PRODUCT_SALES_DAILY, ORDER_SUMMARY]
        .into_iter()
        .map(|p| ProjectionInstance::new(p, 1))
        .collect();
    let targets: Vec<Target<'_>> = instances
        .iter()
        .map(|instance| Target {
            instance: *instance,
            model: app.read_model(instance.projection).expect("a shop read model"),
        })
        .collect();

    // With `Exist`, every order's placement first, by one writer: from here on every gate row
    // exists, so nothing but the gate's row locks stands between the racing writers below.
    // With `New`, nothing first: every writer meets every order without a gate row.
    let later = if gate_rows == GateRows::Exist {
        let (placed, later): (Vec<SourceMessage>, Vec<SourceMessage>) =
            orders.into_iter().partition(|m| match &m.content {
                MessageContent::Event(e) => e.meta.aggregate_version == 1,
                MessageContent::Poison(_) => false,
            });
        apply_batch(&env.db, &targets, GapPolicy::DeadLetter, order_batch(&placed))
            .await
            .expect("placements");
        later
    } else {
        orders
    };

    // Six writers, each applying the rest of the stream in batches of 50, each batch started
    // by all six at once (a writer ahead by a batch would only meet committed work).
    let writers_count = 6;
    let start_together = std::sync::Arc::new(tokio::sync::Barrier::new(writers_count));
    let writers = (0..writers_count).map(|_| {
        let (db, orders, instances) = (env.db.clone(), later.clone(), instances.clone());
        let start_together = start_together.clone();
        tokio::spawn(async move {
            let app = shop_model::application();
            let targets: Vec<Target<'_>> = instances
                .iter()
                .map(|instance| Target {
                    instance: *instance,
                    model: app.read_model(instance.projection).expect("a shop read model"),
                })
                .collect();
            for batch in orders.chunks(50) {
                start_together.wait().await;
                // Deadlocks and serialization failures are transient: retry like the runtime.
                loop {
                    match apply_batch(&db, &targets, GapPolicy::DeadLetter, order_batch(batch)).await {
                        Ok(_) => break,
                        Err(err) if err.is_transient() => {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await
                        }
                        Err(err) => panic!("permanent failure: {err}"),
                    }
                }
            }
        })
    });
    // All six spawned before any is awaited; the first writer to fail ends the test (the
    // others would wait for it at the next batch).
    let writers: Vec<_> = writers.collect();
    futures::future::try_join_all(writers).await.expect("writer");

    let order_events: Vec<_> = events.iter().filter(|e| e.meta.aggregate_type == ORDER).cloned().collect();
    let client = env.pg().await.expect("pg");
    let expected = shop::testing::oracle::fold(&order_events);
    for target in &targets {
        let instance = &target.instance;
        let want = &expected.rows[instance.projection];
        let got = oracle::stored_rows(&client, *instance, target.model).await.expect("rows");
        // User rows here carry only order totals (no user events were applied).
        assert_eq!(got.len(), want.len(), "{instance}: row count");
        for (key, row) in want {
            assert_eq!(oracle::normalize(&got[key]), oracle::normalize(row), "{instance} {key}");
        }
    }
}

/// A batch inserts the rows of a fold-only read model that its read did not find plainly, not
/// as an upsert. Should one of them be written by another transaction meanwhile (in production
/// a concurrent batch of the same aggregate, whose gate row would fail this batch too), the
/// insert fails on its key: that must be a retry, never a refusal that dead-letters the event,
/// and the batch applied again must land every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_whose_absent_row_another_transaction_writes_meanwhile_is_retried_not_refused() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let events = Workload::generate(83, 800);
    let orders = order_messages(&events);
    let app = shop_model::application();
    let model = app.read_model(ORDER_SUMMARY).expect("model");
    let (instance, finished) =
        (ProjectionInstance::new(ORDER_SUMMARY, 1), ProjectionInstance::new(ORDER_SUMMARY, 2));
    crate::support::create_table_like(&env, instance, finished).await;
    apply_batch(
        &env.db,
        &[Target { instance: finished, model }],
        GapPolicy::DeadLetter,
        order_batch(&orders),
    )
    .await
    .expect("the finished rows");

    // Another transaction writes one order's row and commits only while the batch waits on it.
    let victim = orders[0].aggregate().expect("an order event").1;
    let batch = {
        let (db, orders) = (env.db.clone(), orders.clone());
        async move {
            let app = shop_model::application();
            let target = Target { instance, model: app.read_model(ORDER_SUMMARY).expect("model") };
            apply_batch(&db, &[target], GapPolicy::DeadLetter, order_batch(&orders)).await.map(drop)
        }
    };
    match crate::support::with_order_row_written_meanwhile(&env, instance, finished, victim, batch).await {
        Err(prism_postgres::StoreError::Contended { what, .. }) => assert_eq!(what, "read-model row"),
        Err(err) => panic!("a row written meanwhile must make the batch retry, not be refused: {err}"),
        Ok(()) => panic!("the batch cannot land over a row it found absent"),
    }
    let client = env.pg().await.expect("pg");
    let dead: i64 = client
        .query_one("SELECT count(*) FROM dead_letters WHERE projection = $1", &[&instance.id()])
        .await
        .expect("dead letters")
        .get(0);
    assert_eq!(dead, 0, "nothing dead-lettered by the failed attempt");

    // Applied again, the batch reads the victim's row and upserts it; every other order is
    // exactly the fold of its events (the victim's, folded onto its finished row, may differ).
    apply_batch(&env.db, &[Target { instance, model }], GapPolicy::DeadLetter, order_batch(&orders))
        .await
        .expect("the batch lands when applied again");
    let others: Vec<_> = events
        .iter()
        .filter(|e| e.meta.aggregate_type == ORDER && e.meta.aggregate_id != victim)
        .cloned()
        .collect();
    let expected = shop::testing::oracle::fold(&others);
    let got = oracle::stored_rows(&client, instance, model).await.expect("rows");
    assert_eq!(got.len(), expected.rows[ORDER_SUMMARY].len() + 1, "every order has its row");
    for (key, row) in &expected.rows[ORDER_SUMMARY] {
        assert_eq!(oracle::normalize(&got[key]), oracle::normalize(row), "{key}");
    }
}

/// A batch updates the rows of a fold-only read model that its read found where it found them
/// (by `ctid`), trusting the gate's row lock to keep every other writer away until it commits.
/// Should a row move in between all the same (a writer that bypassed the gate), the update finds
/// nothing at that place: the batch must fail as contended and be applied again — never commit
/// with that row silently left as it was, which would lose the aggregate's events behind a gate
/// that says they were applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_whose_read_row_moves_before_its_update_is_retried_not_skipped() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let events = Workload::generate(89, 800);
    let orders = order_messages(&events);
    let app = shop_model::application();
    let model = app.read_model(ORDER_SUMMARY).expect("model");
    let instance = ProjectionInstance::new(ORDER_SUMMARY, 1);
    let target = [Target { instance, model }];
    // Every order's placement first, so that the rest of the stream finds each order's row.
    let (placed, later): (Vec<SourceMessage>, Vec<SourceMessage>) =
        orders.iter().cloned().partition(|m| match &m.content {
            MessageContent::Event(e) => e.meta.aggregate_version == 1,
            MessageContent::Poison(_) => false,
        });
    apply_batch(&env.db, &target, GapPolicy::DeadLetter, order_batch(&placed)).await.expect("placements");
    let victim = later.first().and_then(SourceMessage::aggregate).expect("an order with a later event").1;

    // Another session holds the table in share mode: the batch's reads pass it, its first
    // write waits on it. Once the batch waits there, the session rewrites the victim's row
    // unchanged (a new row version, at a new place) and commits.
    let mut other = env.pg().await.expect("pg");
    let mover = other.transaction().await.expect("transaction");
    mover.batch_execute(&format!("LOCK TABLE {} IN SHARE MODE", instance.id())).await.expect("share lock");
    let batch = {
        let (db, later) = (env.db.clone(), later.clone());
        tokio::spawn(async move {
            let app = shop_model::application();
            let target = Target { instance, model: app.read_model(ORDER_SUMMARY).expect("model") };
            apply_batch(&db, &[target], GapPolicy::DeadLetter, order_batch(&later)).await.map(drop)
        })
    };
    let watcher = env.pg().await.expect("pg");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE relation = $1::text::regclass AND mode = 'RowExclusiveLock' AND NOT granted",
                &[&instance.id()],
            )
            .await
            .expect("pg_locks")
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(!batch.is_finished(), "the batch ended without waiting to write {}", instance.id());
        assert!(tokio::time::Instant::now() < deadline, "the batch never waited to write {}", instance.id());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let moved = mover
        .execute(&format!("UPDATE {} SET status = status WHERE order_id = $1", instance.id()), &[&victim])
        .await
        .expect("the row moved");
    assert_eq!(moved, 1, "the other session rewrites {victim}'s row");
    mover.commit().await.expect("commit");

    match batch.await.expect("the batch's task") {
        Err(prism_postgres::StoreError::Contended { what, .. }) => assert_eq!(what, "read-model row"),
        Err(err) => panic!("a row moved meanwhile must make the batch retry, not be refused: {err}"),
        Ok(()) => panic!("the batch landed without updating the row that moved"),
    }
    // Applied again, it finds the row where it is now: every order is the fold of its events.
    apply_batch(&env.db, &target, GapPolicy::DeadLetter, order_batch(&later))
        .await
        .expect("the batch lands when applied again");
    let order_events: Vec<_> = events.iter().filter(|e| e.meta.aggregate_type == ORDER).cloned().collect();
    let expected = shop::testing::oracle::fold(&order_events);
    let client = env.pg().await.expect("pg");
    let got = oracle::stored_rows(&client, instance, model).await.expect("rows");
    assert_eq!(got.len(), expected.rows[ORDER_SUMMARY].len(), "row count");
    for (key, row) in &expected.rows[ORDER_SUMMARY] {
        assert_eq!(oracle::normalize(&got[key]), oracle::normalize(row), "{key}");
    }
}

/// A switch of generations (`prism_read_store::rebuild::switch`) locks the gate table, then the
/// read-model tables, in share mode. A batch that arrives meanwhile must wait at the gate table
/// holding nothing the switch still needs: had it taken a read-model table first, the switch
/// and the batch would each wait for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waits_for_a_switch_before_it_touches_a_read_model_table() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let orders = order_messages(&Workload::generate(7, 200));
    let instance = ProjectionInstance::new(ORDER_SUMMARY, 1);

    let mut switch = env.pg().await.expect("pg");
    let switch = switch.transaction().await.expect("transaction");
    switch.batch_execute("LOCK TABLE projection_gate IN SHARE MODE").await.expect("the gate's share lock");

    let db = env.db.clone();
    let batch = tokio::spawn(async move {
        let app = shop_model::application();
        let target = Target { instance, model: app.read_model(ORDER_SUMMARY).expect("a shop read model") };
        apply_batch(&db, &[target], GapPolicy::DeadLetter, order_batch(&orders)).await.map(|_| ())
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!batch.is_finished(), "the batch committed while the switch held the gate's share lock");

    switch
        .batch_execute(&format!("SET LOCAL lock_timeout = '3s'; LOCK TABLE {} IN SHARE MODE", instance.id()))
        .await
        .expect("the waiting batch holds the read-model table: the switch would deadlock with it");
    switch.rollback().await.expect("rollback");
    batch.await.expect("batch task").expect("the batch lands once the switch is gone");
}

/// A projector that follows the active generation applies a batch only while its target is
/// active until the commit. Here a switch from g1 to g2 holds the gate table's share lock,
/// uncommitted, when the batch for g1 begins: the batch must wait, see the switch once it
/// commits, and write nothing to g1 — then land in g2 when asked to, equal to the oracle.
/// (A batch that read the registry before its lock was granted would see g1 still active and
/// land there, after the switch had compared and retired it.) Once g1's table is dropped, a
/// batch for it still finds the switch rather than failing on the missing table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_following_the_active_generation_lands_only_in_one_active_until_its_commit() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let events = Workload::generate(19, 300);
    let orders = order_messages(&events);
    let (g1, g2) = (ProjectionInstance::new(ORDER_SUMMARY, 1), ProjectionInstance::new(ORDER_SUMMARY, 2));
    crate::support::create_table_like(&env, g1, g2).await;
    let registry = env.pg().await.expect("pg");
    registry
        .execute(
            "INSERT INTO projection_generations (projection, generation, status) VALUES ($1, 2, 'building')",
            &[&ORDER_SUMMARY],
        )
        .await
        .expect("g2 registered as building");

    let mut switch = env.pg().await.expect("pg");
    let switch = switch.transaction().await.expect("transaction");
    switch.batch_execute("LOCK TABLE projection_gate IN SHARE MODE").await.expect("the gate's share lock");
    for (generation, status) in [(1, "retired"), (2, "active")] {
        switch
            .execute(
                "UPDATE projection_generations SET status = $3 WHERE projection = $1 AND generation = $2",
                &[&ORDER_SUMMARY, &generation, &status],
            )
            .await
            .expect("the switch's registry update");
    }

    let db = env.db.clone();
    let batch_orders = orders.clone();
    let batch = tokio::spawn(async move {
        let app = shop_model::application();
        let target =
            Target { instance: g1, model: app.read_model(ORDER_SUMMARY).expect("a shop read model") };
        apply_batch_while_active(&db, &[target], GapPolicy::DeadLetter, order_batch(&batch_orders)).await
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!batch.is_finished(), "the batch went on while the switch held the gate's share lock");
    switch.commit().await.expect("the switch commits");

    match batch.await.expect("batch task").expect("the batch's transaction") {
        ActiveBatch::Switched(now_active) => assert_eq!(now_active, vec![g2], "the generation active now"),
        ActiveBatch::Landed(_) => panic!("the batch landed in {g1}, retired before its commit"),
    }
    let client = env.pg().await.expect("pg");
    for (what, sql) in [
        ("rows", format!("SELECT count(*) FROM {}", g1.id())),
        ("gate rows", format!("SELECT count(*) FROM projection_gate WHERE projection = '{}'", g1.id())),
    ] {
        let count: i64 = client.query_one(sql.as_str(), &[]).await.expect("count").get(0);
        assert_eq!(count, 0, "{what} written to {g1} by a batch that found it retired");
    }

    let app = shop_model::application();
    let model = app.read_model(ORDER_SUMMARY).expect("a shop read model");
    // Retired and dropped (as `prismctl rebuild` does after its grace): a projector that has
    // not heard of the switch yet still finds it, not a refusal of its events.
    client.batch_execute(&format!("DROP TABLE {} CASCADE", g1.id())).await.expect("g1 dropped");
    let on_dropped = apply_batch_while_active(
        &env.db,
        &[Target { instance: g1, model }],
        GapPolicy::DeadLetter,
        order_batch(&orders),
    )
    .await
    .expect("a batch for the dropped g1 is no refusal");
    assert!(
        matches!(&on_dropped, ActiveBatch::Switched(now) if now == &vec![g2]),
        "a batch for the dropped {g1} finds the switch: {on_dropped:?}"
    );
    let landed = apply_batch_while_active(
        &env.db,
        &[Target { instance: g2, model }],
        GapPolicy::DeadLetter,
        order_batch(&orders),
    )
    .await
    .expect("the batch's transaction");
    assert!(matches!(landed, ActiveBatch::Landed(_)), "the batch lands in the active {g2}: {landed:?}");
    let order_events: Vec<_> = events.iter().filter(|e| e.meta.aggregate_type == ORDER).cloned().collect();
    let expected = shop::testing::oracle::fold(&order_events);
    let got = oracle::stored_rows(&client, g2, model).await.expect("rows");
    assert_eq!(got.len(), expected.rows[ORDER_SUMMARY].len(), "every order has its row in {g2}");
    for (key, row) in &expected.rows[ORDER_SUMMARY] {
        assert_eq!(oracle::normalize(&got[key]), oracle::normalize(row), "{key}");
    }
}
