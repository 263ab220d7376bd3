//! Bulk replay chunks land exactly once: a range's progress moves with the chunk in one
//! transaction, so two loaders walking the same range (two workers, or a restarted one and a
//! stale one) never apply an event twice or skip one, a chunk read from a stale position
//! writes nothing, a chunk of a range that was cleared again writes nothing, and a poison
//! message inside a chunk is dead-lettered while the range moves past it. A chunk shared by
//! the instances a topic feeds lands in all of them or, when one of their ranges moved, in
//! none.

use prism_projections::{GapPolicy, ProjectionInstance};
use prism_read_store::projection::replay::{self, ChunkOutcome, SharedChunkOutcome, Step};
use prism_read_store::projection::{MessageContent, Poison, SourceMessage, Target};
use prism_testkit::oracle;
use prism_testkit::TestEnv;
use shop::testing::workload::Workload;
use shop_model::aggregates::ORDER;
use shop_model::read_models::{ORDER_SUMMARY, PRODUCT_SALES_DAILY};

use crate::support::{order_batch, ORDER_PARTITION as PARTITION, ORDER_TOPIC as TOPIC};

/// The order events of a generated workload, and them as one partition's messages.
fn order_messages(seed: u64, events: usize) -> (Vec<prism_events::Event>, Vec<SourceMessage>) {
    let orders: Vec<_> =
        Workload::generate(seed, events).into_iter().filter(|e| e.meta.aggregate_type == ORDER).collect();
    let messages = crate::support::order_messages(&orders);
    (orders, messages)
}

/// Lands a chunk of the test's range of orders in `target` (what a loader does).
async fn land_chunk(
    db: &prism_postgres::Database,
    target: &Target<'_>,
    step: Step,
    messages: &[SourceMessage],
) -> Result<ChunkOutcome, prism_postgres::StoreError> {
    replay::apply_chunk(db, target, GapPolicy::DeadLetter, order_batch(messages), step).await
}

async fn register(env: &TestEnv, instance: ProjectionInstance, end: i64) {
    let mut client = env.pg().await.expect("pg");
    let tx = client.transaction().await.expect("transaction");
    let registered =
        replay::register(&tx, instance, &[(TOPIC.to_owned(), PARTITION, 0, end)]).await.expect("register");
    tx.commit().await.expect("commit");
    assert_eq!(registered, 1, "one range registered for {instance}");
}

async fn range_of(env: &TestEnv, instance: ProjectionInstance) -> Option<replay::ReplayRange> {
    let client = env.pg().await.expect("pg");
    replay::ranges(&client, &[instance.id()]).await.expect("ranges").into_iter().next()
}

/// Every stored row of `instance` equals the oracle's fold of `events`.
async fn assert_rows_equal_fold(env: &TestEnv, instance: ProjectionInstance, events: &[prism_events::Event]) {
    let app = shop_model::application();
    let model = app.read_model(instance.projection).expect("a shop read model");
    let expected = shop::testing::oracle::fold(events);
    let want = &expected.rows[instance.projection];
    let client = env.pg().await.expect("pg");
    let got = oracle::stored_rows(&client, instance, model).await.expect("rows");
    assert_eq!(got.len(), want.len(), "{instance}: row count");
    for (key, row) in want {
        let stored = got.get(key).unwrap_or_else(|| panic!("{instance}: row {key} missing"));
        assert_eq!(oracle::normalize(stored), oracle::normalize(row), "{instance} {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_loaders_of_one_range_land_every_event_once() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let (orders, messages) = order_messages(83, 2_000);
    let end = messages.len() as i64;
    // Daily sales totals are increments over many aggregates: a chunk landed twice shows.
    let instance = ProjectionInstance::new(PRODUCT_SALES_DAILY, 1);
    register(&env, instance, end).await;

    // Two loaders, each reading chunks of a different size from where it believes the range
    // is, so their positions keep crossing; each counts the offsets it landed.
    let loaders = [61usize, 97].map(|chunk| {
        let (db, messages) = (env.db.clone(), messages.clone());
        tokio::spawn(async move {
            let app = shop_model::application();
            let target = Target { instance, model: app.read_model(PRODUCT_SALES_DAILY).expect("model") };
            let (mut at, mut landed, mut moved) = (0i64, 0i64, 0usize);
            while at < end {
                let to = (at + chunk as i64).min(end);
                let slice = &messages[at as usize..to as usize];
                let step = Step { from: at, to };
                match land_chunk(&db, &target, step, slice).await {
                    Ok(ChunkOutcome::Landed(outcome)) => {
                        assert_eq!(
                            outcome.applied,
                            slice.len() as u64,
                            "a landed chunk applies all of its events"
                        );
                        landed += to - at;
                        at = to;
                        // Give the other loader a turn at the range's row lock.
                        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                    }
                    Ok(ChunkOutcome::Moved { loaded_to }) => {
                        assert!(loaded_to > at, "a range only moves forward ({at} -> {loaded_to})");
                        moved += 1;
                        at = loaded_to;
                    }
                    Ok(ChunkOutcome::Gone) => panic!("the range disappeared"),
                    Err(err) if err.is_transient() => {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await
                    }
                    Err(err) => panic!("permanent failure: {err}"),
                }
            }
            (landed, moved)
        })
    });
    let (mut total, mut both_landed) = (0, true);
    for loader in loaders {
        let (landed, moved) = loader.await.expect("loader");
        eprintln!("loader landed {landed} offsets, found the range moved {moved} times");
        total += landed;
        both_landed &= landed > 0;
    }
    assert_eq!(total, end, "the two loaders together landed every offset exactly once");
    assert!(both_landed, "the loaders took turns (each landed some chunks), so their positions crossed");
    let range = range_of(&env, instance).await.expect("the range is still registered");
    assert!(range.is_loaded(), "the range is loaded: {range:?}");
    assert_rows_equal_fold(&env, instance, &orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_chunks_and_cleared_ranges_write_nothing() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let (orders, messages) = order_messages(84, 600);
    let end = messages.len() as i64;
    let instance = ProjectionInstance::new(ORDER_SUMMARY, 1);
    let app = shop_model::application();
    let target = Target { instance, model: app.read_model(ORDER_SUMMARY).expect("model") };
    register(&env, instance, end).await;
    let apply = |from: i64, to: i64| {
        let (db, target, slice) = (env.db.clone(), &target, &messages[from as usize..to as usize]);
        async move { land_chunk(&db, target, Step { from, to }, slice).await.expect("chunk") }
    };

    let first = apply(0, 100).await;
    assert!(matches!(first, ChunkOutcome::Landed(_)), "the first chunk lands: {first:?}");
    // The same chunk again, and one overlapping it, from a loader that read before it landed.
    for (from, to) in [(0, 100), (50, 150)] {
        match apply(from, to).await {
            ChunkOutcome::Moved { loaded_to } => assert_eq!(loaded_to, 100, "{from}..{to}"),
            other => panic!("a stale chunk {from}..{to} must not land: {other:?}"),
        }
    }
    assert_rows_equal_fold(&env, instance, &orders[..100]).await;
    let range = range_of(&env, instance).await.expect("range");
    assert_eq!((range.loaded_to, range.settled_to), (100, 0), "landed, later steps not yet done");

    // A loader that died before the chunk's cache write: redelivering it changes nothing in
    // PostgreSQL and hands back a cache entry for every order it names.
    let redelivered =
        replay::redeliver_chunk(&env.db, &target, GapPolicy::DeadLetter, order_batch(&messages[..100]))
            .await
            .expect("redelivery");
    assert_eq!(redelivered.applied, 0, "a redelivered chunk is all duplicates");
    let named: std::collections::HashSet<_> = messages[..100].iter().filter_map(|m| m.aggregate()).collect();
    assert_eq!(redelivered.cache_entries.len(), named.len(), "one cache entry per order the chunk names");
    assert_rows_equal_fold(&env, instance, &orders[..100]).await;
    let client = env.pg().await.expect("pg");
    replay::settle(&client, instance, TOPIC, PARTITION, 500).await.expect("settle");
    let range = range_of(&env, instance).await.expect("range");
    assert_eq!(range.settled_to, 100, "settling never passes what has landed");
    assert!(!range.is_settled());

    // The rest lands; the range records when it was loaded.
    assert!(matches!(apply(100, end).await, ChunkOutcome::Landed(_)));
    assert!(range_of(&env, instance).await.expect("range").is_loaded());
    assert_rows_equal_fold(&env, instance, &orders).await;
    let loaded_at: Option<std::time::SystemTime> = client
        .query_one("SELECT loaded_at FROM projection_replays WHERE projection = $1", &[&instance.id()])
        .await
        .expect("loaded_at")
        .get(0);
    assert!(loaded_at.is_some(), "a loaded range records when it was loaded");

    // Forgotten (the instance was retired or cleared again): a late chunk writes nothing.
    replay::forget(&client, instance).await.expect("forget");
    match apply(0, 100).await {
        ChunkOutcome::Gone => {}
        other => panic!("a chunk of a forgotten range must not land: {other:?}"),
    }
    assert_rows_equal_fold(&env, instance, &orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_inside_a_chunk_is_dead_lettered_and_the_range_moves_past_it() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let (orders, mut messages) = order_messages(85, 600);
    // Replace one order's last event with a poison message of the same aggregate: the chunk
    // lands, the poison is dead-lettered, and nothing of that aggregate is applied after it.
    let victim_at = messages.len() / 2;
    let victim = messages[victim_at].aggregate().expect("an order event");
    messages[victim_at].content = MessageContent::Poison(Poison {
        aggregate: Some(victim),
        aggregate_version: None,
        event_type: None,
        kind: "invalid_json".into(),
        message: "the value is not JSON".into(),
    });
    let end = messages.len() as i64;
    let instance = ProjectionInstance::new(ORDER_SUMMARY, 1);
    let app = shop_model::application();
    let target = Target { instance, model: app.read_model(ORDER_SUMMARY).expect("model") };
    register(&env, instance, end).await;

    let outcome =
        match land_chunk(&env.db, &target, Step { from: 0, to: end }, &messages).await.expect("chunk") {
            ChunkOutcome::Landed(outcome) => outcome,
            other => panic!("the chunk lands: {other:?}"),
        };
    let dead: u64 = outcome.dead_lettered.iter().map(|(_, n)| n).sum();
    assert!(dead >= 1, "the poison message is dead-lettered: {:?}", outcome.dead_lettered);
    assert!(range_of(&env, instance).await.expect("range").is_loaded(), "the range moved past the poison");

    let client = env.pg().await.expect("pg");
    let recorded: i64 = client
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE projection = $1 AND source_topic = $2 AND source_offset = $3",
            &[&instance.id(), &TOPIC, &(victim_at as i64)],
        )
        .await
        .expect("dead letters")
        .get(0);
    assert_eq!(recorded, 1, "the poison message's dead-letter record names its offset");

    // Every other order is exactly as the fold of its events says; the victim's row stops
    // before the poison.
    let others: Vec<_> = orders
        .iter()
        .enumerate()
        .filter(|(i, e)| (e.meta.aggregate_type, e.meta.aggregate_id) != victim || *i < victim_at)
        .map(|(_, e)| e.clone())
        .collect();
    assert_rows_equal_fold(&env, instance, &others).await;
}

/// What `instance` holds: its rows (key → row) as the oracle reads them.
async fn stored_rows(
    env: &TestEnv,
    instance: ProjectionInstance,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    let app = shop_model::application();
    let model = app.read_model(instance.projection).expect("a shop read model");
    let client = env.pg().await.expect("pg");
    oracle::stored_rows(&client, instance, model).await.expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_chunk_lands_in_every_instance_or_in_none() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let (orders, messages) = order_messages(86, 3_000);
    let end = messages.len() as i64;
    let (a, b) = (end / 3, 2 * end / 3);
    assert!(a >= 100, "enough order events for three chunks: {end}");
    let app = shop_model::application();
    // Two read models the order topic feeds: a fold per order and sums over many orders.
    let (summary, sales) =
        (ProjectionInstance::new(ORDER_SUMMARY, 1), ProjectionInstance::new(PRODUCT_SALES_DAILY, 1));
    let targets = [
        Target { instance: summary, model: app.read_model(ORDER_SUMMARY).expect("model") },
        Target { instance: sales, model: app.read_model(PRODUCT_SALES_DAILY).expect("model") },
    ];
    register(&env, summary, end).await;
    register(&env, sales, end).await;
    let shared = |from: i64, to: i64| {
        let (db, targets, slice) = (env.db.clone(), &targets, &messages[from as usize..to as usize]);
        async move {
            replay::apply_shared_chunk(
                &db,
                targets,
                GapPolicy::DeadLetter,
                order_batch(slice),
                Step { from, to },
            )
            .await
            .expect("shared chunk")
        }
    };

    match shared(0, a).await {
        SharedChunkOutcome::Landed(outcomes) => {
            let instances: Vec<ProjectionInstance> = outcomes.iter().map(|(instance, _)| *instance).collect();
            assert_eq!(instances, [summary, sales], "one outcome per instance, in the targets' order");
            for (instance, outcome) in &outcomes {
                assert_eq!(outcome.applied, a as u64, "{instance}: every event of the chunk applied");
            }
        }
        SharedChunkOutcome::Diverged => panic!("a chunk at both ranges' position lands"),
    }
    for instance in [summary, sales] {
        let range = range_of(&env, instance).await.expect("range");
        assert_eq!(range.loaded_to, a, "{instance}: its range moved with the shared chunk");
    }
    assert_rows_equal_fold(&env, summary, &orders[..a as usize]).await;
    assert_rows_equal_fold(&env, sales, &orders[..a as usize]).await;

    // One range moves on alone (another loader of that instance); a shared chunk read from the
    // old position must write nothing to either instance, the sums included.
    let alone = land_chunk(&env.db, &targets[1], Step { from: a, to: b }, &messages[a as usize..b as usize])
        .await
        .expect("chunk");
    assert!(matches!(alone, ChunkOutcome::Landed(_)), "the lone chunk lands: {alone:?}");
    let (summary_before, sales_before) = (stored_rows(&env, summary).await, stored_rows(&env, sales).await);
    match shared(a, b).await {
        SharedChunkOutcome::Diverged => {}
        SharedChunkOutcome::Landed(outcomes) => panic!(
            "a shared chunk behind one of its ranges must not land; it applied {:?}",
            outcomes.iter().map(|(instance, outcome)| (instance.id(), outcome.applied)).collect::<Vec<_>>()
        ),
    }
    assert_eq!(
        stored_rows(&env, summary).await,
        summary_before,
        "nothing written to the range that had not moved"
    );
    assert_eq!(stored_rows(&env, sales).await, sales_before, "nothing added twice to the sums");
    assert_eq!(range_of(&env, summary).await.expect("range").loaded_to, a);
    assert_eq!(range_of(&env, sales).await.expect("range").loaded_to, b);

    // Each range goes on on its own from where it is, and both end equal to the fold.
    for (target, from) in [(&targets[0], a), (&targets[1], b)] {
        let landed = land_chunk(&env.db, target, Step { from, to: end }, &messages[from as usize..])
            .await
            .expect("chunk");
        assert!(matches!(landed, ChunkOutcome::Landed(_)), "{}: {landed:?}", target.instance);
    }
    assert_rows_equal_fold(&env, summary, &orders).await;
    assert_rows_equal_fold(&env, sales, &orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_chunk_that_meets_gate_rows_lands_them_as_duplicates() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let (orders, messages) = order_messages(87, 1_500);
    let end = messages.len() as i64;
    // Daily sales are sums over many orders: an order counted twice shows in them.
    let instance = ProjectionInstance::new(PRODUCT_SALES_DAILY, 1);
    let app = shop_model::application();
    let target = Target { instance, model: app.read_model(PRODUCT_SALES_DAILY).expect("model") };
    let land = |from: i64| {
        let (db, target, slice) = (env.db.clone(), &target, &messages[from as usize..]);
        async move {
            land_chunk(&db, target, Step { from, to: end }, slice)
                .await
                .expect("a first chunk that meets gate rows still lands")
        }
    };
    register(&env, instance, end).await;
    match land(0).await {
        ChunkOutcome::Landed(outcome) => {
            assert_eq!(outcome.applied, end as u64, "the first landing applies all")
        }
        other => panic!("the chunk lands: {other:?}"),
    }
    assert_rows_equal_fold(&env, instance, &orders).await;

    // The range registered again over an instance that was not cleared (what no rebuild does):
    // its first chunk takes every aggregate as new, the insert of their gate rows finds them,
    // and the chunk is landed again with them looked up: all duplicates, nothing added twice.
    register(&env, instance, end).await;
    match land(0).await {
        ChunkOutcome::Landed(outcome) => {
            assert_eq!(outcome.applied, 0, "every event was applied before");
            assert_eq!(outcome.duplicates, end as u64, "every event is a duplicate");
        }
        other => panic!("the chunk lands: {other:?}"),
    }
    assert!(range_of(&env, instance).await.expect("range").is_loaded());
    assert_rows_equal_fold(&env, instance, &orders).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_chunk_whose_new_row_another_transaction_writes_lands_again() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let (orders, messages) = order_messages(88, 1_500);
    let end = messages.len() as i64;
    let app = shop_model::application();
    let model = app.read_model(ORDER_SUMMARY).expect("model");
    // The finished rows, landed in another generation of the same table shape.
    let (instance, finished) =
        (ProjectionInstance::new(ORDER_SUMMARY, 1), ProjectionInstance::new(ORDER_SUMMARY, 2));
    crate::support::create_table_like(&env, instance, finished).await;
    register(&env, finished, end).await;
    let landed = replay::apply_chunk(
        &env.db,
        &Target { instance: finished, model },
        GapPolicy::DeadLetter,
        order_batch(&messages),
        Step { from: 0, to: end },
    )
    .await
    .expect("chunk");
    assert!(matches!(landed, ChunkOutcome::Landed(_)));

    // Another transaction writes one order's row into the instance and commits only while the
    // first chunk waits on it: the chunk read no row, inserts them plainly, meets that one, and
    // must land again rather than fail or dead-letter anything.
    let victim = messages[0].aggregate().expect("an order event").1;
    register(&env, instance, end).await;
    let chunk = {
        let (db, messages) = (env.db.clone(), messages.clone());
        async move {
            let app = shop_model::application();
            let target = Target { instance, model: app.read_model(ORDER_SUMMARY).expect("model") };
            land_chunk(&db, &target, Step { from: 0, to: end }, &messages).await
        }
    };
    let landed =
        crate::support::with_order_row_written_meanwhile(&env, instance, finished, victim, chunk).await;
    let outcome = match landed {
        Ok(ChunkOutcome::Landed(outcome)) => outcome,
        Ok(other) => panic!("the chunk lands: {other:?}"),
        Err(err) => panic!("a row written meanwhile must make the chunk land again, not fail: {err}"),
    };
    // The victim's events, folded again onto its finished row, may be refused by the fold (an
    // order placed twice); nothing of any other order may be.
    let client = env.pg().await.expect("pg");
    let others_dead: i64 = client
        .query_one(
            "SELECT count(*) FROM dead_letters WHERE projection = $1 AND aggregate_id IS DISTINCT FROM $2",
            &[&instance.id(), &victim],
        )
        .await
        .expect("dead letters")
        .get(0);
    assert_eq!(others_dead, 0, "no other order dead-lettered (outcome: {:?})", outcome.dead_lettered);
    assert!(range_of(&env, instance).await.expect("range").is_loaded());
    // Every other order is exactly the fold of its events.
    let others: Vec<_> = orders.iter().filter(|e| e.meta.aggregate_id != victim).cloned().collect();
    let expected = shop::testing::oracle::fold(&others);
    let got = stored_rows(&env, instance).await;
    for (key, row) in &expected.rows[ORDER_SUMMARY] {
        let stored = got.get(key).unwrap_or_else(|| panic!("row {key} missing"));
        assert_eq!(oracle::normalize(stored), oracle::normalize(row), "{key}");
    }
    assert_eq!(got.len(), expected.rows[ORDER_SUMMARY].len() + 1, "every order has its row");
}
