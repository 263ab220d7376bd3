//! The event store, the outbox and the lane claims against the real PostgreSQL, each test in
//! its own schema.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use prism_event_store::{
    idempotency, outbox, outbox_lane, EventStore, EventStoreError, IdempotencyRecord, LaneClaims,
    StreamAppend,
};
use prism_events::{AggregateType, Event, EventPosition};
use prism_testkit::TestEnv;
use shop_model::aggregates::{CART, ORDER, USER};
use shop_model::events::{
    CartCheckedOut, CartItemAdded, CartOpened, OrderLine, OrderPlaced, ShopEvent, UserRegistered,
};
use tokio::sync::Barrier;
use uuid::Uuid;

fn event(_: AggregateType, aggregate_id: Uuid, version: u64, body: ShopEvent) -> Event {
    let position = EventPosition {
        event_id: Uuid::new_v4(),
        aggregate_id,
        aggregate_version: version,
        // Nanoseconds on purpose: events keep microseconds, what the store keeps.
        occurred_at: Utc::now(),
        correlation_id: Uuid::new_v4(),
        causation_id: Uuid::new_v4(),
    };
    Event::new(position, body)
}

fn registered(n: usize) -> ShopEvent {
    UserRegistered {
        email: format!("user{n}@example.com"),
        display_name: format!("User {n}"),
        marketing_opt_in: false,
    }
    .into()
}

fn store(env: &TestEnv) -> EventStore {
    EventStore::new(env.db.clone(), shop_model::events::registry(), env.topic_prefix())
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    let client = env.db.client().await.expect("client");
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Six writers race on one cart for ten versions over separate pooled connections: each
/// round exactly one append wins, every other one is a conflict, and the stored stream runs
/// 1..=10 without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_one_winner_per_version() {
    const WRITERS: usize = 6;
    const VERSIONS: u64 = 10;
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let store = store(&env);
    let cart = Uuid::new_v4();
    let user = Uuid::new_v4();
    store
        .append(
            &[StreamAppend {
                aggregate_type: CART,
                aggregate_id: cart,
                expected_version: 0,
                events: vec![event(CART, cart, 1, CartOpened { user_id: user }.into())],
            }],
            None,
        )
        .await
        .expect("open the cart");

    let barrier = Arc::new(Barrier::new(WRITERS));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (store, barrier) = (store.clone(), barrier.clone());
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for _ in 1..VERSIONS {
                barrier.wait().await;
                let stream = store.load(CART, cart).await.expect("load");
                let version = stream.version();
                // Everyone has loaded before anyone appends.
                barrier.wait().await;
                let body = CartItemAdded {
                    product_id: Uuid::new_v4(),
                    quantity: 1 + writer as u32,
                    unit_price_cents: 100,
                };
                let result = store
                    .append(
                        &[StreamAppend {
                            aggregate_type: CART,
                            aggregate_id: cart,
                            expected_version: version,
                            events: vec![event(CART, cart, version + 1, body.into())],
                        }],
                        None,
                    )
                    .await;
                match result {
                    Ok(()) => outcomes.push((version + 1, true)),
                    Err(EventStoreError::Conflict { aggregate_id, expected_version, .. }) => {
                        assert_eq!((aggregate_id, expected_version), (cart, version));
                        outcomes.push((version + 1, false));
                    }
                    Err(other) => panic!("writer {writer}: unexpected error {other}"),
                }
            }
            outcomes
        }));
    }
    let mut wins = std::collections::BTreeMap::<u64, usize>::new();
    let mut conflicts = 0;
    for writer in writers {
        for (version, won) in writer.await.expect("writer") {
            if won {
                *wins.entry(version).or_default() += 1;
            } else {
                conflicts += 1;
            }
        }
    }
    let expected: std::collections::BTreeMap<u64, usize> = (2..=VERSIONS).map(|v| (v, 1)).collect();
    assert_eq!(wins, expected, "exactly one writer must win each version");
    assert_eq!(conflicts, (WRITERS - 1) * (VERSIONS as usize - 1), "every other append must conflict");

    let stream = store.load(CART, cart).await.expect("load");
    let versions: Vec<u64> = stream.events.iter().map(|e| e.meta.aggregate_version).collect();
    assert_eq!(versions, (1..=VERSIONS).collect::<Vec<_>>(), "stored stream has gaps or extras");
    assert_eq!(count(&env, "SELECT count(*) FROM outbox").await, VERSIONS as i64, "one outbox row per event");
}

/// A checkout appends to a cart and an order at once: both streams read back equal (to the
/// microsecond), and each event has its outbox row with lane, topic, key and the exact
/// envelope bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_stream_append_round_trips_with_outbox_rows() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let store = store(&env);
    let (cart, order, user, product) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let line = OrderLine { product_id: product, quantity: 2, unit_price_cents: 350 };
    let cart_events = vec![
        event(CART, cart, 1, CartOpened { user_id: user }.into()),
        event(
            CART,
            cart,
            2,
            CartItemAdded { product_id: product, quantity: 2, unit_price_cents: 350 }.into(),
        ),
        event(CART, cart, 3, CartCheckedOut { order_id: order }.into()),
    ];
    let order_events = vec![event(
        ORDER,
        order,
        1,
        OrderPlaced { user_id: user, cart_id: Some(cart), lines: vec![line], total_cents: 700 }.into(),
    )];
    store
        .append(
            &[
                StreamAppend {
                    aggregate_type: CART,
                    aggregate_id: cart,
                    expected_version: 0,
                    events: cart_events.clone(),
                },
                StreamAppend {
                    aggregate_type: ORDER,
                    aggregate_id: order,
                    expected_version: 0,
                    events: order_events.clone(),
                },
            ],
            None,
        )
        .await
        .expect("append");

    let truncated = |events: &[Event]| -> Vec<Event> {
        events
            .iter()
            .cloned()
            .map(|mut e| {
                e.meta.occurred_at = prism_events::truncate_to_micros(e.meta.occurred_at);
                e
            })
            .collect()
    };
    assert_eq!(store.load(CART, cart).await.expect("cart").events, truncated(&cart_events));
    assert_eq!(store.load(ORDER, order).await.expect("order").events, truncated(&order_events));
    assert!(store.load(ORDER, Uuid::new_v4()).await.expect("empty").events.is_empty());

    let all_lanes: Vec<i16> = (0..prism_event_store::OUTBOX_LANES).collect();
    let rows = outbox::read_lanes(&env.db, &all_lanes, 100).await.expect("read outbox");
    assert_eq!(rows.len(), 4);
    for expected in truncated(&cart_events).iter().chain(&truncated(&order_events)) {
        let row = rows.iter().find(|r| r.event_id == expected.meta.event_id).expect("outbox row per event");
        assert_eq!(row.lane, outbox_lane(expected.meta.aggregate_id));
        assert_eq!(row.topic, expected.meta.aggregate_type.topic(env.topic_prefix()));
        assert_eq!(row.key, expected.meta.aggregate_id.hyphenated().to_string());
        assert_eq!(row.value, expected.to_json_bytes(), "outbox value must be the exact envelope bytes");
        assert_eq!(row.event_type, expected.event_type());
        assert_eq!(row.aggregate_version as u64, expected.meta.aggregate_version);
    }
    let cart_rows: Vec<i64> =
        rows.iter().filter(|r| r.key == cart.to_string()).map(|r| r.aggregate_version).collect();
    assert_eq!(cart_rows, vec![1, 2, 3], "a lane's rows come in version order");
    assert_eq!(
        outbox::delete(&env.db, &rows.iter().map(|r| r.id).collect::<Vec<_>>()).await.expect("delete"),
        4
    );
    let backlog = outbox::backlog(&env.db).await.expect("backlog");
    assert_eq!(backlog.events, 0);
}

/// The backlog gauges' figures: counted row by row up to the bound asked for, and past it the
/// span of the waiting rows' ids, which counts the rows a lane published ahead of the others
/// and so is never less than the rows waiting; the oldest row's age is the first id's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_is_counted_up_to_its_bound_and_never_less_than_the_rows_past_it() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let store = store(&env);
    let appends: Vec<StreamAppend> = (0..12)
        .map(|n| {
            let id = Uuid::new_v4();
            StreamAppend {
                aggregate_type: USER,
                aggregate_id: id,
                expected_version: 0,
                events: vec![event(USER, id, 1, registered(n))],
            }
        })
        .collect();
    store.append(&appends, None).await.expect("append");
    let backlog = |bound| {
        let db = env.db.clone();
        async move { outbox::backlog_counted_up_to(&db, bound).await.expect("backlog") }
    };

    let counted = backlog(100).await;
    assert_eq!((counted.events, counted.exact), (12, true));
    assert!((0.0..60.0).contains(&counted.oldest_age_seconds), "{counted:?}");
    assert_eq!(outbox::backlog(&env.db).await.expect("backlog").events, 12, "the default bound counts them");
    let spanned = backlog(5).await;
    assert_eq!((spanned.events, spanned.exact), (12, false), "twelve ids from the first to the last");

    // Lanes publish independently: rows in the middle of the span go first.
    let all_lanes: Vec<i16> = (0..prism_event_store::OUTBOX_LANES).collect();
    let mut ids: Vec<i64> = outbox::read_lanes(&env.db, &all_lanes, 100)
        .await
        .expect("read outbox")
        .iter()
        .map(|r| r.id)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids.len(), 12);
    assert_eq!(outbox::delete(&env.db, &ids[3..7]).await.expect("delete"), 4);
    assert_eq!((backlog(100).await.events, backlog(100).await.exact), (8, true));
    let spanned = backlog(5).await;
    assert!(
        !spanned.exact && spanned.events >= 8,
        "past the bound, never less than the rows waiting: {spanned:?}"
    );
    assert_eq!(spanned.events, 12, "the span of ids from the first waiting row to the last");

    let client = env.db.client().await.expect("client");
    client
        .execute("UPDATE outbox SET created_at = now() - interval '1 hour' WHERE id = $1", &[&ids[0]])
        .await
        .expect("age the first row");
    let aged = backlog(100).await.oldest_age_seconds;
    assert!((3600.0..3660.0).contains(&aged), "the first row's age: {aged}");
    assert_eq!(outbox::delete(&env.db, &ids[..1]).await.expect("delete"), 1);
    let next = backlog(100).await.oldest_age_seconds;
    assert!((0.0..60.0).contains(&next), "the next row's age once the first is published: {next}");

    outbox::delete(&env.db, &ids).await.expect("delete the rest");
    let empty = backlog(5).await;
    assert_eq!((empty.events, empty.exact, empty.oldest_age_seconds), (0, true, 0.0));
}

/// When one stream of a multi-stream append conflicts, nothing of the append lands: not the
/// other stream's events, not their outbox rows, not the idempotency record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_rolls_back_the_whole_append() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let store = store(&env);
    let (user_a, user_b) = (Uuid::new_v4(), Uuid::new_v4());
    let first = |id, n| StreamAppend {
        aggregate_type: USER,
        aggregate_id: id,
        expected_version: 0,
        events: vec![event(USER, id, 1, registered(n))],
    };
    store.append(&[first(user_b, 1)], None).await.expect("user b");
    let record = IdempotencyRecord {
        key: "k-1".into(),
        fingerprint: "POST /users abc".into(),
        status: 201,
        body: serde_json::json!({"ok": true}),
        ttl: Duration::from_secs(3600),
    };
    let err = store.append(&[first(user_a, 2), first(user_b, 3)], Some(&record)).await.expect_err("conflict");
    assert!(
        matches!(err, EventStoreError::Conflict { aggregate_id, .. } if aggregate_id == user_b),
        "{err:?}"
    );
    assert!(store.load(USER, user_a).await.expect("load").events.is_empty());
    assert_eq!(count(&env, "SELECT count(*) FROM outbox").await, 1);
    assert_eq!(idempotency::lookup(&env.db, "k-1", record.ttl).await.expect("lookup"), None);

    // Invalid appends are refused before touching the database.
    let mut gap = first(user_a, 4);
    gap.events[0].meta.aggregate_version = 2;
    assert!(matches!(store.append(&[gap], None).await, Err(EventStoreError::InvalidAppend(_))));
}

/// Idempotency records: written with the events, found again, a second request with the same
/// key is refused, expired records are ignored, replaced and purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_records_live_and_expire() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let store = store(&env);
    let ttl = Duration::from_secs(3600);
    let record = |fingerprint: &str| IdempotencyRecord {
        key: "retry-me".into(),
        fingerprint: fingerprint.into(),
        status: 201,
        body: serde_json::json!({"version": 1}),
        ttl,
    };
    let user = |id| StreamAppend {
        aggregate_type: USER,
        aggregate_id: id,
        expected_version: 0,
        events: vec![event(USER, id, 1, registered(9))],
    };
    store.append(&[user(Uuid::new_v4())], Some(&record("first"))).await.expect("first");
    let stored = idempotency::lookup(&env.db, "retry-me", ttl).await.expect("lookup").expect("stored");
    assert_eq!(
        (stored.fingerprint.as_str(), stored.status, &stored.body),
        ("first", 201, &record("first").body)
    );
    let second = Uuid::new_v4();
    let err = store.append(&[user(second)], Some(&record("second"))).await.expect_err("key taken");
    assert!(matches!(err, EventStoreError::IdempotencyKeyTaken), "{err:?}");
    assert!(store.load(USER, second).await.expect("load").events.is_empty());

    // Age the record past a one-second retention: lookups ignore it, a new request takes the
    // key over, and the purge removes what has expired.
    let client = env.db.client().await.expect("client");
    client
        .execute("UPDATE command_idempotency SET created_at = now() - interval '1 hour'", &[])
        .await
        .expect("age");
    let short = Duration::from_secs(1);
    assert_eq!(idempotency::lookup(&env.db, "retry-me", short).await.expect("lookup"), None);
    let mut again = record("third");
    again.ttl = short;
    store.append(&[user(second)], Some(&again)).await.expect("expired key is reusable");
    client
        .execute("UPDATE command_idempotency SET created_at = now() - interval '1 hour'", &[])
        .await
        .expect("age");
    assert_eq!(idempotency::purge_expired(&env.db, short).await.expect("purge"), 1);
    assert_eq!(count(&env, "SELECT count(*) FROM command_idempotency").await, 0);
}

/// Stored events at older schema versions are upcast on load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_schema_versions_are_upcast_on_load() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let user = Uuid::new_v4();
    let client = env.db.client().await.expect("client");
    client
        .execute(
            "INSERT INTO events (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, \
             schema_version, occurred_at, correlation_id, causation_id, payload) \
             VALUES ($1, 'user', $2, 1, 'UserRegistered', 1, now(), $1, $1, $3)",
            &[&Uuid::new_v4(), &user, &serde_json::json!({"email": "ada@example.com", "name": "Ada"})],
        )
        .await
        .expect("insert v1");
    let stream = store(&env).load(USER, user).await.expect("load");
    match &stream.events[..] {
        [e] => assert_eq!(
            e.body::<ShopEvent>(),
            Some(&ShopEvent::UserRegistered(UserRegistered {
                email: "ada@example.com".into(),
                display_name: "Ada".into(),
                marketing_opt_in: false
            }))
        ),
        other => panic!("expected one event, got {other:?}"),
    }
}

/// Lane claims are exclusive per session, counted per instance, and freed when the holding
/// connection goes away; an append wakes the listening control connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lane_claims_are_exclusive_and_die_with_their_connection() {
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let first = LaneClaims::connect(&env.config.postgres, "relay-a").await.expect("a");
    let second = LaneClaims::connect(&env.config.postgres, "relay-b").await.expect("b");
    assert!(first.try_claim(3).await.expect("claim"));
    assert!(!second.try_claim(3).await.expect("claim"), "lane 3 is held by the first instance");
    assert!(second.try_claim(4).await.expect("claim"));
    let status = first.status(Duration::from_secs(5)).await.expect("status");
    assert_eq!(status.instances, 2);
    assert_eq!(status.held, vec![3]);
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if second.try_claim(3).await.expect("claim") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "lane 3 was not freed after its holder disconnected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = second.status(Duration::from_secs(5)).await.expect("status");
    assert_eq!((status.held, status.instances), (vec![3, 4], 1));
    assert!(second.is_alive());

    let user = Uuid::new_v4();
    let append = StreamAppend {
        aggregate_type: USER,
        aggregate_id: user,
        expected_version: 0,
        events: vec![event(USER, user, 1, registered(5))],
    };
    store(&env).append(&[append], None).await.expect("append");
    tokio::time::timeout(Duration::from_secs(5), second.notified())
        .await
        .expect("an append notifies the relay");
}
