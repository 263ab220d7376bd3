//! Hostile payloads straight into a topic: each is dead-lettered, per read model, with a
//! reason that names the problem, copied to the dead-letter topic with its origin in headers,
//! and the worker keeps going: every valid event around them lands exactly. A poison message
//! keyed like an existing aggregate parks that aggregate's later events behind it, and only
//! them: other aggregates' events published after it, in the same partition, land too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::support::{dead_letter_counts, InProcess};
use prism_events::{Event, HEADER_EVENT_TYPE, HEADER_SCHEMA_VERSION};
use prism_testkit::kafka::{consumer, produce, producer, publish_events};
use prism_testkit::oracle::CacheCheck;
use prism_testkit::TestEnv;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Headers, Message};
use serde_json::{json, Value};
use shop::testing::workload::Workload;
use shop_model::aggregates::{ORDER, USER};
use uuid::Uuid;

/// A hostile message: its key, its value and the error kind it must be dead-lettered with.
struct Hostile {
    what: &'static str,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    headers: Vec<(&'static str, Vec<u8>)>,
    kind: &'static str,
}

fn envelope_of(event: &Event) -> Value {
    serde_json::from_slice(&event.to_json_bytes()).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_payloads_are_dead_lettered_with_a_reason_and_the_worker_goes_on() {
    prism_testkit::init_logging();
    let env = TestEnv::new(&shop_model::application()).await.expect("test environment");
    let producer = producer(&env.config).expect("producer");
    let topic = ORDER.topic(env.topic_prefix());
    let events = Workload::generate(31, 2_000);
    let spare = Workload::generate(32, 200);

    // An order with several events: its first event goes before a poison message with its
    // key, the rest after.
    let victim = events
        .iter()
        .filter(|e| e.meta.aggregate_type == ORDER && e.meta.aggregate_version == 4)
        .map(|e| e.meta.aggregate_id)
        .next()
        .expect("an order with four events");
    let victim_events: Vec<Event> =
        events.iter().filter(|e| e.meta.aggregate_id == victim).cloned().collect();
    // The victim's later events go after the poison message, and so does half of every other
    // aggregate's stream: those must land although they follow the poison in its partition.
    let (victim_later, others): (Vec<Event>, Vec<Event>) =
        events.iter().cloned().partition(|e| e.meta.aggregate_id == victim && e.meta.aggregate_version > 1);
    let (before, others_after) = others.split_at(others.len() / 2);
    let after: Vec<Event> = others_after.iter().cloned().chain(victim_later.iter().cloned()).collect();
    let landing: Vec<Event> = others.clone();

    let order = spare.iter().find(|e| e.meta.aggregate_type == ORDER).expect("order event").clone();
    let user = spare.iter().find(|e| e.meta.aggregate_type == USER).expect("user event").clone();
    let fresh = || Uuid::new_v4().to_string().into_bytes();
    let with = |mut envelope: Value, field: &str, value: Value| {
        envelope[field] = value;
        serde_json::to_vec(&envelope).expect("json")
    };
    // The spare order's envelope under a new aggregate id, and that id as key.
    let fresh_order = || {
        let id = Uuid::new_v4();
        let mut envelope = envelope_of(&order);
        envelope["aggregate_id"] = json!(id.to_string());
        (id.to_string().into_bytes(), envelope)
    };
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let headers = |e: &Event| {
        vec![
            (HEADER_EVENT_TYPE, e.event_type().as_bytes().to_vec()),
            (HEADER_SCHEMA_VERSION, e.meta.schema_version.to_string().into_bytes()),
        ]
    };
    let hostile = vec![
        Hostile {
            what: "invalid JSON",
            key: fresh(),
            value: Some(b"{\"event_id\": ".to_vec()),
            headers: vec![],
            kind: "invalid_json",
        },
        Hostile {
            what: "invalid UTF-8",
            key: fresh(),
            value: Some(vec![b'{', 0xff, 0xfe, b'}']),
            headers: vec![],
            kind: "invalid_utf8",
        },
        Hostile {
            what: "nesting beyond the limit",
            key: fresh(),
            value: Some(with(envelope_of(&order), "payload", deep)),
            headers: vec![],
            kind: "too_deep",
        },
        Hostile {
            what: "a multi-megabyte value",
            key: fresh(),
            value: Some(with(envelope_of(&order), "payload", json!({ "note": "x".repeat(3 * 1024 * 1024) }))),
            headers: vec![],
            kind: "too_large",
        },
        Hostile {
            what: "a wrong field type",
            key: fresh(),
            value: Some(with(envelope_of(&order), "aggregate_version", json!("three"))),
            headers: vec![],
            kind: "wrong_type",
        },
        Hostile {
            what: "an unknown event type",
            key: fresh(),
            value: Some(with(envelope_of(&order), "event_type", json!("OrderTeleported"))),
            headers: vec![],
            kind: "unknown_event_type",
        },
        Hostile {
            what: "a future schema version",
            key: fresh(),
            value: Some(with(envelope_of(&order), "schema_version", json!(9))),
            headers: vec![],
            kind: "unsupported_schema_version",
        },
        Hostile { what: "a null value", key: fresh(), value: None, headers: vec![], kind: "missing_payload" },
        Hostile {
            what: "a key that is not the aggregate id",
            key: fresh(),
            value: Some(order.to_json_bytes()),
            headers: headers(&order),
            kind: "key_mismatch",
        },
        Hostile {
            what: "another aggregate type's event",
            key: user.meta.aggregate_id.to_string().into_bytes(),
            value: Some(user.to_json_bytes()),
            headers: headers(&user),
            kind: "wrong_topic",
        },
        Hostile {
            what: "headers that contradict the payload",
            key: order.meta.aggregate_id.to_string().into_bytes(),
            value: Some(order.to_json_bytes()),
            headers: vec![(HEADER_EVENT_TYPE, b"OrderShipped".to_vec())],
            kind: "header_mismatch",
        },
        // Each NUL case is an aggregate of its own: a dead letter parks its aggregate, and a
        // later message of a parked aggregate is recorded as parked, not with its own kind.
        {
            let (key, envelope) = fresh_order();
            Hostile {
                what: "a NUL character in the event type, without headers",
                key,
                value: Some(with(envelope, "event_type", json!("Order\u{0}Placed"))),
                headers: vec![],
                kind: "unknown_event_type",
            }
        },
        {
            let (key, envelope) = fresh_order();
            Hostile {
                what: "a NUL byte in the key",
                key: [b"\0".as_slice(), &key].concat(),
                value: Some(serde_json::to_vec(&envelope).expect("json")),
                headers: headers(&order),
                kind: "key_mismatch",
            }
        },
        {
            let (key, envelope) = fresh_order();
            Hostile {
                what: "a NUL byte in a header that contradicts the payload",
                key,
                value: Some(serde_json::to_vec(&envelope).expect("json")),
                headers: vec![(HEADER_EVENT_TYPE, b"Order\0Shipped".to_vec())],
                kind: "header_mismatch",
            }
        },
        Hostile {
            what: "poison in an existing stream",
            key: victim.to_string().into_bytes(),
            value: Some(b"not json".to_vec()),
            headers: vec![],
            kind: "invalid_json",
        },
    ];

    let projector = InProcess::start(env.config.clone());
    publish_events(&producer, env.topic_prefix(), before).await.expect("publish");
    for h in &hostile {
        let header_refs: Vec<(&str, &[u8])> = h.headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        produce(&producer, &topic, Some(&h.key), h.value.as_deref(), &header_refs)
            .await
            .unwrap_or_else(|e| panic!("producing {}: {e}", h.what));
    }
    publish_events(&producer, env.topic_prefix(), &after).await.expect("publish");

    // Valid events all land, except the victim's after its poison message.
    let parked = victim_events.len() - 1;
    env.wait_for_oracle(
        &shop::testing::oracle::fold(&landing),
        CacheCheck::Complete,
        Duration::from_secs(120),
    )
    .await
    .expect("valid events land");

    // Per read model fed by the order topic: every hostile message, plus the victim's parked events.
    let per_instance = (hostile.len() + parked) as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected: BTreeMap<String, i64> = ["order_summary_g1", "product_sales_daily_g1", "user_profile_g1"]
        .iter()
        .map(|p| ((*p).to_owned(), per_instance))
        .collect();
    loop {
        let counts = dead_letter_counts(&env).await;
        if counts == expected {
            break;
        }
        assert!(Instant::now() < deadline, "dead letters {counts:?}, expected {expected:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Each with its reason, and its origin.
    let pg = env.pg().await.expect("pg");
    let rows = pg
        .query(
            "SELECT error_kind, error_class, error_message, source_offset, published, source_partition FROM dead_letters
             WHERE projection = 'order_summary_g1' ORDER BY source_partition, source_offset",
            &[],
        )
        .await
        .expect("dead letters");
    let kinds: Vec<String> =
        rows.iter().filter(|r| r.get::<_, String>(1) == "permanent").map(|r| r.get(0)).collect();
    let mut want: Vec<&str> = hostile.iter().map(|h| h.kind).collect();
    let mut got: Vec<&str> = kinds.iter().map(String::as_str).collect();
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want, "one dead letter per hostile message, with its kind");
    for row in &rows {
        let message: String = row.get(2);
        assert!(!message.is_empty() && message.len() < 2_000, "a clear, bounded reason: {message}");
    }
    let parked_rows = rows.iter().filter(|r| r.get::<_, String>(1) == "parked").count();
    assert_eq!(parked_rows, parked, "the victim's later events wait behind its poison message");
    let messages: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    assert!(messages.iter().any(|m| m.contains("over the limit of 1048576 bytes")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("OrderTeleported")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("version 9")), "{messages:?}");
    // NUL is spelled out, so the reason says what the message held.
    assert!(messages.iter().any(|m| m.contains("Order\\u{0}Placed")), "{messages:?}");
    assert!(messages.iter().any(|m| m.contains("\\u{0}") && m.contains("key")), "{messages:?}");

    // Other aggregates' events behind the poison message, in its partition, landed (the oracle
    // above): parking held back the victim's stream, not the partition.
    let poison = pg
        .query_one(
            "SELECT source_partition, source_offset FROM dead_letters
             WHERE projection = 'order_summary_g1' AND error_class = 'permanent' AND message_key = $1",
            &[&victim.to_string().into_bytes()],
        )
        .await
        .expect("the poison message's dead letter");
    let (partition, poison_offset): (i32, i64) = (poison.get(0), poison.get(1));
    let others_behind = count_other_events_after(&env, &topic, partition, poison_offset, victim).await;
    assert!(others_behind > 0, "other aggregates' events follow the poison message in partition {partition}");

    // The dead-letter topic holds a copy of each, with the origin in its headers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !rows.iter().all(|r| r.get::<_, bool>(4)) {
        assert!(Instant::now() < deadline, "dead letters never marked published");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dlq = format!("{topic}.dlq");
    let reader = consumer(&env.config, &env.group("dlq-reader"), &[]).expect("consumer");
    reader.subscribe(&[&dlq]).expect("subscribe");
    // Keyed by origin (partition, offset): offsets repeat across partitions.
    let mut copies: BTreeSet<(i32, i64)> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while copies.len() < rows.len() && Instant::now() < deadline {
        let Some(message) = tokio::task::block_in_place(|| reader.poll(Duration::from_millis(200))) else {
            continue;
        };
        let message = message.expect("dlq message");
        let header = |name: &str| -> Option<String> {
            message
                .headers()?
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if header("prism.projection").as_deref() != Some("order_summary_g1") {
            continue;
        }
        assert_eq!(header("prism.origin.topic").as_deref(), Some(topic.as_str()));
        assert!(header("prism.error.kind").is_some() && header("prism.error.message").is_some());
        copies.insert((
            header("prism.origin.partition").and_then(|p| p.parse().ok()).expect("origin partition"),
            header("prism.origin.offset").and_then(|o| o.parse().ok()).expect("origin offset"),
        ));
    }
    let offsets: BTreeSet<(i32, i64)> = rows.iter().map(|r| (r.get(5), r.get(3))).collect();
    assert_eq!(offsets.len(), rows.len(), "one dead letter per origin message");
    assert_eq!(copies, offsets, "every dead letter is in the dead-letter topic, by origin offset");

    projector.stop().await;
}

/// Events of aggregates other than `victim` in `topic`/`partition` after `offset`.
async fn count_other_events_after(
    env: &TestEnv,
    topic: &str,
    partition: i32,
    offset: i64,
    victim: Uuid,
) -> usize {
    let ends =
        prism_testkit::kafka::end_offsets(&env.config, &[topic.to_owned()]).await.expect("end offsets");
    let end = ends[&(topic.to_owned(), partition)];
    let reader = consumer(&env.config, &env.group("behind-reader"), &[]).expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset + 1)).expect("offset");
    reader.assign(&assignment).expect("assign");
    let victim_key = victim.to_string();
    let mut others = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut position = offset + 1;
    while position < end {
        assert!(Instant::now() < deadline, "reading {topic}/{partition} up to {end}");
        let Some(message) = tokio::task::block_in_place(|| reader.poll(Duration::from_millis(200))) else {
            continue;
        };
        let message = message.expect("message");
        position = message.offset() + 1;
        let key = message.key().map(String::from_utf8_lossy).unwrap_or_default();
        if key != victim_key
            && Uuid::parse_str(&key).is_ok()
            && message.payload().is_some_and(|p| p.starts_with(b"{\""))
        {
            others += 1;
        }
    }
    others
}
